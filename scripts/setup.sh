#!/usr/bin/env bash
# Create .venv (Python 3.11) and install synthdetect into it; idempotent and quick when done.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh test     runtime + test tools
set -euo pipefail
cd "$(dirname "$0")/.."
extra=${1:-}
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=".venv/.synthdetect-installed${extra:+-$extra}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # pip (not uv/poetry) so that torch comes from this machine's local wheel cache.
  .venv/bin/python -m pip install -q -e ".${extra:+[$extra]}" 2>&1 | grep -v "is ignored: it is neither" || true
  .venv/bin/python -c "import torch, worker, contracts" # fail here, not later, if the install broke
  touch "$stamp"
fi
