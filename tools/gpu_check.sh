#!/usr/bin/env bash
# One-shot GPU check of the kernels on a machine with an NVIDIA GPU and a torch that has
# CUDA: builds the extension in place (CUDA, arch $TORCH_CUDA_ARCH_LIST, default 9.0),
# runs tests/test_ops.py and tools/bench_kernels.py --device cuda. Logs go to $OUT
# (default ./gpu_check_out). PYTEST_K=expr runs a subset, BENCH=0 skips the benchmark. Wheels in .whl/ (e.g. expecttest for opcheck) are installed
# to /tmp/site first when present.
set -u -o pipefail
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  $PY -m pip list 2>/dev/null | grep -i -E "^(pytest|expecttest|ninja|setuptools|triton) "
  which nvcc; nvcc --version | tail -2
} 2>&1 | tee "$OUT/env.txt"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
rm -f kuda_mmsa/_C*.so
start=$(date +%s)
if ! $PY setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
  echo "BUILD FAILED"; tail -40 "$OUT/build.log"; exit 1
fi
echo "build ok in $(( $(date +%s) - start )) s"
# PYTEST_K selects a subset (pytest -k); BENCH=0 skips the benchmark.
timeout ${TEST_TIMEOUT:-300} $PY -m pytest tests/test_ops.py -q -rs --maxfail=25 -p no:cacheprovider ${PYTEST_K:+-k "$PYTEST_K"} 2>&1 \
  | tee "$OUT/pytest.log" | tail -40
echo "pytest exit ${PIPESTATUS[0]}"
if [ "${BENCH:-1}" != 0 ]; then
  timeout ${BENCH_TIMEOUT:-150} $PY tools/bench_kernels.py --device cuda 2>&1 | tee "$OUT/bench.log"
  echo "bench exit ${PIPESTATUS[0]}"
fi
