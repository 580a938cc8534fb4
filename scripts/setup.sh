#!/usr/bin/env bash
# Create (or reuse) .venv in the repository and install nld with its dev tools.
# On CPU machines torch is pinned to the CPU build (scripts/constraints-cpu.txt); set
# NLD_TORCH_PIN=none to keep whatever torch the environment provides (GPU hosts).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.nld-setup-stamp
want=$(cat pyproject.toml scripts/constraints-cpu.txt scripts/requirements-dynamo.txt | sha256sum | cut -d' ' -f1)-${NLD_TORCH_PIN:-cpu}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
log=.venv/setup.log
echo "==> installing nld and its dependencies into .venv (log: $log)"
constraints=()
if [ "${NLD_TORCH_PIN:-cpu}" != "none" ]; then
  constraints=(-c scripts/constraints-cpu.txt)
fi
if ! {
  .venv/bin/python -m pip install --upgrade pip &&
  if [ ${#constraints[@]} -gt 0 ]; then .venv/bin/python -m pip install "${constraints[@]}" torch; fi &&
  .venv/bin/python -m pip install "${constraints[@]}" -e ".[dev]" &&
  # NVIDIA Dynamo (the OpenAI front end): its two wheels without their unresolvable stub dependency,
  # then the rest of its dependencies, pinned (scripts/requirements-dynamo.txt).
  .venv/bin/python -m pip install --no-deps ai-dynamo==1.6.1 ai-dynamo-runtime==1.6.1 &&
  .venv/bin/python -m pip install "${constraints[@]}" -r scripts/requirements-dynamo.txt
} >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "setup: installation failed; full log in $log" >&2
  exit 1
fi
echo "$want" > "$stamp"
