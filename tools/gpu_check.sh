#!/usr/bin/env bash
# The one prepared GPU check, for one device call on a machine with an NVIDIA GPU and a torch
# with CUDA. DEADLINE (default 540 s) caps the whole script: every phase's timeout is cut to
# what is left, and a phase with no time left is skipped and says so. Phases, most important
# first (issue 17's list):
#   1. build the extension in place (CUDA arch $TORCH_CUDA_ARCH_LIST, default 9.0);
#   2. step benchmark at batch $BATCH (32): $VARIANTS (default: ours, the CUDA-graph step, and
#      ours-eager, cuda_graphs: off) and the authors' code when $KUDA_AUTHORS_REPO names a local copy of
#      their repository (else the materialising baseline), one interleaved round, with eval
#      samples/s and kernel profiles of a step and of an evaluation batch (GPU-busy share,
#      launches and kernels per step, top kernels);
#   3. CUDA tests with the default kernels: tests/test_ops.py, test_model_cuda.py, test_step.py
#      (-m cuda; the CPU tests run in CI; the torch.compile tests are left to COMPILE_TESTS=1);
#   4. op benchmark (tools/bench_kernels.py --device cuda: op, kernel, tensor cores, SDPA);
#   5. the CUDA tests of the op again with KUDA_MMSA_TC=1 (fp16/bf16 on tensor cores);
#   6. op accuracy beside PyTorch's own same-dtype error (tools/op_accuracy.py);
#   7. step benchmark at batch 16 and 64 (ours vs the baseline);
#   8. stage-1 step benchmark (knowledge pre-training, tools/bench_train.py --stage 1) of the T, V
#      and A branches at batch $STAGE1_BATCH (32, stage 1's default), ours vs the same baseline,
#      with kernel profiles -> bench_stage1_{T,V,A}.json;
#   9. the DDP section below (DDP=0 skips it).
# Everything goes to $OUT (default ./gpu_check_out): logs, junit XML, benchmark JSON and
# summary.json, one file with every result. Knobs: PYTEST_K (a pytest -k subset), BENCH=0
# (no benchmarks), BATCH, STEPS, STAGE1_BATCH, STAGE1_MODALITIES, *_TIMEOUT (seconds), COMPILE_TESTS=1.
# Wheels in .whl/ (expecttest for opcheck, tabulate for the authors' code) go to /tmp/site first.
set -u -o pipefail
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # this checkout's kuda_mmsa (built in place below)
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
DEADLINE=${DEADLINE:-540}
within() {
  local want=$1; shift
  local left=$(( DEADLINE - $(elapsed) - 15 ))
  [ "$left" -lt "$want" ] && want=$left
  if [ "$want" -lt 15 ]; then echo "skipped, out of the ${DEADLINE} s budget: $*"; return 124; fi
  timeout "$want" "$@"
}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $PY -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  $PY -m pip list 2>/dev/null | grep -i -E "^(pytest|expecttest|ninja|setuptools|triton|transformers|tabulate|einops|scipy) "
  which nvcc; nvcc --version | tail -2
  git rev-parse --short HEAD 2>/dev/null && git status --porcelain --untracked-files=no | head -20
  nproc; grep -m1 "model name" /proc/cpuinfo
} 2>&1 | tee "$OUT/env.txt"

# ---------------------------------------------------------------- 1. build
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
rm -f kuda_mmsa/_C*.so
start=$(date +%s)
BUILD=ok
if ! within 240 $PY setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
  BUILD=failed
  echo "BUILD FAILED"; tail -40 "$OUT/build.log"
fi
BUILD_S=$(( $(date +%s) - start ))
echo "build $BUILD in $BUILD_S s"

