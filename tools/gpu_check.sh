#!/usr/bin/env bash
# The one prepared GPU check, for one call on a machine with an NVIDIA GPU and a torch with
# CUDA (about 6-8 minutes on an H200):
#   1. build the extension in place (CUDA arch $TORCH_CUDA_ARCH_LIST, default 9.0);
#   2. CUDA tests: tests/test_ops.py and tests/test_model_cuda.py with the default SIMT
#      kernels, then their CUDA tests again with KUDA_MMSA_TC=1 (fp16/bf16 on tensor cores);
#   3. op benchmark: tools/bench_kernels.py --device cuda (SIMT, tensor cores, reference, SDPA);
#   4. step benchmark: tools/bench_train.py --device cuda at batch $BATCH (32): ours vs the
#      materialising baseline ($ROUNDS interleaved rounds), ours with KUDA_MMSA_TC=1, and ours
#      vs the authors' code when $KUDA_AUTHORS_REPO names a local copy of their repository
#      (a checkout or a bare git dir; their Python deps einops/tabulate/scipy must be there).
# Everything goes to $OUT (default ./gpu_check_out): logs, junit XML, benchmark JSON and
# summary.json, one file with every result. Knobs: PYTEST_K (a pytest -k subset), BENCH=0
# (no benchmarks), STEP_BENCH=0 (no step benchmark), BATCH, ROUNDS, *_TIMEOUT (seconds).
# Wheels in .whl/ (e.g. expecttest for opcheck) are installed to /tmp/site first.
set -u -o pipefail
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # this checkout's kuda_mmsa (built in place below)
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  $PY -m pip list 2>/dev/null | grep -i -E "^(pytest|expecttest|ninja|setuptools|triton|transformers) "
  which nvcc; nvcc --version | tail -2
  git rev-parse --short HEAD 2>/dev/null && git status --porcelain --untracked-files=no | head -20
} 2>&1 | tee "$OUT/env.txt"

# ---------------------------------------------------------------- 1. build
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
rm -f kuda_mmsa/_C*.so
start=$(date +%s)
BUILD=ok
if ! $PY setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
  BUILD=failed
  echo "BUILD FAILED"; tail -40 "$OUT/build.log"
fi
BUILD_S=$(( $(date +%s) - start ))
echo "build $BUILD in $BUILD_S s"

if [ "$BUILD" = ok ]; then
  # ------------------------------------------------------------ 2. CUDA tests
  unset KUDA_MMSA_TC
  timeout ${TEST_TIMEOUT:-240} $PY -m pytest tests/test_ops.py tests/test_model_cuda.py -q -rs --maxfail=25 \
    -p no:cacheprovider --junitxml="$OUT/pytest.xml" ${PYTEST_K:+-k "$PYTEST_K"} 2>&1 | tee "$OUT/pytest.log" | tail -30
  echo "pytest exit ${PIPESTATUS[0]} at $(elapsed) s"
  # Again with the tensor-core path on: every CUDA test (the fp16/bf16 ones take the
  # tensor-core kernels and their tolerances); the torch.compile test ran above.
  KUDA_MMSA_TC=1 timeout ${TC_TEST_TIMEOUT:-150} $PY -m pytest tests/test_ops.py tests/test_model_cuda.py -q -rs \
    --maxfail=25 -p no:cacheprovider --junitxml="$OUT/pytest_tc.xml" -k "${PYTEST_K:-cuda} and not compile" 2>&1 \
    | tee "$OUT/pytest_tc.log" | tail -30
  echo "pytest (KUDA_MMSA_TC=1) exit ${PIPESTATUS[0]} at $(elapsed) s"

  if [ "${BENCH:-1}" != 0 ]; then
    # ---------------------------------------------------------- 3. op benchmark
    timeout ${BENCH_TIMEOUT:-150} $PY tools/bench_kernels.py --device cuda --json "$OUT/bench_kernels.json" 2>&1 \
      | tee "$OUT/bench_kernels.log"
    echo "bench_kernels exit ${PIPESTATUS[0]} at $(elapsed) s"
    # ---------------------------------------------------------- 4. step benchmark
    if [ "${STEP_BENCH:-1}" != 0 ]; then
      STEP="tools/bench_train.py --device cuda -b ${BATCH:-32} --steps ${STEPS:-10} --warmup 3 --eval-steps 10"
      timeout ${STEP_TIMEOUT:-180} $PY $STEP --baseline materialising --rounds ${ROUNDS:-2} \
        --json "$OUT/bench_train.json" 2>&1 | tee "$OUT/bench_train.log"
      echo "bench_train exit ${PIPESTATUS[0]} at $(elapsed) s"
      KUDA_MMSA_TC=1 timeout ${STEP_TIMEOUT:-180} $PY $STEP --baseline none --rounds 1 \
        --json "$OUT/bench_train_tc.json" 2>&1 | tee "$OUT/bench_train_tc.log"
      echo "bench_train (KUDA_MMSA_TC=1) exit ${PIPESTATUS[0]} at $(elapsed) s"
      if [ -n "${KUDA_AUTHORS_REPO:-}" ]; then
        timeout ${AUTHORS_TIMEOUT:-240} $PY $STEP --baseline authors --authors-repo "$KUDA_AUTHORS_REPO" \
          --rounds ${ROUNDS:-2} --json "$OUT/bench_train_authors.json" 2>&1 | tee "$OUT/bench_train_authors.log"
        echo "bench_train (authors) exit ${PIPESTATUS[0]} at $(elapsed) s"
      else
        echo "KUDA_AUTHORS_REPO not set: no comparison with the authors' code"
      fi
    fi
  fi
fi

# ---------------------------------------------------------------- summary.json
BUILD="$BUILD" BUILD_S="$BUILD_S" TOTAL_S="$(elapsed)" OUT="$OUT" $PY - <<'EOF'
import json, os, pathlib
import xml.etree.ElementTree as ET

out = pathlib.Path(os.environ["OUT"])
summary = {"build": os.environ["BUILD"], "build_s": int(os.environ["BUILD_S"]), "total_s": int(os.environ["TOTAL_S"])}
env = out / "env.txt"
summary["env"] = env.read_text().splitlines()[:12] if env.exists() else []
for name in ("pytest", "pytest_tc"):
    f = out / f"{name}.xml"
    if not f.exists():
        summary[name] = None
        continue
    try:
        root = ET.parse(f).getroot()
        suites = [root] if root.tag == "testsuite" else list(root)
        counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        failed = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
                  if c.find("failure") is not None or c.find("error") is not None]
        summary[name] = {**counts, "failed": failed[:40]}
    except ET.ParseError as e:
        summary[name] = {"error": f"unreadable junit xml: {e}"}
for name in ("bench_kernels", "bench_train", "bench_train_tc", "bench_train_authors"):
    f = out / f"{name}.json"
    try:
        summary[name] = json.loads(f.read_text()) if f.exists() else None
    except ValueError as e:
        summary[name] = {"error": str(e)}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
short = {k: summary[k] for k in ("build", "build_s", "total_s", "pytest", "pytest_tc")}
print(json.dumps(short, indent=1))
EOF
