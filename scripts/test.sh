#!/usr/bin/env bash
# README command 2: set up, start what the tests need, run lint + the whole test suite.
# RabbitMQ: the machine's own (started if down). SeaweedFS and moto: started by the
# test fixtures on free loopback ports. Chromium: installed from Debian if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  echo "starting RabbitMQ" >&2
  rabbitmq-server -detached
  for _ in $(seq 60); do (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && break; sleep 1; done
fi
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing chromium (report rendering test)" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null \
    || echo "chromium install failed; the rendering test will say so" >&2
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy  # strict; files and settings: [tool.mypy] in pyproject.toml
.venv/bin/python -m pytest "$@"