STEP="tools/bench_train.py --device cuda --steps ${STEPS:-10} --warmup 6 --eval-steps 10 --profile-steps 3"
if [ -n "${KUDA_AUTHORS_REPO:-}" ]; then BASE="--baseline authors --authors-repo $KUDA_AUTHORS_REPO"
else BASE="--baseline materialising"; echo "KUDA_AUTHORS_REPO not set: the baseline is the materialising one"; fi
if [ "$BUILD" = ok ]; then
  if [ "${BENCH:-1}" != 0 ]; then
    # ---------------------------------------------------------- 2. step benchmark, batch 32
    within ${STEP_TIMEOUT:-200} $PY $STEP -b ${BATCH:-32} --variants ${VARIANTS:-ours ours-eager} $BASE --rounds 1 \
      --json "$OUT/bench_train.json" 2>&1 | tee "$OUT/bench_train.log"
    echo "bench_train exit ${PIPESTATUS[0]} at $(elapsed) s"
  fi
  # ------------------------------------------------------------ 3. CUDA tests
  unset KUDA_MMSA_TC
  K="${PYTEST_K:-}"
  [ "${COMPILE_TESTS:-0}" = 1 ] || K="${K:+$K and }not compile"
  within ${TEST_TIMEOUT:-150} $PY -m pytest tests/test_ops.py tests/test_model_cuda.py tests/test_step.py -m cuda -q -rs \
    --maxfail=25 -p no:cacheprovider --junitxml="$OUT/pytest.xml" -k "$K" 2>&1 | tee "$OUT/pytest.log" | tail -30
  echo "pytest exit ${PIPESTATUS[0]} at $(elapsed) s"
  if [ "${BENCH:-1}" != 0 ]; then
    # ---------------------------------------------------------- 4. op benchmark
    within ${BENCH_TIMEOUT:-120} $PY tools/bench_kernels.py --device cuda --reps 10 --json "$OUT/bench_kernels.json" 2>&1 \
      | tee "$OUT/bench_kernels.log"
    echo "bench_kernels exit ${PIPESTATUS[0]} at $(elapsed) s"
  fi
  # ------------------------------------------------------------ 5. tensor-core tests
  KUDA_MMSA_TC=1 within ${TC_TEST_TIMEOUT:-90} $PY -m pytest tests/test_ops.py -m cuda -q -rs \
    --maxfail=25 -p no:cacheprovider --junitxml="$OUT/pytest_tc.xml" -k "not compile${PYTEST_K:+ and $PYTEST_K}" 2>&1 \
    | tee "$OUT/pytest_tc.log" | tail -30
  echo "pytest (KUDA_MMSA_TC=1) exit ${PIPESTATUS[0]} at $(elapsed) s"
  # ------------------------------------------------------------ 6. op accuracy
  within ${ACC_TIMEOUT:-60} $PY tools/op_accuracy.py --device cuda --json "$OUT/op_accuracy.json" 2>&1 | tee "$OUT/op_accuracy.log"
  echo "op_accuracy exit ${PIPESTATUS[0]} at $(elapsed) s"
  if [ "${BENCH:-1}" != 0 ]; then
    # ---------------------------------------------------------- 7. step benchmark, batch 16 and 64
    for B in ${OTHER_BATCHES:-16 64}; do
      within ${STEP_TIMEOUT:-120} $PY $STEP -b $B --variants ours $BASE --rounds 1 --profile-steps 0 \
        --json "$OUT/bench_train_b$B.json" 2>&1 | tee "$OUT/bench_train_b$B.log" | tail -8
      echo "bench_train -b $B exit ${PIPESTATUS[0]} at $(elapsed) s"
    done
    # ---------------------------------------------------------- 8. stage-1 step benchmark, T V A
    for M in ${STAGE1_MODALITIES:-T V A}; do
      within ${STAGE1_TIMEOUT:-90} $PY $STEP --stage 1 --modality $M -b ${STAGE1_BATCH:-32} --variants ours $BASE \
        --rounds 1 --json "$OUT/bench_stage1_$M.json" 2>&1 | tee "$OUT/bench_stage1_$M.log" | tail -8
      echo "bench_train --stage 1 --modality $M exit ${PIPESTATUS[0]} at $(elapsed) s"
    done
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
STEP_BENCHES = ("bench_train", "bench_train_b16", "bench_train_b64", "bench_stage1_T", "bench_stage1_V", "bench_stage1_A")
for name in ("bench_kernels", *STEP_BENCHES, "op_accuracy"):
    f = out / f"{name}.json"
    try:
        summary[name] = json.loads(f.read_text()) if f.exists() else None
    except ValueError as e:
        summary[name] = {"error": str(e)}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
