"""Benchmark of kuda_mmsa.ops.ratio_cross_attention (not a test).

Times forward and forward+backward of
  op         the public op, kuda_mmsa.ops.ratio_cross_attention, as the model calls it: on CUDA
             it routes long key sequences to SDPA (ops.route: "kernel" or "sdpa", printed);
  kernel     the compiled kernel itself (torch.ops.kuda_mmsa.ratio_cross_attention, backend()
             printed), with the default SIMT kernels on CUDA (KUDA_MMSA_TC unset),
  kernel_tc  CUDA, fp16/bf16 only: the same kernel on tensor cores (KUDA_MMSA_TC=1),
  reference  the eager PyTorch reference,
  sdpa       torch.nn.functional.scaled_dot_product_attention over the M stacked sources
             (boolean attn_mask from the key padding mask), then the weight,
at DAF shapes (B 32, M 3, H 8, L 50, d 64), longer sequences (on CUDA L 128, 232, 500, 925,
to place the routing threshold; L 500, 925 with fewer B on CPU) and the audio encoders'
self-attention (M 1, L 925, head dim 16, key padding as a suffix: lengths drawn in [L/2, L],
as real batches have), on every device present, all in the same run, and prints one table
per device with ratios (>1 = ours is faster). The masks leave every row at least one key, so
SDPA is defined everywhere. On CUDA each method's call (forward, or forward + backward) is
captured in a CUDA graph and timed over back-to-back replays: the GPU time a captured
training step pays, without the host's launch time (which would swamp the short calls).

    python tools/bench_kernels.py [--device cpu|cuda|all] [--reps N] [--threads N] [--json FILE]

On a shared, oversubscribed CPU, multi-threaded timings swing by several x (a thread
descheduled mid-op stalls the others); --threads 1 gives steadier CPU comparisons.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kuda_mmsa.ops as ops  # noqa: E402


def sdpa_composition(q, k, v, weight, key_padding_mask, scale):
    B, M, H, Lq, d = q.shape
    Lk = k.shape[3]
    attn_mask = None
    if key_padding_mask is not None:
        attn_mask = (~key_padding_mask).reshape(B * M, 1, 1, Lk)
    o = F.scaled_dot_product_attention(
        q.reshape(B * M, H, Lq, d), k.reshape(B * M, H, Lk, d), v.reshape(B * M, H, Lk, d),
        attn_mask=attn_mask, scale=scale,
    )
    return o.view(B, M, H, Lq, d) * weight.to(o.dtype)[:, :, None, None, None]


def kernel(q, k, v, weight, key_padding_mask, scale):
    """The compiled kernel, whatever the public op's routing (the public op where none is built)."""
    if not ops.compiled(q.device.type):
        return ops.ratio_cross_attention(q, k, v, weight, key_padding_mask, scale)
    return torch.ops.kuda_mmsa.ratio_cross_attention(q, k, v, weight, key_padding_mask, scale)


METHODS = {
    "op": ops.ratio_cross_attention,
    "kernel": kernel,
    "kernel_tc": kernel,  # with KUDA_MMSA_TC=1 (read by the kernel at every call)
    "reference": ops.ratio_cross_attention_reference,
    "sdpa": sdpa_composition,
}


def methods_for(device, dtype):
    if device == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return list(METHODS)
    return [m for m in METHODS if m != "kernel_tc"]


def set_tc(on):
    os.environ["KUDA_MMSA_TC"] = "1" if on else "0"


def make(B, M, H, L, d, dtype, device, grad, padding="random"):
    """padding: "random" (20 % of keys anywhere) or "lengths" (a padded suffix per sample)."""
    g = torch.Generator().manual_seed(0)
    t = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype).requires_grad_(grad)
    q, k, v = t(B, M, H, L, d), t(B, M, H, L, d), t(B, M, H, L, d)
    w = torch.rand(B, M, generator=g).to(device).requires_grad_(grad)
    if padding == "lengths":
        lengths = torch.randint(L // 2, L + 1, (B, M), generator=g)
        mask = torch.arange(L)[None, None, :] >= lengths[..., None]
    else:
        mask = torch.rand(B, M, L, generator=g) < 0.2
    mask[..., 0] = False
    return q, k, v, w, mask.to(device)


def timer(device):
    if device == "cuda":
        def run(fn, reps):
            # GPU time per call, as a captured training step pays it: the call is captured in
            # a CUDA graph and replayed `reps` times back to back (no host time in between)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn()
                fn()
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side):
                fn()
            graph.replay()
            torch.cuda.synchronize()
            times = []
            for _ in range(3):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                for _ in range(reps):
                    graph.replay()
                e.record()
                torch.cuda.synchronize()
                times.append(s.elapsed_time(e) / reps)
            return statistics.median(times)
    else:
        def run(fn, reps):
            fn()
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            return min(times)  # CPU here is shared and noisy: best of reps
    return run


