# Sourced by the GPU scripts. A lent GPU machine's python3 has PyTorch but not this package installed, and
# pyproject.toml maps some subpackages to top-level folders (nld.builder -> builder/, ...), which a plain
# PYTHONPATH does not: link each into nld/ (ignored by git) so that `import nld.builder` works there.
cd "$(dirname "${BASH_SOURCE[0]}")/.." || return 1
for mapping in $(python3 -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["package-dir"]; print(" ".join(k.split(".", 1)[1] + "=" + v for k, v in d.items() if k.startswith("nld.")))'); do
  [ -e "nld/${mapping%%=*}" ] || ln -s "../${mapping#*=}" "nld/${mapping%%=*}"
done
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
