#!/usr/bin/env python
"""Benchmark one full stage-2 training step (forward, backward, optimiser step) of KuDA
against a baseline, measured alternately in the same run.

Shapes default to CH-SIMS v2's (T 50, V 232x177, A 925x25) with a bert-base-sized text
encoder built from a BertConfig (vocab 21128, random weights: nothing is downloaded). Every
measurement runs in its own child process, so its peak RSS is its own. Variants:

  ours            the trainer's setup: KuDAConfig defaults (gradient_checkpointing auto),
                  freeze_knowledge, the trainer's step (training.step.TrainStep: on a GPU
                  captured in a CUDA graph after 3 eager steps, cuda_graphs auto), its schedule,
                  grad_clip and ce_weight from the config defaults, precision from
                  choose('auto', detect(device)) unless --precision is given; evaluation through
                  the trainer's eval forward (also captured on a GPU)
  ours-eager      the same with cuda_graphs: off (every step eager, as before graphs)
  ours-ckpt       the same with gradient_checkpointing: all (configs/cpu_fast.yaml)
  ours-seqckpt    ... gradient_checkpointing: sequences;  ours-nockpt: none
  ours-fp32, ours-bf16, ours-fp32-nockpt, ours-eager-fp32, ...   combinations
  authors         the authors' stage-2 model (models.OverallModal.KMSA) from a local copy
                  of their repository (--authors-repo: a checkout or a bare git dir, which
                  is exported to a temporary folder), adapted at run time (never edited;
                  each adaptation is printed) with their loss and optimiser
  materialising   our model with every attention on PyTorch's "math" path (full [L, L]
                  score tensors, as nn.MultiheadAttention-era code does), the op's eager
                  reference, fp32, plain AdamW

    python tools/bench_train.py -b 16 --baseline authors --authors-repo ~/src/KuDA
    python tools/bench_train.py -b 16                         # materialising baseline
    python tools/bench_train.py -b 32 --device cuda --eval-steps 5 --json out.json

--stage 1 --modality T|V|A times one stage-1 step instead (knowledge injection: one modality's
branch trained alone against its unimodal label, training/stage1.py), at the same shapes:
  ours            training.stage1.branch_training, what train_branch runs: the branch, MSE,
                  make_adamw with the pretrain section's defaults (lr 1e-4, weight decay 1e-3),
                  the TrainStep (captured in a CUDA graph on a GPU), the loop's on-device loss sum;
                  fp32 (stage 1 has no autocast); evaluation as stage1._evaluate (eager, no_grad)
  ours-eager, ours-ckpt, ...   as above (precision parts are refused: stage 1 is fp32)
  authors         their pretrain.py: models.Encoder_KIAdapter.UniPretrain(modality,
                  num_patches, fea_size), AdamW(lr 1e-4, weight_decay 1e-3) (their parse_opts
                  defaults, the same as ours), MSELoss on output[1], the body of their train()
                  (loss.item() and output[1].cpu() every step, as their loop does), with the
                  same run-time adaptations as stage 2 (printed); it runs as such, no stand-in
  materialising   our branch with the eager reference op and the SDPA math path, plain AdamW
  The authors' stage-1 batch is on the device before the step (their loop copies V, A and T
  to the device every step, whatever the modality: not counted); ours arrives on the host.

    python tools/bench_train.py --stage 1 --modality V -b 32 --authors-repo ~/src/KuDA

--isa avx2 stands in for an AVX2-only CPU on a newer one: every child runs with torch's
kernels capped at AVX2 (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2,
MKL_ENABLE_INSTRUCTIONS=AVX2, KUDA_MMSA_CPU_ISA=avx2), so `precision: auto` chooses fp32 as it
would there. Clock speeds and caches stay the newer CPU's: a stand-in, not a measurement of
an AVX2-only machine.

--rounds R runs baseline and ours R times, interleaved (the order flips every round), and
the ratios are given per round. Numbers from a shared machine vary by tens of percent:
read the ranges, not one figure.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
AUTHORS_REPO_ENV = "KUDA_AUTHORS_REPO"


# ============================================================================ inputs
def make_batch(opts, device):
    """One batch, identical for every variant (same generator seed)."""
    import torch

    b = opts.batch_size
    L_T, (L_V, D_V), (L_A, D_A) = opts.text_len, opts.vision, opts.audio
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 21128, (b, L_T), generator=g)
    text = torch.stack([ids.float(), torch.ones(b, L_T), torch.zeros(b, L_T)], 1)  # ids, mask, segments
    vision = torch.randn(b, L_V, D_V, generator=g)
    audio = torch.randn(b, L_A, D_A, generator=g)
    vl = torch.randint(L_V // 2, L_V + 1, (b,), generator=g)
    al = torch.randint(L_A // 2, L_A + 1, (b,), generator=g)
    labels = torch.rand(b, 1, generator=g) * 2 - 1
    to = lambda t: t.to(device)
    return {"text": to(text), "vision": to(vision), "audio": to(audio), "vision_lengths": to(vl),
            "audio_lengths": to(al), "labels": to(labels)}


def timed(step, opts, device, eval_step=None):
    """Warm-up, then the mean seconds of `opts.steps` steps; eval samples/s if asked; on a GPU
    with --profile-steps, the kernel profile of that many more steps (gpu_profile)."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(opts.warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(opts.steps):
        step()
    sync()
    res = {"step_s": (time.perf_counter() - t0) / opts.steps}
    if eval_step is not None and opts.eval_steps > 0:
        for _ in range(3):  # warm-up (eval-mode kernels differ from training ones; graph capture)
            eval_step()
        sync()
        t0 = time.perf_counter()
        for _ in range(opts.eval_steps):
            eval_step()
        sync()
        res["eval_samples_per_s"] = opts.batch_size * opts.eval_steps / (time.perf_counter() - t0)
    if device.type == "cuda" and opts.profile_steps > 0:
        runs = [("profile", step, res["step_s"])]
        if res.get("eval_samples_per_s"):
            runs.append(("eval_profile", eval_step, opts.batch_size / res["eval_samples_per_s"]))
        for key, fn, seconds in runs:
            try:
                res[key] = gpu_profile(fn, opts.profile_steps, seconds)
            except Exception as e:  # the profile is extra: never lose the timing for it
                res[key] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return res


