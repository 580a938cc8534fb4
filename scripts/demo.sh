#!/usr/bin/env bash
# The main job on a fresh clone: set up .venv, write a Triton model repository for the built-in tiny
# model, start the real tritonserver on loopback, send one streamed gRPC request per decoding mode
# (printing each answer and its tokens/forward), and stop the server; then start `nld serve-openai`
# (NVIDIA Dynamo's OpenAI frontend + one nld worker) and send one request with the openai SDK.
# NLD_DEMO_MODEL=DIR serves another checkpoint (it needs a tokenizer.json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
model_args=()
if [ -n "${NLD_DEMO_MODEL:-}" ]; then
  model_args=(--model "$NLD_DEMO_MODEL")
fi
nld=.venv/bin/nld

wait_ready() {  # PID LOG NAME: until LOG has the ready: line; the log and exit 1 if PID died first
  echo "starting $3 (log: $2) ..."
  until grep -q '^ready:' "$2"; do
    if ! kill -0 "$1" 2>/dev/null; then
      echo "$3 failed to start:" >&2
      cat "$2" >&2
      exit 1
    fi
    sleep 0.5
  done
}
repo=build/demo/triton_repo
log=build/demo/serve.log
mkdir -p build/demo
"$nld" repo "${model_args[@]}" --output "$repo" >/dev/null
read -r grpc http metrics < <(.venv/bin/python -c \
  'from nld.serving.server import free_port as f; print(f(), f(), f())')
: >"$log"  # exists before the wait loop reads it
"$nld" serve "$repo" --grpc-port "$grpc" --http-port "$http" --metrics-port "$metrics" >"$log" 2>&1 &
server=$!
trap 'kill -TERM ${server:-} ${openai_server:-} 2>/dev/null; wait 2>/dev/null || true' EXIT
wait_ready "$server" "$log" tritonserver
grep '^ready:' "$log"
prompt='def fibonacci(n):'
for mode in ar diffusion linear-spec quadratic-spec; do
  echo "=== $mode"
  "$nld" client --url "127.0.0.1:$grpc" --mode "$mode" --prompt "$prompt" --max-tokens 64
done
kill -TERM "$server"
wait "$server" || true
server=

openai_log=build/demo/serve-openai.log
openai_port=$(.venv/bin/python -c 'from nld.serving.server import free_port; print(free_port())')
: >"$openai_log"
"$nld" serve-openai "${model_args[@]}" --http-port "$openai_port" >"$openai_log" 2>&1 &
openai_server=$!
wait_ready "$openai_server" "$openai_log" "nld serve-openai"
url=$(grep '^ready:' "$openai_log" | cut -d' ' -f2)
echo "ready: $url"
echo "=== OpenAI API: /v1/completions, model <name>:linear-spec"
.venv/bin/python - "$url" "$prompt" <<'PY'
import sys

import openai

url, prompt = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=url, api_key="unused")
name = client.models.list().data[0].id.split(":")[0]
response = client.completions.create(model=f"{name}:linear-spec", prompt=prompt, max_tokens=64, temperature=0)
print(prompt + response.choices[0].text)
print(f"[{name}:linear-spec] {response.usage.completion_tokens} tokens ({response.choices[0].finish_reason})", file=sys.stderr)
PY
