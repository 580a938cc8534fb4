#!/usr/bin/env bash
# The main job on a fresh clone: set up .venv, write a Triton model repository for the built-in tiny
# model, start the real tritonserver on loopback, send one streamed gRPC request per decoding mode
# (printing each answer and its tokens/forward), and stop the server.
# NLD_DEMO_MODEL=DIR serves another checkpoint (it needs a tokenizer.json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
model_args=()
if [ -n "${NLD_DEMO_MODEL:-}" ]; then
  model_args=(--model "$NLD_DEMO_MODEL")
fi
nld=.venv/bin/nld
repo=build/demo/triton_repo
log=build/demo/serve.log
mkdir -p build/demo
"$nld" repo "${model_args[@]}" --output "$repo" >/dev/null
read -r grpc http metrics < <(.venv/bin/python -c \
  'from nld.serving.server import free_port as f; print(f(), f(), f())')
"$nld" serve "$repo" --grpc-port "$grpc" --http-port "$http" --metrics-port "$metrics" >"$log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
echo "starting tritonserver (log: $log) ..."
until grep -q '^ready:' "$log"; do
  if ! kill -0 "$server" 2>/dev/null; then
    echo "tritonserver failed to start:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.5
done
grep '^ready:' "$log"
prompt='def fibonacci(n):'
for mode in ar diffusion linear-spec quadratic-spec; do
  echo "=== $mode"
  "$nld" client --url "127.0.0.1:$grpc" --mode "$mode" --prompt "$prompt" --max-tokens 64
done