def finish(res, opts, device):
    import torch

    res.update({"batch": opts.batch_size, "device": opts.device, "threads": torch.get_num_threads(),
                "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})  # KiB -> GiB
    if device.type == "cuda":
        # allocated: the tensors' peak (what the step needs); reserved: what the caching
        # allocator and CUDA graph pools hold (what nvidia-smi shows, less the context)
        res["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res["peak_gpu_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return res


# ============================================================================ ours
CHECKPOINTING = {"ckpt": "all", "seqckpt": "sequences", "nockpt": "none"}
ISA_CAPS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                     "MKL_ENABLE_INSTRUCTIONS": "AVX2", "KUDA_MMSA_CPU_ISA": "avx2"}}


VARIANT_PARTS = ("fp32", "bf16", "auto", "eager", *CHECKPOINTING)


def parse_ours(variant):
    """'ours[-eager][-fp32|-bf16][-ckpt|-seqckpt|-nockpt]' -> (precision or None,
    gradient_checkpointing or None: the config default, cuda_graphs)."""
    parts = variant.split("-")[1:]
    precision = next((p for p in parts if p in ("fp32", "bf16", "auto")), None)
    return (precision, next((CHECKPOINTING[p] for p in parts if p in CHECKPOINTING), None),
            "off" if "eager" in parts else "auto")


def gpu_profile(step, steps, step_s):
    """CUDA kernels of ``steps`` steps under torch.profiler: GPU-busy time per step (the union
    of kernel and copy intervals), its share of the step's un-profiled wall time ``step_s``,
    kernel launches per step (graph launches counted apart) and the kernels that take the time."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    events = prof.events()
    gpu = [e for e in events if e.device_type == DeviceType.CUDA]
    spans = sorted((e.time_range.start, e.time_range.end) for e in gpu)
    busy, cur_s, cur_e = 0.0, None, None
    for s0, e0 in spans:
        if cur_e is None or s0 > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = s0, e0
        else:
            cur_e = max(cur_e, e0)
    if cur_e is not None:
        busy += cur_e - cur_s
    launches = sum(1 for e in events if e.device_type == DeviceType.CPU and e.name in
                   ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"))
    graph_launches = sum(1 for e in events if e.device_type == DeviceType.CPU and e.name.startswith("cudaGraphLaunch"))
    by_name = {}
    for e in gpu:
        by_name[e.name] = by_name.get(e.name, 0.0) + e.time_range.elapsed_us()
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:15]
    busy_ms = busy / 1e3 / steps
    return {"gpu_busy_ms_per_step": round(busy_ms, 3), "kernels_per_step": round(len(gpu) / steps, 1),
            "launches_per_step": round(launches / steps, 1), "graph_launches_per_step": round(graph_launches / steps, 2),
            "gpu_busy_share": round(busy_ms / 1e3 / step_s, 3) if step_s else None,
            "top_kernels_ms_per_step": [[n[:90], round(t / 1e3 / steps, 3)] for n, t in top]}


def run_ours(opts, variant):
    import torch
    from transformers import BertConfig

    from kuda_mmsa.model import KuDA, KuDAConfig
    from kuda_mmsa.training import precision as prec
    from kuda_mmsa.training.evaluation import eval_forward
    from kuda_mmsa.training.optim import make_adamw, make_schedule
    from kuda_mmsa.training.step import TrainStep, graphs_wanted

    try:
        from kuda_mmsa.config.schema import defaults
        d = defaults()
    except Exception:  # the config schema moved: the paper's values
        d = {}
    lr, wd = float(d.get("learning_rate", 3e-5)), float(d.get("weight_decay", 1e-5))
    clip, ce_w = float(d.get("grad_clip", 1.0) or 0), float(d.get("ce_weight", 0.1))

    forced, ckpt, cuda_graphs = parse_ours(variant)
    device = torch.device(opts.device)
    precision, why = prec.choose(forced or opts.precision, prec.detect(device))
    torch.manual_seed(0)
    L_T, (L_V, D_V), (L_A, D_A) = opts.text_len, opts.vision, opts.audio
    cfg = KuDAConfig(feature_dims=[768, D_A, D_V], seq_lens=[L_T, L_A, L_V],
                     pretrained=BertConfig(vocab_size=21128), **({"gradient_checkpointing": ckpt} if ckpt else {}))
    model = KuDA(cfg).to(device)
    model.freeze_knowledge()  # stage 2 (knowledge weights are random here, never loaded)
    params = [p for p in model.parameters() if p.requires_grad]
    graphs, _ = graphs_wanted(cuda_graphs, device)
    opt = make_adamw(params, lr=lr, weight_decay=wd, capturable=graphs)
    sched = make_schedule(opt, 10_000, 0.1)
    # the batch arrives on the host, as from the trainer's DataLoader (page-locked on a GPU run)
    x = make_batch(opts, torch.device("cpu"))
    if device.type == "cuda":
        x = {k: t.pin_memory() for k, t in x.items()}
    inputs = {k: x[k] for k in ("text", "audio", "vision", "audio_lengths", "vision_lengths")}

    def forward_loss(b):  # the trainer's forward and loss (KuDATrainer._forward_loss)
        with prec.autocast(device, precision):
            out = model(**{k: v for k, v in b.items() if k != "labels"}, labels=b["labels"])
        out = {k: v.float() for k, v in out.items()}
        loss = torch.nn.functional.mse_loss(out["M"], b["labels"]) + ce_w * out["ce"]
        if "aux" in out:
            loss = loss + out["aux"]
        return loss, {"loss": loss.detach(), "M": out["M"].detach()}

    train_step = TrainStep(forward_loss, params, opt, clip, device, graphs=graphs,
                           blockers=model.capture_blockers(), check=model.check_inputs)
    evaluate = eval_forward(model, device, precision, graphs)
    model.train()

    def step():  # the trainer's loop body (the trainer sets the mode once per epoch)
        if not model.training:
            model.train()
        train_step({**inputs, "labels": x["labels"]})
        sched.step()

    def eval_step():  # predict()'s loop body (the mode is set once per split)
        if model.training:
            model.eval()
        evaluate(inputs)["M"].cpu()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    res = timed(step, opts, device, eval_step)
    from kuda_mmsa.ops import backend

    res.update({"variant": variant, "precision": precision, "precision_reason": why,
                "gradient_checkpointing": cfg.gradient_checkpointing, "kernels": backend(),
                "cuda_graphs": cuda_graphs, "captured": train_step.captured, "eval_captured": evaluate.captured,
                "capture_failure": train_step.capture_failure or evaluate.capture_failure})
    return finish(res, opts, device)


def run_ours_stage1(opts, variant):
    """One stage-1 step of one modality through training.stage1.branch_training (what
    train_branch runs), with the schema's pretrain defaults; evaluation as stage1._evaluate."""
    import torch
    from transformers import BertConfig

    from kuda_mmsa.config.schema import defaults
    from kuda_mmsa.model import KuDAConfig
    from kuda_mmsa.ops import backend
    from kuda_mmsa.training.stage1 import branch_inputs, branch_training, step_inputs

    _, ckpt, cuda_graphs = parse_ours(variant)
    device, m = torch.device(opts.device), opts.modality
    d = defaults()
    pretrain = {k: d[f"pretrain.{k}"] for k in ("learning_rate", "weight_decay")}
    torch.manual_seed(0)
    L_T, (L_V, D_V), (L_A, D_A) = opts.text_len, opts.vision, opts.audio
    cfg = KuDAConfig(feature_dims=[768, D_A, D_V], seq_lens=[L_T, L_A, L_V],
                     pretrained=BertConfig(vocab_size=21128), **({"gradient_checkpointing": ckpt} if ckpt else {}))
    masked = not cfg.authors("padding")  # Stage1Job.masked
    branch, _, train_step = branch_training(cfg, m, pretrain, device, cuda_graphs, masked)
    x = make_batch(opts, torch.device("cpu"))  # on the host, as from stage 1's DataLoader
    if device.type == "cuda":
        x = {k: t.pin_memory() for k, t in x.items()}
    batch = {**x, "labels": {"M": x["labels"], m: x["labels"]}}
    inputs = step_inputs(batch, m)
    running = torch.zeros((), device=device)

    def step():  # the body of train_branch's loop (the mode is set once per epoch)
        if not branch.training:
            branch.train()
        running.add_(train_step(inputs)["loss"] * inputs["y"].shape[0])

    def eval_step():  # the body of stage1._evaluate (one host read per batch)
        if branch.training:
            branch.eval()
        with torch.no_grad():
            _, score, _ = branch(*branch_inputs(batch, m, device), masked=masked)
            float(((score - inputs["y"].to(device)) ** 2).sum())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    res = timed(step, opts, device, eval_step)
    res.update({"variant": variant, "precision": "fp32", "gradient_checkpointing": cfg.gradient_checkpointing,
                "kernels": backend(), "cuda_graphs": cuda_graphs, "captured": train_step.captured,
                "capture_failure": train_step.capture_failure})
    return finish(res, opts, device)


# ============================================================================ materialising
def run_materialising(opts, variant):
    os.environ["KUDA_MMSA_KERNELS"] = "reference"  # before kuda_mmsa.ops is imported
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import BertConfig

    from kuda_mmsa.model import KuDA, KuDAConfig

    device = torch.device(opts.device)
    torch.manual_seed(0)
    L_T, (L_V, D_V), (L_A, D_A) = opts.text_len, opts.vision, opts.audio
    cfg = KuDAConfig(feature_dims=[768, D_A, D_V], seq_lens=[L_T, L_A, L_V], pretrained=BertConfig(vocab_size=21128))
    if opts.stage == 1:
        return materialising_stage1(opts, variant, cfg, device)
    model = KuDA(cfg).to(device)
    model.freeze_knowledge()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-5, weight_decay=1e-5)
    x = make_batch(opts, device)
    labels = x["labels"]
    inputs = {k: x[k] for k in ("text", "audio", "vision", "audio_lengths", "vision_lengths")}

    def step():
        model.train()
        out = model(**inputs, labels=labels)
        loss = torch.nn.functional.mse_loss(out["M"], labels) + 0.1 * out["ce"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def eval_step():
        model.eval()
        with torch.no_grad():
            model(**inputs)["M"].cpu()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with sdpa_kernel([SDPBackend.MATH]):
        res = timed(step, opts, device, eval_step)
    res.update({"variant": variant, "precision": "fp32", "kernels": "reference (eager), SDPA math"})
    return finish(res, opts, device)


def materialising_stage1(opts, variant, cfg, device):
    """Our stage-1 branch on the materialising path (run_materialising's setting), plain AdamW
    with the pretrain defaults, the same MSE."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from kuda_mmsa.model import build_branch
    from kuda_mmsa.training.stage1 import branch_inputs

    m = opts.modality
    branch = build_branch(cfg, m).to(device)
    opt = torch.optim.AdamW(branch.parameters(), lr=1e-4, weight_decay=1e-3)
    x = make_batch(opts, device)
    args, y = branch_inputs(x, m, device), x["labels"]

    def step():
        branch.train()
        _, score, _ = branch(*args)
        loss = torch.nn.functional.mse_loss(score, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def eval_step():
        branch.eval()
        with torch.no_grad():
            branch(*args)[1].cpu()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with sdpa_kernel([SDPBackend.MATH]):
        res = timed(step, opts, device, eval_step)
    res.update({"variant": variant, "precision": "fp32", "kernels": "reference (eager), SDPA math"})
    return finish(res, opts, device)


# ============================================================================ authors
def authors_tree(path):
    """(folder holding models/OverallModal.py, temporary folder to delete or None)."""
    p = Path(path).expanduser().resolve()
    if (p / "models" / "OverallModal.py").is_file():
        return p, None
    # a bare git dir (or a .git folder): export HEAD to a temporary folder, outside this repo
    git_dir = p / ".git" if (p / ".git").is_dir() else p
    if not (git_dir / "HEAD").is_file():
        raise SystemExit(f"--authors-repo {path}: neither a checkout (models/OverallModal.py) nor a git dir")
    tmp = Path(tempfile.mkdtemp(prefix="kuda_authors_"))
    archive = subprocess.run(["git", "--git-dir", str(git_dir), "archive", "HEAD"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    if not (tmp / "models" / "OverallModal.py").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise SystemExit(f"--authors-repo {path}: HEAD has no models/OverallModal.py")
    return tmp, tmp


def authors_commit(path):
    """Their commit, or "?" for an exported copy (never the commit of a repository around it)."""
    p = Path(path).expanduser().resolve()
    top = subprocess.run(["git", "-C", str(p), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode == 0 and Path(top.stdout.strip()).resolve() == p:
        r = subprocess.run(["git", "-C", str(p), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else "?"
    r = subprocess.run(["git", "--git-dir", str(p), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 and (p / "HEAD").is_file() else "?"


def authors_encoders(opts):
    """(device, their models.Encoder_KIAdapter adapted to run here, the adaptations made): what
    both stages need (their README's torch patch, a random BERT instead of ./pretrainedModel)."""
    import types

    import torch
    import transformers
    from torch import nn

    device = torch.device(opts.device)
    tree = opts.authors_tree
    sys.path.insert(0, tree)
    adaptations = [f"their code is imported from an exported copy ({tree}); no file of theirs is edited"]

    if device.type != "cuda":
        torch.Tensor.cuda = lambda self, *a, **k: self
        adaptations.append("torch.Tensor.cuda returns the tensor itself (models/Encoder_KIAdapter.py:151 "
                           "moves the text padding mask with .cuda())")

    import models.Encoder_KIAdapter as enc

    class TransformerEncoderWithHiddens(nn.TransformerEncoder):
        """What their README patches into torch's source: (output, [input, layer 1, ...])."""

        def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
            output, hiddens = src, [src]
            for mod in self.layers:
                output = mod(output, src_mask=mask, src_key_padding_mask=src_key_padding_mask)
                hiddens.append(output)
            if self.norm is not None:
                output = self.norm(output)
            return output, hiddens

    enc.TransformerEncoder = TransformerEncoderWithHiddens
    adaptations.append("models.Encoder_KIAdapter.TransformerEncoder = a torch TransformerEncoder subclass "
                       "returning (output, hidden_list), as their README's patch of torch's source does")

    bert_cfg = dict(vocab_size=21128)  # bert-base-chinese sizes

    class BertConfigShim:
        @staticmethod
        def from_pretrained(_path, **kw):
            return transformers.BertConfig(**{**bert_cfg, **kw})

    class BertModelShim:
        @staticmethod
        def from_pretrained(_path, config=None, **_kw):
            return transformers.BertModel(config or transformers.BertConfig(output_hidden_states=True, **bert_cfg))

    class TokenizerShim:  # stage 2 never tokenises (text arrives as ids)
        @staticmethod
        def from_pretrained(_path, **_kw):
            return types.SimpleNamespace(vocab_size=bert_cfg["vocab_size"])

    enc.BertConfig, enc.BertModel, enc.BertTokenizer = BertConfigShim, BertModelShim, TokenizerShim
    adaptations.append("models.Encoder_KIAdapter.BertConfig/BertModel/BertTokenizer.from_pretrained (lines 101-103) "
                       "build a random BertModel(BertConfig(output_hidden_states=True, vocab_size=21128)) and a "
                       "dummy tokenizer instead of reading ./pretrainedModel/BERT")
    return device, enc, adaptations


def run_authors(opts, variant):
    """The authors' stage-2 step: their KMSA, their loss, their optimiser, their loop body."""
    import types

    import torch

    if opts.stage == 1:
        return run_authors_stage1(opts, variant)
    device, enc, adaptations = authors_encoders(opts)

    D_V, D_A = opts.vision[1], opts.audio[1]
    feature_dims = {"V": D_V, "A": D_A}
    original_init = enc.UniPretrain.__init__

    def sized_init(self, *args, **kwargs):  # their __init__ with other fea_size arguments
        modality = kwargs["modality"] if "modality" in kwargs else args[0]
        if modality in feature_dims:
            kwargs["fea_size"] = feature_dims[modality]
        original_init(self, *args, **kwargs)

    # Wrapping __init__ (not subclassing: their super(UniPretrain, self) must keep working).
    enc.UniPretrain.__init__ = sized_init
    adaptations.append(f"models.Encoder_KIAdapter.UniPretrain.__init__ is wrapped to pass fea_size V={D_V}, "
                       f"A={D_A} instead of the hard-coded 709/33 (lines 215-216)")

    from models.OverallModal import KMSA

    L_T, L_V, L_A = opts.text_len, opts.vision[0], opts.audio[0]
    opt = types.SimpleNamespace(datasetName="simsv2", seq_lens=[L_T, L_V, L_A], fusion_layers=3, dropout=0.3,
                                hidden_size=256, ffn_size=512, lr=3e-5, weight_decay=1e-5, seed=1111,
                                batch_size=opts.batch_size, train_mode="regression")
    adaptations.append(f"opt = SimpleNamespace(datasetName='simsv2', seq_lens=[{L_T}, {L_V}, {L_A}], hidden_size=256, "
                       "ffn_size=512, lr=3e-5, weight_decay=1e-5, ...) instead of opts.parse_opts()")
    torch.manual_seed(0)
    model = KMSA(opt, dataset=opt.datasetName, bert_pretrained="<random bert-base-chinese-sized>").to(device)
    for name, p in model.UniEncKI.named_parameters():  # the freezing of KMSA.preprocess_model
        if "adapter" in name or "decoder" in name:
            p.requires_grad = False
    adaptations.append("stage-1 checkpoints are not loaded (random weights); adapters and decoders are frozen "
                       "with KMSA.preprocess_model's own rule")
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    loss_fn = torch.nn.MSELoss()

    x = make_batch(opts, device)
    steps_v = torch.arange(L_V, device=device)
    steps_a = torch.arange(L_A, device=device)
    vmask = steps_v[None, :] >= x["vision_lengths"][:, None]  # bool, True = padding
    amask = steps_a[None, :] >= x["audio_lengths"][:, None]
    label = x["labels"]

    def inputs():
        return {"V": x["vision"], "A": x["audio"], "T": x["text"],
                "mask": {"V": vmask, "A": amask, "T": []}}  # 'T' is filled in by their encoder

    def step():  # the body of their train.py's train()
        model.train()
        output, nce_loss = model(inputs(), label.clone().detach())
        loss = loss_fn(output, label) + 0.1 * nce_loss
        loss.item()  # their loop logs it every step (a host sync)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def eval_step():  # their evaluate(): no ratio (None)
        model.eval()
        with torch.no_grad():
            model(inputs(), None)[0].cpu()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    res = timed(step, opts, device, eval_step)
    res.update({"variant": variant, "precision": "fp32", "adaptations": adaptations})
    return finish(res, opts, device)


def run_authors_stage1(opts, variant):
    """The authors' stage-1 step: their pretrain.py's model, loss, optimiser and train() body."""
    import torch

    device, enc, adaptations = authors_encoders(opts)
    m = opts.modality
    L, D = {"T": (opts.text_len, 768), "V": tuple(opts.vision), "A": tuple(opts.audio)}[m]
    torch.manual_seed(0)
    # pretrain.py's main(): UniPretrain(modality, num_patches=seq_lens[i], fea_size=fea_dims[i]);
    # its parse_opts defaults are CH-SIMS v2's ([50, 232, 925], [768, 177, 25]), lr 1e-4, wd 1e-3
    model = enc.UniPretrain(m, num_patches=L, fea_size=D).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-3)
    loss_fn = torch.nn.MSELoss()
    adaptations.append(f"UniPretrain('{m}', num_patches={L}, fea_size={D}), AdamW(lr=1e-4, weight_decay=1e-3) as "
                       "pretrain.py's main() builds them, without its data loader and scheduler (stepped per epoch)")

    x = make_batch(opts, device)
    vmask = torch.arange(opts.vision[0], device=device)[None, :] >= x["vision_lengths"][:, None]  # True = padding
    amask = torch.arange(opts.audio[0], device=device)[None, :] >= x["audio_lengths"][:, None]
    label = x["labels"]

    def inputs():  # a fresh dict per step: their text encoder writes its mask into it
        return {"V": x["vision"], "A": x["audio"], "T": x["text"], "mask": {"V": vmask, "A": amask, "T": []}}

    def step():  # the body of pretrain.py's train() (without the progress bar)
        model.train()
        output = model(inputs())
        loss = loss_fn(output[1], label)
        loss.item()             # losses.update(loss.item(), ...): a host sync every step
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        output[1].cpu()         # y_pred.append(output[1].cpu()) for the epoch's metrics

    def eval_step():  # the body of their evaluate()
        model.eval()
        with torch.no_grad():
            output = model(inputs())
            output[1].cpu()
            loss_fn(output[1], label).item()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    res = timed(step, opts, device, eval_step)
    res.update({"variant": variant, "precision": "fp32", "adaptations": adaptations})
    return finish(res, opts, device)


# ============================================================================ parent
def cpu_info():
    """(CPU model name, the flags of CPU_FLAGS_SHOWN it has), from /proc/cpuinfo."""
    model, flags = platform.processor() or "?", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return model, [f for f in CPU_FLAGS_SHOWN if f in flags]


def commit_of_checkout():
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if r.returncode:
        return "?"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return r.stdout.strip() + ("+dirty" if dirty else "")


def run_child(opts, variant):
    cmd = [sys.executable, __file__, "--child", variant, "-b", str(opts.batch_size), "--device", opts.device,
           "--steps", str(opts.steps), "--warmup", str(opts.warmup), "--eval-steps", str(opts.eval_steps),
           "--text-len", str(opts.text_len), "--vision", *map(str, opts.vision), "--audio", *map(str, opts.audio),
           "--precision", opts.precision, "--profile-steps", str(opts.profile_steps),
           "--stage", str(opts.stage), "--modality", opts.modality]
    if opts.threads:
        cmd += ["--threads", str(opts.threads)]
    if variant == "authors":
        cmd += ["--authors-tree", str(opts.authors_tree)]
    limit = int(opts.mem_limit_gib * 2**30)

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    # The child must import kuda_mmsa from this checkout even when it is not installed.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.update(ISA_CAPS.get(opts.isa, {}))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          preexec_fn=cap if opts.device == "cpu" and limit > 0 else None)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines and lines[-1].startswith("{"):
        res = json.loads(lines[-1])
    else:
        tail = [l for l in proc.stderr.strip().splitlines() if l.strip()] or [f"exit status {proc.returncode}"]
        res = {"variant": variant, "batch": opts.batch_size, "device": opts.device, "step_s": None,
               "peak_rss_gib": None, "error": tail[-1][:300]}
        if proc.returncode < 0:
            res["error"] = f"killed by signal {-proc.returncode} (out of memory?)"
    res["wall_s"] = time.perf_counter() - t0
    return res


def fmt(x, nd=2):
    return f"{x:.{nd}f}" if isinstance(x, (int, float)) else "—"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-b", "--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--stage", type=int, choices=[1, 2], default=2,
                   help="2: the multimodal step (default); 1: one modality's knowledge pre-training step")
    p.add_argument("--modality", choices=["T", "V", "A"], default="T", help="stage 1: the branch to train")
    p.add_argument("--baseline", choices=["authors", "materialising", "none"], default=None,
                   help="default: authors when --authors-repo (or $%s) is given, else materialising" % AUTHORS_REPO_ENV)
    p.add_argument("--authors-repo", default=os.environ.get(AUTHORS_REPO_ENV),
                   help="a local clone of github.com/MKMaS-GUET/KuDA, or a bare git dir of it")
    p.add_argument("--variants", nargs="+", default=["ours"],
                   help="ours, ours-ckpt, ours-nockpt, ours-fp32, ours-bf16-ckpt, ... (see above)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="precision of the 'ours' variants without an explicit one (default auto, as the trainer)")
    p.add_argument("--isa", choices=["native", *ISA_CAPS], default="native",
                   help="CPU: cap torch's (and our) kernels at this instruction set in every process "
                        "(see above); native = what the CPU has")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of baseline and ours")
    p.add_argument("--steps", type=int, default=2, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--eval-steps", type=int, default=0, help="also time this many evaluation batches (samples/s)")
    p.add_argument("--profile-steps", type=int, default=0,
                   help="GPU: profile this many more steps (GPU-busy share, kernels and launches per step, top kernels)")
    p.add_argument("--threads", type=int, default=0, help="torch threads in the children (default: torch's)")
    p.add_argument("--text-len", type=int, default=50)
    p.add_argument("--vision", type=int, nargs=2, default=[232, 177], metavar=("LEN", "DIM"))
    p.add_argument("--audio", type=int, nargs=2, default=[925, 25], metavar=("LEN", "DIM"))
    p.add_argument("--mem-limit-gib", type=float, default=22.0,
                   help="CPU: address-space limit of each child (0 = none); a child above it is reported as OOM")
    p.add_argument("--json", help="write every measurement and the machine facts to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--authors-tree", help=argparse.SUPPRESS)
    opts = p.parse_args()

    if opts.child:  # child process: one measurement, one JSON line
        import torch

        if opts.threads:
            torch.set_num_threads(opts.threads)
        v = opts.child
        run = run_authors if v == "authors" else run_materialising if v in ("materialising", "baseline") else \
            run_ours_stage1 if opts.stage == 1 else run_ours
        print(json.dumps(run(opts, v)))
        return

    for v in opts.variants:
        if not v.startswith("ours") or any(x not in VARIANT_PARTS for x in v.split("-")[1:]):
            p.error(f"unknown variant {v!r}")
        if opts.stage == 1 and parse_ours(v)[0] not in (None, "fp32"):
            p.error(f"{v}: stage 1 trains in fp32 (its step has no autocast); leave the precision out")
    baseline = opts.baseline or ("authors" if opts.authors_repo else "materialising")
    notes = []
    if baseline == "authors" and not opts.authors_repo:
        p.error("--baseline authors needs --authors-repo PATH (or $%s)" % AUTHORS_REPO_ENV)
    if opts.baseline is None and baseline == "materialising":
        notes.append("No --authors-repo given: the baseline is the materialising one (our model with "
                     "[L, L] attention scores materialised, the eager reference op, fp32, plain AdamW), "
                     "not the authors' code.")
    tmp = None
    if baseline == "authors":
        opts.authors_tree, tmp = authors_tree(opts.authors_repo)
        missing = [m for m in ("einops", "tabulate", "scipy", "transformers")
                   if subprocess.run([sys.executable, "-c", f"import {m}"], capture_output=True).returncode]
        if missing:
            raise SystemExit(f"the authors' code imports {', '.join(missing)}: install them into this environment "
                             f"(pip install {' '.join(missing)}); they are not dependencies of kuda_mmsa")

    os.environ.update(ISA_CAPS.get(opts.isa, {}))  # before torch: the parent's `auto` below sees the cap too
    import torch  # noqa: E402  (after argument errors)

    sys.path.insert(0, str(ROOT))  # this checkout's kuda_mmsa, installed or not (as the children)
    from kuda_mmsa.training.precision import choose, detect

    device = torch.device(opts.device)
    cpu_model, flags = cpu_info()
    threads = opts.threads or torch.get_num_threads()
    auto, why = choose(opts.precision, detect(device))
    what = f"stage-1 training step of the {opts.modality} branch" if opts.stage == 1 else "stage-2 training step"
    print(f"# bench_train: {what}, batch {opts.batch_size}, T {opts.text_len}, "
          f"V {opts.vision[0]}x{opts.vision[1]}, A {opts.audio[0]}x{opts.audio[1]}, bert-base sizes (random)")
    print(f"machine: {cpu_model}; CPU flags: {' '.join(flags) or 'none of ' + '/'.join(CPU_FLAGS_SHOWN)}; "
          f"{threads} torch threads of {os.cpu_count()} CPUs; torch {torch.__version__}")
    if opts.isa != "native":
        print(f"ISA cap: {opts.isa} in every process ({' '.join(f'{k}={v}' for k, v in ISA_CAPS[opts.isa].items())}); "
              f"torch's CPU capability here: {torch.backends.cpu.get_cpu_capability()}")
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    print(f"checkout {commit_of_checkout()}; ours: precision "
          + ("fp32 (stage 1 has no autocast)" if opts.stage == 1 else f"{auto} ({why})"))
    if baseline == "authors":
        print(f"authors' code: {opts.authors_repo} (commit {authors_commit(opts.authors_repo)})")
    for n in notes:
        print("NOTE: " + n)
    print(f"{opts.rounds} interleaved round(s), {opts.warmup} warm-up + {opts.steps} timed step(s) per measurement; "
          "each in its own process", flush=True)

    rows = []
    try:
        for r in range(opts.rounds):
            order = ([baseline] if baseline != "none" else []) + list(opts.variants)
            if r % 2:
                order.reverse()
            for v in order:
                res = run_child(opts, v)
                res["round"] = r + 1
                rows.append(res)
                extra = ""
                if res.get("peak_gpu_gib") is not None:
                    extra += f", peak GPU {res['peak_gpu_gib']:.2f} GiB"
                if res.get("eval_samples_per_s"):
                    extra += f", eval {res['eval_samples_per_s']:.1f} samples/s"
                if res.get("precision") and v.startswith("ours"):
                    extra += f", {res['precision']}" + (", captured" if res.get("captured") else "")
                prof = res.get("profile") or {}
                if prof.get("gpu_busy_share") is not None:
                    extra += (f", GPU busy {100 * prof['gpu_busy_share']:.0f}% ({prof['gpu_busy_ms_per_step']:.1f} ms), "
                              f"{prof['launches_per_step']:.0f} launches/step")
                msg = (f"{res['step_s']:.3f} s/step, peak RSS {res['peak_rss_gib']:.2f} GiB{extra}"
                       if res.get("step_s") else f"FAILED: {res.get('error')}")
                print(f"  round {r + 1} {v:14s}: {msg}  ({res['wall_s']:.0f} s wall)", flush=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    adaptations = next((r.get("adaptations") for r in rows if r.get("adaptations")), None)
    if adaptations:
        print("\nAdaptations of the authors' code (at run time, in the child process only):")
        for a in adaptations:
            print(f"  - {a}")

    gpu = device.type == "cuda"
    mem_key = "peak_gpu_gib" if gpu else "peak_rss_gib"
    print(f"\n| round | variant | precision | s/step | peak RSS GiB |{' peak GPU GiB |' if gpu else ''}"
          f"{' eval samples/s |' if opts.eval_steps else ''} speed-up vs {baseline} | memory vs {baseline} |")
    print("|---|---|---|---:|---:|" + ("---:|" if gpu else "") + ("---:|" if opts.eval_steps else "") + "---:|---:|")
    summary = {}
    for r in rows:
        base = next((b for b in rows if b["round"] == r["round"] and b["variant"] == baseline), {})
        speed = base["step_s"] / r["step_s"] if r.get("step_s") and base.get("step_s") else None
        mem = r[mem_key] / base[mem_key] if r.get(mem_key) and base.get(mem_key) else None
        if r["variant"] != baseline:
            summary.setdefault(r["variant"], []).append((speed, mem))
        cells = [str(r["round"]), r["variant"], r.get("precision", "—"),
                 fmt(r.get("step_s"), 3) if r.get("step_s") else f"failed: {r.get('error', '?')[:60]}",
                 fmt(r.get("peak_rss_gib"))]
        if gpu:
            cells.append(fmt(r.get("peak_gpu_gib")))
        if opts.eval_steps:
            cells.append(fmt(r.get("eval_samples_per_s"), 1))
        cells += [f"{fmt(speed)}x" if r["variant"] != baseline else "1", f"{fmt(mem)}x" if r["variant"] != baseline else "1"]
        print("| " + " | ".join(cells) + " |")
    print()
    for v, pairs in summary.items():
        sp = [s for s, _ in pairs if s]
        me = [m for _, m in pairs if m]
        if sp:
            print(f"{v} vs {baseline}: {min(sp):.2f}-{max(sp):.2f}x faster, "
                  f"{min(me):.2f}-{max(me):.2f}x the {'GPU memory' if gpu else 'peak RSS'} over {len(sp)} round(s)")
    if opts.json:
        meta = {"cpu": cpu_model, "cpu_flags": flags, "isa_cap": opts.isa, "threads": threads, "cpus": os.cpu_count(),
                "torch": torch.__version__, "commit": commit_of_checkout(), "baseline": baseline,
                "batch": opts.batch_size, "device": opts.device, "precision_auto": [auto, why], "notes": notes,
                "stage": opts.stage, "modality": opts.modality if opts.stage == 1 else None,
                "gpu": torch.cuda.get_device_name(device) if gpu else None,
                "shapes": {"T": opts.text_len, "V": opts.vision, "A": opts.audio}}
        Path(opts.json).write_text(json.dumps({"meta": meta, "rows": rows, "adaptations": adaptations,
                                               "summary": {v: [{"speedup": s, "memory": m} for s, m in pr]
                                                           for v, pr in summary.items()}}, indent=1))


if __name__ == "__main__":
    main()
