#!/usr/bin/env bash
# The console in one command: set up, create a first user if there is none, run `synthdetect serve`.
#
#   scripts/console.sh                 then open http://127.0.0.1:8080 and log in
#
# Data lives in $SYNTHDETECT_SERVE_DATA_DIR (default ./synthdetect-data: the SQLite database,
# uploaded datasets, training figures) and trained versions in $SYNTHDETECT_MODEL_REGISTRY
# (default <data dir>/models; the bundled default model serves until one is promoted).
# The first user is $CONSOLE_USER (default admin) with $CONSOLE_PASSWORD, or a generated
# password printed once. Every other SYNTHDETECT_* setting applies as usual (README).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh serve
export SYNTHDETECT_SERVE_DATA_DIR="${SYNTHDETECT_SERVE_DATA_DIR:-$PWD/synthdetect-data}"
export SYNTHDETECT_MODEL_REGISTRY="${SYNTHDETECT_MODEL_REGISTRY:-$SYNTHDETECT_SERVE_DATA_DIR/models}"
mkdir -p "$SYNTHDETECT_SERVE_DATA_DIR" "$SYNTHDETECT_MODEL_REGISTRY"
users=$(.venv/bin/python -c '
from worker.serve.services import open_console_store
from worker.settings import get_settings
store = open_console_store(get_settings())
print(len(store.list_users()))
store.close()')
if [ "$users" = 0 ]; then
  user="${CONSOLE_USER:-admin}"
  password="${CONSOLE_PASSWORD:-$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(12))')}"
  printf '%s\n' "$password" | .venv/bin/synthdetect users add "$user" --password-stdin >&2
  if [ -z "${CONSOLE_PASSWORD:-}" ]; then
    echo "first console user: $user  password: $password  (shown once; add more with: synthdetect users add NAME)" >&2
  fi
fi
echo "console: http://${SYNTHDETECT_SERVE_HOST:-127.0.0.1}:${SYNTHDETECT_SERVE_PORT:-8080}  data: $SYNTHDETECT_SERVE_DATA_DIR" >&2
exec .venv/bin/synthdetect serve "$@"
