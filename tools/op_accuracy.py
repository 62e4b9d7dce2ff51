#!/usr/bin/env python
"""Accuracy of ratio_cross_attention's paths against the fp32 reference, beside the error of
the same computation done by PyTorch in the same dtype (the yardstick of FlashAttention's
tests: a kernel may err about as much as PyTorch itself does in that dtype, not much more).

For each shape and dtype it prints the normalised max error (max|x - ref| / max(max|ref|, 1))
of the output and of the gradients of q, k, v and the weight, for
  pytorch   the reference formula computed in the input dtype (matmuls, softmax, products),
  kernel    the compiled kernel (SIMT on CUDA),
  kernel_tc CUDA fp16/bf16: the tensor-core kernel (KUDA_MMSA_TC=1),
  op        the public op (CUDA: long key sequences routed to SDPA),
and the worst ratio of a path's error to pytorch's (floored at one rounding of the dtype). Not a test: tests/test_ops.py holds the bounds.

    python tools/op_accuracy.py [--device cuda|cpu] [--json FILE]
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import kuda_mmsa.ops as ops  # noqa: E402
from test_ops import make_inputs, nerr, same_dtype_reference as same_dtype  # noqa: E402

# the shapes of the tensor-core tests that failed on an H200, and the model's own
SHAPES = [(1, 1, 8, 64, 65, 16), (2, 3, 2, 50, 70, 12), (1, 2, 3, 70, 130, 100), (2, 2, 2, 65, 129, 64),
          (2, 3, 2, 40, 70, 32), (32, 3, 8, 50, 50, 64)]


def errors(fn, q, k, v, w, mask, scale, gout, ref, rgrads):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, w)]
    out = fn(*leaves, mask, scale)
    out.backward(gout)
    return [nerr(out.detach(), ref)] + [nerr(a.grad, b) for a, b in zip(leaves, rgrads)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json")
    a = ap.parse_args()
    dev = a.device
    kernel = lambda *x: torch.ops.kuda_mmsa.ratio_cross_attention(*x)
    rows = []
    print("| shape | dtype | path | out | dq | dk | dv | dw | worst / pytorch's |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for shape in SHAPES:
        for dtype in ((torch.float16, torch.bfloat16) if dev == "cuda" else (torch.bfloat16,)):
            q, k, v, w, mask = make_inputs(*shape, dtype, dev, True, seed=hash(shape) % 1000)
            scale = 1 / math.sqrt(shape[-1])
            gout = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(device=dev, dtype=dtype)
            r = [t.detach().float().clone().requires_grad_() for t in (q, k, v, w)]
            ref = ops.ratio_cross_attention_reference(*r, mask, scale)
            ref.backward(gout.float())
            rgrads = [t.grad for t in r]
            paths = {"pytorch": same_dtype, "kernel": kernel, "op": ops.ratio_cross_attention}
            if dev == "cuda":
                paths["kernel_tc"] = kernel
            base = None
            for name, fn in paths.items():
                os.environ["KUDA_MMSA_TC"] = "1" if name == "kernel_tc" else "0"
                try:
                    e = errors(fn, q, k, v, w, mask, scale, gout, ref, rgrads)
                except Exception as exc:
                    print(f"| {shape} | {dtype} | {name} | failed: {exc} |")
                    continue
                base = e if name == "pytorch" else base
                # pytorch's own error can be 0 for a term: one rounding of the dtype is the floor
                unit = torch.finfo(dtype).eps / 2
                worst = max(x / max(b, unit) for x, b in zip(e, base)) if base else None
                rows.append({"shape": shape, "dtype": str(dtype), "path": name, "errors": e, "worst_over_pytorch": worst})
                print(f"| {shape} | {str(dtype)[6:]} | {name} | " + " | ".join(f"{x:.2e}" for x in e)
                      + f" | {worst:.2f}x |", flush=True)
    os.environ.pop("KUDA_MMSA_TC", None)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
