#!/usr/bin/env bash
# The main job on a fresh clone: set up .venv, then decode one prompt with every mode.
# For now on a golden fixture checkpoint (NLD_DEMO_MODEL overrides it); later build + serve join.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
model=${NLD_DEMO_MODEL:-${NLD_FIXTURES:-../shared/fixtures}/tiny_b8_spec_lora}
if [ ! -f "$model/config.json" ]; then
  echo "demo: no checkpoint at $model (set NLD_DEMO_MODEL to an NLD checkpoint folder)" >&2
  exit 2
fi
prompt=448,419,396,482,80
for mode in ar diffusion linear-spec quadratic-spec; do
  .venv/bin/nld generate --model "$model" --mode "$mode" --prompt-ids "$prompt" \
    --max-new-tokens 32 --block-length 8 --json
done
