"""Stage 1: knowledge pre-training (KUDA.md §2).

Each modality's branch (encoder + adapters + decoder) is trained alone with MSE against that
modality's unimodal label; the epoch with the lowest validation MSE is kept and written as a
knowledge checkpoint (kuda_mmsa.checkpoints.knowledge_paths). Datasets without unimodal
labels (MOSI, MOSEI) use the multimodal label as each modality's target, with a warning; the
paper instead pre-trains on a SIMS set.

Interrupted runs resume: after every epoch the branch, optimizer and best state are written
atomically next to the final checkpoint (`<modality>.pth.partial`), and picked up again.
"""
import logging
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoints import MODALITY_NAMES, atomic_save, cpu_state_dict, knowledge_paths, read_checkpoint, save_knowledge
from .errors import KudaCheckpointError
from .model import KuDAConfig, build_branch
from .optim import make_adamw

logger = logging.getLogger("MMSA")


def pretrain_command(args: Mapping[str, Any]) -> str:
    cmd = f"python tools/pretrain_unimodal.py -d {args['dataset_name']}"
    if args.get("custom_feature"):
        cmd += f" --feature-file {args['custom_feature']}"
    if args.get("pretrained_arg"):
        cmd += f" --pretrained {args['pretrained_arg']}"
    if args.get("knowledge_dir"):
        cmd += f" --knowledge-dir {args['knowledge_dir']}"
    return cmd


def branch_inputs(batch: Mapping[str, Any], modality: str, device) -> tuple:
    if modality == "T":
        return (batch["text"].to(device),)
    key = "vision" if modality == "V" else "audio"
    lengths = batch.get(f"{key}_lengths")
    return batch[key].to(device), None if lengths is None else torch.as_tensor(lengths).to(device)


def unimodal_target(batch: Mapping[str, Any], modality: str, device) -> torch.Tensor:
    labels = batch["labels"]
    y = labels[modality] if modality in labels else labels["M"]
    return y.to(device).view(-1, 1)


