#!/usr/bin/env python
"""Benchmark one full stage-2 training step (forward, backward, AdamW) of KuDA.

Default shapes are CH-SIMS v2's (T 50, V 232x177, A 925x25) with a bert-base-sized text
encoder (random weights: no download). Each configuration runs in its own process so that
peak RSS is its own. The baseline, measured in the same run, is the same model with every
attention forced onto PyTorch's "math" path (full [L, L] score tensors materialised, as the
authors' nn.MultiheadAttention-based code does) and the op's eager reference.

    python tools/bench_train.py                      # batch 8, 16, 32 on CPU, ours vs baseline
    python tools/bench_train.py -b 16 --device cuda  # one batch size on a GPU
    python tools/bench_train.py --variants ours      # skip the baseline

For scale (from the issue): the authors' code on a 2-core CPU takes 9.3 s / 7.4 GiB at batch 8,
20.4 s / 13.1 GiB at batch 16, and is killed for memory at batch 32.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

AUTHORS_CPU = {8: (9.3, 7.4), 16: (20.4, 13.1), 32: (None, None)}


def one_run(opts) -> dict:
    if opts.variant == "baseline":
        os.environ["KUDA_MMSA_KERNELS"] = "reference"
    import torch
    from transformers import BertConfig

    from kuda_mmsa.model import KuDA, KuDAConfig

    torch.manual_seed(0)
    device = torch.device(opts.device)
    L_T, (L_V, D_V), (L_A, D_A) = opts.text_len, opts.vision, opts.audio
    bert = BertConfig(vocab_size=21128)  # bert-base-chinese sizes
    cfg = KuDAConfig(feature_dims=[768, D_A, D_V], seq_lens=[L_T, L_A, L_V], pretrained=bert,
                     gradient_checkpointing="ckpt" in opts.variant)
    model = KuDA(cfg).to(device)
    model.freeze_knowledge()  # stage 2
    params = [p for p in model.parameters() if p.requires_grad]
    if opts.variant == "baseline":
        opt = torch.optim.AdamW(params, lr=3e-5, weight_decay=1e-5)
    else:
        from kuda_mmsa.optim import make_adamw  # what the trainers use
        opt = make_adamw(params, lr=3e-5, weight_decay=1e-5)
    b = opts.batch_size[0]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 21128, (b, L_T), generator=g)
    mask = torch.ones(b, L_T)
    text = torch.stack([ids.float(), mask, torch.zeros(b, L_T)], 1).to(device)
    vision = torch.randn(b, L_V, D_V, generator=g).to(device)
    audio = torch.randn(b, L_A, D_A, generator=g).to(device)
    vl = torch.randint(L_V // 2, L_V + 1, (b,), generator=g).to(device)
    al = torch.randint(L_A // 2, L_A + 1, (b,), generator=g).to(device)
    labels = (torch.rand(b, 1, generator=g) * 2 - 1).to(device)

    from kuda_mmsa.optim import autocast  # what the trainer uses for `precision`

    precision = "bf16" if "bf16" in opts.variant else "fp32"

    def step():
        with autocast(device, precision):
            out = model(text, audio, vision, al, vl, labels=labels)
        loss = torch.nn.functional.mse_loss(out["M"].float(), labels) + 0.1 * out["ce"].float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ctx = None
    if opts.variant == "baseline":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        ctx = sdpa_kernel([SDPBackend.MATH])
        ctx.__enter__()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(opts.warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(opts.steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / opts.steps
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    res = {"variant": opts.variant, "batch": b, "device": opts.device, "step_s": dt, "peak_rss_gib": rss}
    if device.type == "cuda":
        res["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-b", "--batch-size", type=int, action="append", help="repeatable; default 8 16 32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", nargs="+", default=["ours", "baseline"], choices=["ours", "ours-ckpt", "ours-bf16", "ours-bf16-ckpt", "baseline"],
                   help="ours = the trainer's setup; -ckpt = with gradient_checkpointing; -bf16 = precision bf16; baseline = "
                        "materialised attention + eager reference op + plain AdamW")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--text-len", type=int, default=50)
    p.add_argument("--vision", type=int, nargs=2, default=[232, 177], metavar=("LEN", "DIM"))
    p.add_argument("--audio", type=int, nargs=2, default=[925, 25], metavar=("LEN", "DIM"))
    p.add_argument("--mem-limit-gib", type=float, default=20.0,
                   help="a configuration whose address space exceeds this is reported as out of memory")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.variant:  # child process
        print(json.dumps(one_run(opts)))
        return
    sizes = opts.batch_size or [8, 16, 32]
    rows = []
    for b in sizes:
        for v in opts.variants:
            cmd = [sys.executable, __file__, "--variant", v, "-b", str(b), "--device", opts.device,
                   "--steps", str(opts.steps), "--warmup", str(opts.warmup), "--text-len", str(opts.text_len),
                   "--vision", *map(str, opts.vision), "--audio", *map(str, opts.audio)]
            limit = int(opts.mem_limit_gib * 2**30)

            def cap():
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

            # The child must import kuda_mmsa from this checkout even when it is not installed.
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                  preexec_fn=cap if opts.device == "cpu" else None)
            line = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else ""
            if line.startswith("{"):
                rows.append(json.loads(line))
            else:
                err = (proc.stderr.strip().splitlines() or ["?"])[-1]
                rows.append({"variant": v, "batch": b, "device": opts.device, "step_s": None,
                             "peak_rss_gib": None, "error": err[:120]})
            r = rows[-1]
            gpu = f", peak GPU {r['peak_gpu_gib']:.2f} GiB" if r.get("peak_gpu_gib") is not None else ""
            print(f"  measured {v:8s} batch {b:3d}: "
                  + (f"{r['step_s']:.2f} s/step, peak RSS {r['peak_rss_gib']:.2f} GiB{gpu}" if r["step_s"] else r["error"]),
                  flush=True)
    print()
    fmt = lambda x: f"{x:.2f}" if isinstance(x, (int, float)) else "—"
    print("| batch | variant | s/step | peak RSS GiB | speed-up vs baseline | memory vs baseline | authors (issue, 2-core CPU) |")
    print("|---|---|---|---|---|---|---|")
    for b in sizes:
        base = next((r for r in rows if r["batch"] == b and r["variant"] == "baseline"), {})
        a = AUTHORS_CPU.get(b, (None, None))
        authors = f"{a[0]} s, {a[1]} GiB" if a[0] else ("killed (OOM)" if b in AUTHORS_CPU else "—")
        for r in (r for r in rows if r["batch"] == b):
            speed = base.get("step_s") / r["step_s"] if r.get("step_s") and base.get("step_s") else None
            mem = r["peak_rss_gib"] / base["peak_rss_gib"] if r.get("peak_rss_gib") and base.get("peak_rss_gib") else None
            print(f"| {b} | {r['variant']} | {fmt(r.get('step_s')) if r.get('step_s') else r.get('error', '—')} | "
                  f"{fmt(r.get('peak_rss_gib'))} | {fmt(speed)}x | {fmt(mem)}x | {authors} |")


if __name__ == "__main__":
    main()