def bench_device(device, reps):
    run = timer(device)
    if device == "cuda":
        shapes = [(32, 3, 8, 50, 64), (32, 3, 8, 128, 64), (16, 3, 8, 232, 64), (16, 3, 8, 500, 64),
                  (8, 3, 8, 925, 64), (32, 1, 8, 925, 16, "lengths")]
        dtypes = [torch.float32, torch.bfloat16, torch.float16]
    else:
        shapes = [(32, 3, 8, 50, 64), (2, 3, 8, 500, 64), (1, 3, 8, 925, 64), (16, 1, 8, 925, 16, "lengths")]
        dtypes = [torch.float32]
    rows = []
    for (B, M, H, L, d, *padding), dtype in [(s, dt) for s in shapes for dt in dtypes]:
        padding = padding[0] if padding else "random"
        scale = 1.0 / math.sqrt(d)
        res = {}
        for passname in ("fwd", "fwd+bwd"):
            grad = passname != "fwd"
            q, k, v, w, mask = make(B, M, H, L, d, dtype, device, grad, padding)
            gout = torch.randn_like(q)
            t = {}
            # interleave rounds so background load hits every method alike
            for _ in range(2 if device == "cuda" else 3):
                for name in methods_for(device, dtype):
                    fn = METHODS[name]
                    set_tc(name == "kernel_tc")
                    if grad:
                        def step(fn=fn):
                            out = fn(q, k, v, w, mask, scale)
                            out.backward(gout)
                            for x in (q, k, v, w):
                                x.grad = None
                    else:
                        def step(fn=fn):
                            with torch.no_grad():
                                fn(q, k, v, w, mask, scale)
                    ms = run(step, reps)
                    t[name] = min(t.get(name, float("inf")), ms)
            set_tc(False)
            res[passname] = t
        q, k, v, w, _ = make(B, M, H, L, d, dtype, device, False, padding)
        route = ops.route(q, k, v, w)
        for passname, t in res.items():
            rows.append(((B, M, H, L, d) + ((padding,) if padding != "random" else ()),
                         str(dtype).replace("torch.", ""), passname, t, route))
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n## {device}: {name}; torch {torch.__version__}; backend {ops.backend()} (kernel_tc: KUDA_MMSA_TC=1)")
    print("| shape (B,M,H,L,d) | dtype | pass | op route | op ms | kernel ms | kernel_tc ms | reference ms | sdpa ms | "
          "sdpa/op | ref/kernel | sdpa/kernel | sdpa/kernel_tc |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    f = lambda x: f"{x:.3f}" if x is not None else "—"
    ratio = lambda a, b: f"{a / b:.2f}x" if a is not None and b else "—"
    out = []
    for shape, dt, passname, t, route in rows:
        tc = t.get("kernel_tc")
        print(f"| {shape} | {dt} | {passname} | {route} | {f(t['op'])} | {f(t['kernel'])} | {f(tc)} | "
              f"{f(t['reference'])} | {f(t['sdpa'])} | {ratio(t['sdpa'], t['op'])} | {ratio(t['reference'], t['kernel'])} | "
              f"{ratio(t['sdpa'], t['kernel'])} | {ratio(t['sdpa'], tc)} |")
        out.append({"device": device, "shape": list(shape), "dtype": dt, "pass": passname, "ms": t, "route": route,
                    "sdpa_over_op": t["sdpa"] / t["op"], "sdpa_over_kernel": t["sdpa"] / t["kernel"],
                    "sdpa_over_kernel_tc": t["sdpa"] / tc if tc else None})
    sys.stdout.flush()
    return {"device": device, "name": name, "torch": torch.__version__, "backend": ops.backend(), "rows": out}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    ap.add_argument("--reps", type=int, default=0, help="timed repetitions per round (default: 20 cuda, 5 cpu)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", help="also write the timings to this file")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    devices = ["cpu", "cuda"] if a.device == "all" else [a.device]
    results = []
    tc_env = os.environ.get("KUDA_MMSA_TC")
    try:
        for dev in devices:
            if dev == "cuda" and not torch.cuda.is_available():
                print("\n## cuda: no GPU visible, skipped")
                continue
            results.append(bench_device(dev, a.reps or (20 if dev == "cuda" else 5)))
    finally:
        if tc_env is None:
            os.environ.pop("KUDA_MMSA_TC", None)
        else:
            os.environ["KUDA_MMSA_TC"] = tc_env
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
