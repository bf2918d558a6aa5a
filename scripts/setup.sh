#!/usr/bin/env bash
# Create .venv (Python 3.11) and install synthdetect into it; idempotent and quick when done.
#   scripts/setup.sh          the worker: synthdetect[worker] (torch, Celery, ...)
#   scripts/setup.sh serve    the worker and `synthdetect serve` (console, invoke API)
#   scripts/setup.sh test     the worker and the test tools: synthdetect[test]
# (`pip install synthdetect` alone is the producers' package: the contracts only.)
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-runtime}" in
  runtime | worker) extra=worker ;;
  serve) extra=serve ;;
  test) extra=test ;;
  *) echo "usage: scripts/setup.sh [serve|test]" >&2; exit 2 ;;
esac
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=".venv/.synthdetect-installed-$extra"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # pip (not uv/poetry) so that torch comes from this machine's local wheel cache.
  .venv/bin/python -m pip install -q -e ".[$extra]" 2>&1 | grep -v "is ignored: it is neither" || true
  .venv/bin/python -c "import torch, worker.cli.main, contracts.producer" # fail here if it broke
  touch "$stamp"
fi
if [ "$extra" = test ]; then
  scripts/deploy_tools.sh >/dev/null  # promtool for the deploy/ tests
fi
