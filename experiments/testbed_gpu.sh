#!/usr/bin/env bash
# Fig. 4 in the testbed on one GPU, < 9 min on an H200 (experiments/testbed_gpu.py; apt_jax/testbed/gpu_fig4.py).
#   experiments/testbed_gpu.sh wheels          here, with pip's network: the wheels the GPU image lacks -> .whl/ (ignored)
#   experiments/testbed_gpu.sh OUT [--tiny]    there (or anywhere): installs .whl/ into /tmp/site if present, then runs
# The GPU image has jax (CUDA), flax, optax and orbax but not ml_collections nor beartype; nothing here imports
# tensorflow. A hard 530 s limit stops the run; the results written so far stay in OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ "${1:-}" == wheels ]]; then
  for w in ml-collections==1.1.0 beartype==0.23.1; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "$w"
  done
  ls .whl
  exit 0
fi
OUT=${1:?usage: experiments/testbed_gpu.sh OUT [--tiny] | wheels}
shift
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"   # OUT keeps 8 files: the tool returns no more
timeout "${GPU_FIG4_LIMIT_S:-530}" "$PY" -m apt_jax.testbed.gpu_fig4 "$OUT" "$@"