short = {k: summary[k] for k in ("build", "build_s", "total_s", "pytest", "pytest_tc")}
for name in STEP_BENCHES:
    rows = (summary.get(name) or {}).get("rows") or []
    short[name] = [{k: (round(r[k], 4) if isinstance(r.get(k), float) else r.get(k))
                    for k in ("variant", "step_s", "peak_gpu_gib", "peak_gpu_reserved_gib", "eval_samples_per_s",
                              "captured", "capture_failure", "error") if r.get(k) is not None}
                   | {"eval_busy": (r.get("eval_profile") or {}).get("gpu_busy_share"),
                      "eval_gpu_ms": (r.get("eval_profile") or {}).get("gpu_busy_ms_per_step"),
                      "busy": (r.get("profile") or {}).get("gpu_busy_share"),
                      "launches": (r.get("profile") or {}).get("launches_per_step"),
                      "kernels": (r.get("profile") or {}).get("kernels_per_step")} for r in rows]
    short[name + "_ratios"] = (summary.get(name) or {}).get("summary")
kern = summary.get("bench_kernels") or []
short["op_vs_sdpa"] = [[str(r["shape"]), r["dtype"], r["pass"], r.get("route"), round(r.get("sdpa_over_op") or 0, 2),
                        round(r.get("sdpa_over_kernel") or 0, 2)]
                       for d in (kern if isinstance(kern, list) else []) for r in d.get("rows", [])]
print(json.dumps(short, indent=None, default=str)[:9000])
EOF

