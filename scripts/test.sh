#!/usr/bin/env bash
# Set up .venv, lint, and run the tests. Default: the fast suite (not slow, no tritonserver). `--all`:
# everything that can run on this machine (slow and server included; gpu tests skip themselves without
# CUDA). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
select=(-m "not slow and not server")
if [ "${1:-}" = "--all" ]; then
  select=()
  shift
fi
.venv/bin/ruff check .
.venv/bin/python -m pytest "${select[@]}" "$@"
