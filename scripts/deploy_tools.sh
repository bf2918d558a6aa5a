#!/usr/bin/env bash
# Put promtool (Prometheus' rules and config checker) into .venv/bin for the deploy/ tests.
# It comes from Debian's `prometheus` package, unpacked only (no service is installed or
# started); kubectl, kustomize, hadolint and kubernetes-validate come from PyPI with the
# test extra. Idempotent: does nothing when .venv/bin/promtool runs.
set -euo pipefail
cd "$(dirname "$0")/.."
if .venv/bin/promtool --version >/dev/null 2>&1; then exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download prometheus >/dev/null 2>&1) || {
  (apt-get update -qq >/dev/null 2>&1 || true)
  (cd "$work" && apt-get download prometheus >/dev/null)
}
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
install -m 0755 "$work/root/usr/bin/promtool" .venv/bin/promtool
.venv/bin/promtool --version | head -1
