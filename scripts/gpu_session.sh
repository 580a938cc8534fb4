#!/usr/bin/env bash
# The prepared run for a lent GPU machine (device tool), in one call of about 10 minutes:
#   1. scripts/gpu_check_kernels.py  - the CUDA kernels against their references, policies, bandwidth (issue 8)
#   2. scripts/gpu_bench_8b.py       - step costs of an 8B-shaped model vs the bandwidth roofline (issue 9)
#   3. scripts/gpu_check.sh          - the gpu-marked tests (runtime on CUDA, kernels, nvfp4)
# Each step has its own time limit, so one that hangs does not cost the others; logs and JSON go to
# $OUT (the device tool's folder) or build/gpu_session. Uses the machine's python3 (PyTorch, CuPy,
# tokenizers, safetensors, onnx are in its image); the repository root goes on PYTHONPATH. The golden
# fixtures (../shared/fixtures) do not travel with the working tree: copy them into an ignored folder of
# the checkout (e.g. `cp -r ../shared shared-copy`, excluded in .git/info/exclude), carry it, and set
# NLD_FIXTURES=shared-copy/fixtures in the command, or the fixture tests skip.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
out=${OUT:-build/gpu_session}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
timeout 300 python3 scripts/gpu_check_kernels.py --json "$out/kernels.json" 2>&1 | tee "$out/kernels.log"
echo "gpu_check_kernels: exit ${PIPESTATUS[0]}" | tee -a "$out/summary.txt"
timeout 240 python3 scripts/gpu_bench_8b.py --json "$out/bench_8b.json" 2>&1 | tee "$out/bench_8b.log"
echo "gpu_bench_8b: exit ${PIPESTATUS[0]}" | tee -a "$out/summary.txt"
# -v names every test as it finishes, so a run cut off by its time limit still says which failed.
timeout 240 bash scripts/gpu_check.sh -v --maxfail=10 2>&1 | tee "$out/gpu_tests.log"
echo "gpu_check (pytest -m gpu): exit ${PIPESTATUS[0]}" | tee -a "$out/summary.txt"