@contextmanager
def preserved_rng():
    """Stage 1 run inside stage 2 must not shift stage 2's random stream."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []):
        yield
    random.setstate(py)
    np.random.set_state(npy)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _evaluate(branch: nn.Module, loader, modality: str, device) -> float:
    branch.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            _, score, _ = branch(*branch_inputs(batch, modality, device))
            y = unimodal_target(batch, modality, device)
            total += float(((score - y) ** 2).sum())
            count += y.shape[0]
    return total / max(count, 1)


def train_branch(args: Mapping[str, Any], modality: str, loaders: Mapping[str, Any], out_path: Path,
                 epochs: int, device, progress: bool = True) -> Path:
    cfg = KuDAConfig.from_dict(args)
    stage = dict(args.get("pretrain", {}))
    branch = build_branch(cfg, modality).to(device)
    opt = make_adamw(branch.parameters(), lr=float(stage.get("learning_rate", 1e-4)),
                     weight_decay=float(stage.get("weight_decay", 1e-3)))
    early_stop = int(stage.get("early_stop", epochs))
    partial = out_path.with_name(out_path.name + ".partial")
    start, best, best_epoch, best_state = 0, float("inf"), 0, None
    if partial.exists():
        state = read_checkpoint(partial, "Interrupted stage-1 state")
        branch.load_state_dict(state["branch"])
        opt.load_state_dict(state["optimizer"])
        start, best, best_epoch, best_state = state["epoch"], state["best"], state["best_epoch"], state["best_state"]
        torch.set_rng_state(state["rng"])
        logger.info(f"Stage 1 [{MODALITY_NAMES[modality]}]: resuming after epoch {start} from {partial}")

    mse = nn.MSELoss()
    for epoch in range(start + 1, epochs + 1):
        branch.train()
        running, seen = 0.0, 0
        bar = tqdm(loaders["train"], desc=f"stage 1 {MODALITY_NAMES[modality]} {epoch}/{epochs}",
                   disable=not progress, leave=False)
        for batch in bar:
            _, score, _ = branch(*branch_inputs(batch, modality, device))
            y = unimodal_target(batch, modality, device)
            loss = mse(score, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item() * y.shape[0]
            seen += y.shape[0]
            bar.set_postfix(mse=f"{running / seen:.4f}")
        valid = _evaluate(branch, loaders["valid"], modality, device)
        if valid < best - 1e-6:
            best, best_epoch, best_state = valid, epoch, cpu_state_dict(branch)
        logger.info(f"Stage 1 [{MODALITY_NAMES[modality]}] epoch {epoch}/{epochs}: train MSE "
                    f"{running / max(seen, 1):.4f}, valid MSE {valid:.4f} (best {best:.4f} @ {best_epoch})")
        atomic_save({"branch": cpu_state_dict(branch), "optimizer": opt.state_dict(), "epoch": epoch,
                     "best": best, "best_epoch": best_epoch, "best_state": best_state,
                     "rng": torch.get_rng_state()}, partial)
        if epoch - best_epoch >= early_stop:
            break
    if best_state is not None:
        branch.load_state_dict(best_state)
    meta = {
        "dataset": args.get("dataset_name"), "pretrained": str(args.get("pretrained")),
        "feature_dim": cfg.feature_dim(modality), "seq_len": cfg.seq_len(modality),
        "av_hidden_size": cfg.av_hidden_size, "valid_mse": best, "epoch": best_epoch,
        "target": modality if args.get("has_unimodal_labels", True) else "M",
    }
    save_knowledge(branch, out_path, modality, meta)
    partial.unlink(missing_ok=True)
    logger.info(f"Stage 1 [{MODALITY_NAMES[modality]}]: best valid MSE {best:.4f} at epoch {best_epoch}; saved {out_path}")
    return out_path


def make_loaders(args: Mapping[str, Any], batch_size: int, num_workers: int = 0, seed: int = 1111):
    from .mmsa.data import load_splits  # the only MMSA-aware data path

    splits = load_splits(args)
    gen = torch.Generator().manual_seed(seed)
    return {
        name: torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=(name == "train"),
                                          num_workers=num_workers, generator=gen if name == "train" else None)
        for name, ds in splits.items()
    }


def pretrain_unimodal(args: Mapping[str, Any], modalities: Iterable[str] = ("T", "V", "A"),
                      epochs: Optional[Mapping[str, int]] = None, device=None, seed: int = 1111,
                      num_workers: int = 0, progress: bool = True) -> Dict[str, Path]:
    """Train and save the knowledge checkpoint of each modality. Returns {modality: path}."""
    stage = dict(args.get("pretrain", {}))
    device = torch.device(device or args.get("device") or "cpu")
    modalities = [m.upper() for m in modalities]
    bad = [m for m in modalities if m not in MODALITY_NAMES]
    if bad:
        raise KudaCheckpointError(f"Unknown modality {bad[0]!r} for stage 1; expected some of T, V, A.")
    if not args.get("has_unimodal_labels", True):
        logger.warning(
            f"Dataset {args['dataset_name']!r} has no unimodal labels (regression_labels_T/_V/_A): stage 1 "
            "uses the multimodal label as every modality's target (our choice; the paper pre-trains on a SIMS set)."
        )
    epoch_table = dict(stage.get("epochs", {}))
    epoch_table.update(epochs or {})
    paths = knowledge_paths(args)
    with preserved_rng():
        _seed_all(seed)
        loaders = make_loaders(args, int(stage.get("batch_size", 32)), num_workers, seed)
        for m in modalities:
            _seed_all(seed)
            train_branch(args, m, loaders, paths[m], int(epoch_table.get(m, 1)), device, progress)
    return {m: paths[m] for m in modalities}


def ensure_knowledge(args: Mapping[str, Any], progress: bool = True) -> Dict[str, Path]:
    """Stage-1 checkpoints for this dataset and text encoder; runs stage 1 (announced) when
    they are missing and `auto_pretrain` is on, else stops with the command to run."""
    paths = knowledge_paths(args)
    missing = [m for m, p in paths.items() if not p.exists()]
    if missing:
        names = ", ".join(MODALITY_NAMES[m] for m in missing)
        if not args.get("auto_pretrain", True):
            raise KudaCheckpointError(
                f"Stage-1 knowledge checkpoints for {names} are missing (expected {paths[missing[0]]} and "
                f"its siblings in {paths[missing[0]].parent}). Stage 2 will not train without the "
                f"knowledge it is built on. Run stage 1 first: {pretrain_command(args)} (or set "
                "use_knowledge: false for the no-knowledge ablation)."
            )
        logger.info(f"Stage-1 knowledge checkpoints missing for {names} in {paths[missing[0]].parent}: "
                    f"running stage 1 now (same as `{pretrain_command(args)}`).")
        pretrain_unimodal(args, missing, device=args.get("device"), progress=progress)
    return paths
