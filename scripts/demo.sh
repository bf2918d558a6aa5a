#!/usr/bin/env bash
# README command 1: set up, then classify the bundled CIFAKE sample with the bundled model.
# No servers: local files in, results.jsonl + review.html out, a summary on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/synthdetect classify tests/data/cifake-sample --labels-from-folders --out results.jsonl
.venv/bin/synthdetect review results.jsonl --disagree --limit 10 --html review.html
echo "results: $(pwd)/results.jsonl   review: $(pwd)/review.html" >&2
