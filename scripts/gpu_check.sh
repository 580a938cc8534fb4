#!/usr/bin/env bash
# GPU check: run the CUDA-marked tests (the same runtime tests, on device "cuda") on a machine with
# PyTorch + CUDA. Missing pure-Python packages can be installed from wheels carried in .whl/
# (see the device tool notes); the fixtures are taken from NLD_FIXTURES or ./shared/fixtures. Extra
# arguments go to pytest; failures and errors are listed by test id at the end (-rfE).
set -euo pipefail
source "$(dirname "$0")/gpu_env.sh"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/nld-site .whl/*.whl
  export PYTHONPATH=/tmp/nld-site${PYTHONPATH:+:$PYTHONPATH}
fi
export NLD_FIXTURES=${NLD_FIXTURES:-$PWD/shared/fixtures}
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
python3 -m pytest -m gpu -p no:cacheprovider -rfE tests "$@"
