#!/usr/bin/env bash
# Engine builds of the built-in model per RTX target and precision (fp8 / int4-awq: quantize stage included) (outputs in build/eng-*);
# prints the Markdown table of docs/engines.md.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "| target | precision | graph | build s | engine MiB | layers | fused attention layers | Int4 / FP8 weight constants | targets |"
echo "|---|---|---|---|---|---|---|---|---|"
for target in rtx-pro-6000 dgx-spark; do
  for precision in fp16 bf16 fp8 int4-awq; do
    out=build/eng-$target-$precision
    .venv/bin/nld-build --model nld/models/tiny --target $target --precision $precision --output $out --force >/dev/null 2>&1
    .venv/bin/python - "$out" "$target" "$precision" <<'PY'
import json, sys
from pathlib import Path
out, target, precision = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
for e in json.loads((out / "engine" / "engine_report.json").read_text())["engines"]:
    size = (out / "engine" / e["engine"]).stat().st_size / 2**20
    low = sum(e["constant_types"].get(kind, 0) for kind in ("Int4", "FP8")) or "-"
    print(f"| {target} | {precision} | {e['engine']} | {e['seconds']:.1f} | {size:.1f} | {e['layers']} | "
          f"{e['fused_attention_layers']} | {low} | {', '.join(e['engine_targets'])} |")
PY
  done
done