# ==================================================================================================
# 9. DDP section (issue 12: data-parallel training under torchrun). Separate from the checks above and
# run after them; DDP=0 skips it. On one GPU the processes share it (gloo: NCCL needs one GPU per
# process); with two or more GPUs they use NCCL, one GPU each.
#   a. scaling: KuDA training steps (paper-sized fusion, vision/audio at CH-SIMS v2 lengths, the
#      demo's tiny BERT, $DDP_BATCH samples per process) with 1 process, then 2 (and every GPU when
#      more than 2 are lent), reported in samples/s -> $OUT/ddp_scaling.json;
#   b. tests/test_distributed.py (2 processes: equal to one process, one row/weights file, a killed
#      rank resumes) on this machine's devices -> $OUT/ddp_pytest.log;
#   c. end to end: torchrun --nproc_per_node 2 -m kuda_mmsa -m kuda -d demo (2 epochs) and the same
#      run in one process, test metrics side by side -> $OUT/ddp_e2e_*.log, $OUT/ddp_summary.json.
# Knobs: DDP_BATCH (16 per process), DDP_STEPS (20 timed steps after 5 warm-up), DDP_TIMEOUT (300 s each).
# ==================================================================================================
if [ "${DDP:-1}" != 0 ]; then
  echo "---- DDP section at $(elapsed) s"
  export KUDA_MMSA_CACHE=${KUDA_MMSA_CACHE:-$OUT/ddp_cache} KUDA_MMSA_KNOWLEDGE_DIR=${KUDA_MMSA_KNOWLEDGE_DIR:-$OUT/ddp_knowledge}
  NGPU=$($PY -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
  cat > "$OUT/ddp_bench.py" <<'EOF'
"""KuDA training steps under torchrun: samples/s over every process (rank 0 writes --json)."""
import argparse, json, os, time
import torch
from kuda_mmsa.mmsa.args import build_args
from kuda_mmsa.model import build_kuda
from kuda_mmsa.training import distributed as D
from kuda_mmsa.training.optim import make_adamw

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--warmup", type=int, default=5)
ap.add_argument("--json", required=True)
a = ap.parse_args()
ctx = D.env_context()
device, backend, notes = D.choose_device(ctx, [], "auto")
if ctx.distributed:
    D.init(ctx, backend, device)
else:
    backend = "none"
    if device.type == "cuda":
        torch.cuda.set_device(device)
ctx = D.current()
paper = dict(hidden_size=256, fusion_heads=8, fusion_head_dim=64, fusion_ff_size=512, av_hidden_size=128,
             av_layers=4, av_heads=8, av_ff_size=64, precision="fp32")
args, _ = build_args("kuda", "demo", config=paper)
T, A, V = 50, 925, 232                       # CH-SIMS v2 lengths; [T, A, V] order
args["seq_lens"], args["feature_dims"] = [T, A, V], [args["feature_dims"][0], 25, 177]
torch.manual_seed(0)
model = build_kuda(args).to(device)
net = D.wrap(model, device) if ctx.distributed else model
opt = make_adamw([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
g = torch.Generator().manual_seed(ctx.rank)
b = a.batch
text = torch.stack([torch.randint(1, 500, (b, T), generator=g), torch.ones(b, T, dtype=torch.long),
                    torch.zeros(b, T, dtype=torch.long)], 1).float().to(device)
batch = dict(text=text, audio=torch.randn(b, A, 25, generator=g).to(device),
             vision=torch.randn(b, V, 177, generator=g).to(device),
             audio_lengths=torch.full((b,), A, device=device), vision_lengths=torch.full((b,), V, device=device))
y = torch.randn(b, 1, generator=g).clamp(-1, 1).to(device)

def step():
    out = net(**batch, labels=y)
    loss = torch.nn.functional.mse_loss(out["M"].float(), y) + (out["aux"] if "aux" in out else 0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()
    ctx.barrier()

for _ in range(a.warmup):
    step()
sync()
t0 = time.perf_counter()
for _ in range(a.steps):
    step()
sync()
seconds = time.perf_counter() - t0
if ctx.is_main:
    res = {"processes": ctx.world_size, "backend": backend, "device": str(device), "notes": notes,
           "batch_per_process": b, "steps": a.steps, "seconds": round(seconds, 3),
           "samples_per_s": round(ctx.world_size * b * a.steps / seconds, 1),
           "gpus": torch.cuda.device_count(), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}
    print(json.dumps(res))
    with open(a.json, "w") as f:
        json.dump(res, f)
if ctx.distributed:
    D.shutdown()
EOF
  DDP_PROCS="1 2"
  if [ "$NGPU" -gt 2 ]; then DDP_PROCS="1 2 $NGPU"; fi
  for P in $DDP_PROCS; do
    within ${DDP_TIMEOUT:-300} $PY -m torch.distributed.run --standalone --nproc_per_node $P "$OUT/ddp_bench.py" \
      --batch ${DDP_BATCH:-16} --steps ${DDP_STEPS:-20} --json "$OUT/ddp_bench_$P.json" 2>&1 | tee "$OUT/ddp_bench_$P.log" | tail -3
    echo "ddp bench ($P process(es)) exit ${PIPESTATUS[0]} at $(elapsed) s"
  done
  within ${DDP_TIMEOUT:-300} $PY -m pytest tests/test_distributed.py -q -rs -p no:cacheprovider \
    --junitxml="$OUT/ddp_pytest.xml" 2>&1 | tee "$OUT/ddp_pytest.log" | tail -5
  echo "ddp pytest exit ${PIPESTATUS[0]} at $(elapsed) s"
  printf 'epochs: 2\nearly_stop: 5\nprecision: fp32\n' > "$OUT/ddp_e2e.yaml"
  E2E="-m kuda -d demo -s 1111 -n 2 -c $OUT/ddp_e2e.yaml --no-progress --no-plots"
  within ${DDP_TIMEOUT:-300} $PY -m torch.distributed.run --standalone --nproc_per_node 2 -m kuda_mmsa $E2E \
    --model-save-dir "$OUT/ddp_e2e2/m" --res-save-dir "$OUT/ddp_e2e2/r" --log-dir "$OUT/ddp_e2e2/l" \
    > "$OUT/ddp_e2e_2.log" 2>&1
  echo "ddp e2e (2 processes) exit $? at $(elapsed) s"
  within ${DDP_TIMEOUT:-300} $PY -m kuda_mmsa $E2E -g 0 \
    --model-save-dir "$OUT/ddp_e2e1/m" --res-save-dir "$OUT/ddp_e2e1/r" --log-dir "$OUT/ddp_e2e1/l" \
    > "$OUT/ddp_e2e_1.log" 2>&1
  echo "ddp e2e (1 process) exit $? at $(elapsed) s"
  OUT="$OUT" $PY - <<'EOF'
import glob, json, os, pathlib, re
out = pathlib.Path(os.environ["OUT"])
runs = []
for f in sorted(glob.glob(str(out / "ddp_bench_*.json")), key=lambda p: int(re.findall(r"_(\d+)\.json", p)[0])):
    runs.append(json.loads(pathlib.Path(f).read_text()))
base = next((r["samples_per_s"] for r in runs if r["processes"] == 1), None)
for r in runs:
    r["speedup"] = round(r["samples_per_s"] / base, 2) if base else None
def result(log):
    p = out / log
    m = re.findall(r"Result for seed 1111: (.*)", p.read_text()) if p.exists() else []
    return m[-1] if m else None
summary = {"scaling": runs, "e2e": {"2 processes": result("ddp_e2e_2.log"), "1 process": result("ddp_e2e_1.log")},
           "pytest_log_tail": (out / "ddp_pytest.log").read_text().splitlines()[-3:] if (out / "ddp_pytest.log").exists() else None}
(out / "ddp_summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
EOF
fi
