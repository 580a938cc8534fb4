#!/usr/bin/env bash
# The main job on a fresh clone: set up .venv, then decode one prompt with every mode on the built-in
# tiny model (NLD_DEMO_MODEL=DIR picks another checkpoint; it then needs a tokenizer.json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
model_args=()
if [ -n "${NLD_DEMO_MODEL:-}" ]; then
  model_args=(--model "$NLD_DEMO_MODEL")
fi
prompt='def fibonacci(n):'
for mode in ar diffusion linear-spec quadratic-spec; do
  echo "=== $mode"
  .venv/bin/nld generate "${model_args[@]}" --mode "$mode" --prompt "$prompt" --max-new-tokens 64
done
