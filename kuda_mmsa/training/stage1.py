"""Stage 1: knowledge pre-training (paper §3.2, "knowledge injection").

Each modality's branch (encoder + adapters + decoder) is trained alone with MSE against that
modality's unimodal label; the epoch with the lowest validation MSE is kept and written as a
knowledge checkpoint that records what it was trained on (data fingerprint, text encoder,
stage-1 settings). Datasets without unimodal labels (MOSI, MOSEI) use the multimodal label as
each modality's target, with a warning; the paper instead pre-trains on a SIMS set
(``knowledge_from``).

Resumable and reproducible: each modality has its own seed stream and its own data order,
after every epoch the branch, optimizer, best state and both random states are written
atomically next to the final checkpoint (``<modality>.pth.partial``), and a modality whose
checkpoint is already there for the same data and settings is not trained again.
"""
import json
import logging
import math
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm  # not tqdm.auto: its asyncio flavour calls iter() in __init__, an extra
                       # DataLoader iterator that draws from the shuffle generator (and, with
                       # workers, prefetches), so results changed with -n

from ..config.schema import setting
from ..data.loaders import make_loaders
from ..data.tokenization import check_tokenization, load_tokenizer
from ..errors import KudaCheckpointError, KudaInputError, KudaStaleStateError, KudaTrainingError
from ..files import atomic_write_text, ensure_writable_dir, remove_stale_temps
from ..model import KuDAConfig, build_branch, text_encoder_info
from .checkpoints import (MODALITY_NAMES, STAGE1_PARTIAL_FORMAT, atomic_save, check_knowledge_origin, data_content,
                          cpu_state_dict, describe_differences, knowledge_paths, plain, read_checkpoint,
                          read_knowledge, read_resume, save_knowledge)
from .run_config import RunConfig
from .optim import load_optimizer_state, make_adamw
from .step import TrainStep, graphs_wanted

logger = logging.getLogger("MMSA")
MODALITY_STREAM = {"T": 0, "V": 1, "A": 2}


@dataclass
class Stage1Job:
    """Everything stage 1 needs, independent of MMSA."""
    model: KuDAConfig
    pretrain: Dict[str, Any]            # learning_rate, weight_decay, batch_size, epochs {T,V,A}, early_stop
    paths: Dict[str, Path]              # {modality: final checkpoint}
    origin: Dict[str, Any]              # {"dataset", "data": fingerprint, "encoder": info}
    has_unimodal_labels: bool = True
    command: str = "python -m kuda_mmsa pretrain"
    device: Any = "cpu"
    seed: int = 1111
    num_workers: int = 0
    progress: bool = True
    masked: bool = True                 # False with the authors' padding (reference mode): means over padding
    data_name: str = ""                 # the feature file's name: other files get their own knowledge
    cuda_graphs: str = "auto"           # how the steps run (training.step), not what they compute

    def settings(self, modality: Optional[str] = None) -> dict:
        """What defines the knowledge (all modalities, or one modality's training): compared
        on resume and reuse, and named by the knowledge folder."""
        model = {k: getattr(self.model, k) for k in BRANCH_KEYS}
        if self.model.zeroes_padding():
            # named only where it acts, so the knowledge of every other setting keeps its folder
            model["zero_padding"] = True
        pretrain = dict(self.pretrain)
        if modality is not None:
            pretrain["epochs"] = pretrain["epochs"].get(modality)
        return plain({"pretrain": pretrain, "model": model, "masked": self.masked, "data": self.data_name,
                      "target": ("unimodal" if self.has_unimodal_labels else "M")})


BRANCH_KEYS = ("av_hidden_size", "av_layers", "av_heads", "av_ff_size", "av_dropout", "text_adapter_layers",
               "adapter_layers", "adapter_heads", "adapter_dropout", "decoder_dropout", "use_adapters",
               "authors_dropout", "fusion_mode")


def job_for_run(run: RunConfig, device=None, num_workers: int = 0, command: Optional[str] = None) -> Stage1Job:
    """The stage-1 job of a run (its model and stage-1 settings, its data, its knowledge folder)."""
    model = run.model
    dataset = run.knowledge_dataset
    job = Stage1Job(
        model=model, pretrain=run.pretrain_settings(), paths={},
        origin={"dataset": dataset, "data": run.data_fingerprint, "encoder": text_encoder_info(model.pretrained)},
        has_unimodal_labels=bool(run.has_unimodal_labels),
        device=device or run.device or "cpu", seed=int(run.pretrain.seed),
        num_workers=int(num_workers or 0), progress=bool(run.places.progress),
        masked=not model.authors("padding"), data_name=Path(str(run.feature_file or "")).name,
        cuda_graphs=run.train.cuda_graphs)
    job.paths = knowledge_paths(run.places.knowledge_dir, dataset, model.pretrained, job.settings())
    job.command = command or pretrain_command(run)
    return job


def pretrain_command(run: RunConfig) -> str:
    cmd = f"python -m kuda_mmsa pretrain -d {run.knowledge_dataset}"
    if run.custom_feature and not run.train.knowledge_from:
        cmd += f" --feature-file {run.custom_feature}"
    if run.pretrained_arg:
        cmd += f" --pretrained {run.pretrained_arg}"
    if run.places.knowledge_dir:
        cmd += f" --knowledge-dir {run.places.knowledge_dir}"
    return cmd


def branch_inputs(batch: Mapping[str, Any], modality: str, device) -> tuple:
    """The branch's inputs from an MMSA batch (moved to ``device`` unless it is None)."""
    move = (lambda t: t) if device is None else (lambda t: t.to(device))
    if modality == "T":
        return (move(batch["text"]),)
    key = "vision" if modality == "V" else "audio"
    lengths = batch.get(f"{key}_lengths")
    return move(batch[key]), None if lengths is None else move(torch.as_tensor(lengths))


def unimodal_target(batch: Mapping[str, Any], modality: str, device) -> torch.Tensor:
    labels = batch["labels"]
    y = labels[modality] if modality in labels else labels["M"]
    return (y if device is None else y.to(device)).view(-1, 1)


@contextmanager
def preserved_rng():
    """Stage 1 run inside stage 2 must not shift stage 2's random stream."""
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield
    random.setstate(py)
    np.random.set_state(npy)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _evaluate(branch: nn.Module, loader, modality: str, device, masked: bool) -> float:
    branch.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            _, score, _ = branch(*branch_inputs(batch, modality, device), masked=masked)
            y = unimodal_target(batch, modality, device)
            total += float(((score - y) ** 2).sum())
            count += y.shape[0]
    return total / max(count, 1)


def step_inputs(batch: Mapping[str, Any], modality: str) -> dict:
    """An MMSA batch as the stage-1 step's inputs (host tensors; the step moves them)."""
    x = dict(zip(("features", "lengths"), branch_inputs(batch, modality, None)))
    return {**{k: v for k, v in x.items() if v is not None}, "y": unimodal_target(batch, modality, None)}


def branch_training(config: KuDAConfig, modality: str, pretrain: Mapping[str, Any], device, cuda_graphs: str = "auto",
                    masked: bool = True) -> tuple:
    """(branch, optimizer, step) of one modality's stage-1 training: the branch on ``device``,
    make_adamw with the pretrain section's rate and decay, and the TrainStep over MSE against
    the unimodal target; ``step(step_inputs(batch, modality))`` -> {"loss"}. One function, so
    that tools/bench_train.py --stage 1 times exactly what train_branch runs."""
    device = torch.device(device)
    branch = build_branch(config, modality).to(device)
    graphs, _ = graphs_wanted(cuda_graphs, device)
    params = list(branch.parameters())
    opt = make_adamw(params, lr=float(pretrain["learning_rate"]), weight_decay=float(pretrain["weight_decay"]),
                     capturable=graphs)
    mse = nn.MSELoss()

    def forward_loss(x):
        args = (x["features"],) if modality == "T" else (x["features"], x.get("lengths"))
        _, score, _ = branch(*args, masked=masked)
        loss = mse(score, x["y"])
        return loss, {"loss": loss.detach()}

    blockers = [f"gradient_checkpointing: {config.gradient_checkpointing} restores the random state on the host"] \
        if config.gradient_checkpointing in ("sequences", "all") else []
    check = (lambda features, **_: branch.check_text(features)) if modality == "T" else None
    step = TrainStep(forward_loss, params, opt, 0.0, device, graphs=graphs, blockers=blockers, check=check,
                     what=f"The stage-1 {MODALITY_NAMES[modality]} step")
    return branch, opt, step


def train_branch(job: Stage1Job, modality: str, datasets: Mapping[str, Any]) -> Path:
    out_path = job.paths[modality]
    name = MODALITY_NAMES[modality]
    epochs = int(job.pretrain["epochs"].get(modality, 1))
    device = torch.device(job.device)
    fingerprint = {"origin": plain(job.origin), "settings": job.settings(modality), "modality": modality}
    partial = out_path.with_name(out_path.name + ".partial")
    remove_stale_temps(partial)
    remove_stale_temps(out_path)
    state, _ = read_resume(partial, STAGE1_PARTIAL_FORMAT, fingerprint, f"Interrupted stage-1 {name} state")

    _seed_all(job.seed + MODALITY_STREAM[modality])
    loaders = make_loaders(datasets, int(job.pretrain["batch_size"]), job.seed, job.num_workers,
                           stream=MODALITY_STREAM[modality] + 1, pin_memory=torch.device(job.device).type == "cuda")
    branch, opt, train_step = branch_training(job.model, modality, job.pretrain, device, job.cuda_graphs, job.masked)
    early_stop = int(setting({"pretrain": job.pretrain}, "pretrain.early_stop"))
    start, best, best_epoch, best_state = 0, float("inf"), 0, None
    if state is not None:
        branch.load_state_dict(state["branch"])
        load_optimizer_state(opt, state["optimizer"])
        start, best, best_epoch = int(state["epoch"]), float(state["best"]), int(state["best_epoch"])
        best_state = state["best_state"] or None
        torch.set_rng_state(state["rng"])
        loaders["train"].generator.set_state(state["shuffle_rng"])
        logger.info(f"Stage 1 [{name}]: resuming after epoch {start} from {partial}")

    stopped = start > 0 and start - best_epoch >= early_stop
    for epoch in range(start + 1, epochs + 1):
        if stopped:
            break
        branch.train()
        running, seen = torch.zeros((), device=device), 0
        bar = tqdm(loaders["train"], desc=f"stage 1 {name} {epoch}/{epochs}", disable=not job.progress, leave=False)
        for i, batch in enumerate(bar):
            x = step_inputs(batch, modality)
            running += train_step(x)["loss"] * x["y"].shape[0]       # on the device: no sync per step
            seen += x["y"].shape[0]
            if job.progress and i % 10 == 0:
                bar.set_postfix(mse=f"{running.item() / seen:.4f}")
        running = running.item()
        if not math.isfinite(running):
            raise KudaTrainingError(
                f"Stage 1 [{name}] diverged: the training loss became non-finite ({running}) in epoch {epoch}. "
                f"The last finished epoch is saved in {partial}; lower pretrain.learning_rate and delete that "
                f"file to start again.")
        valid = _evaluate(branch, loaders["valid"], modality, device, job.masked)
        if valid < best - 1e-6:
            best, best_epoch, best_state = valid, epoch, cpu_state_dict(branch)
        logger.info(f"Stage 1 [{name}] epoch {epoch}/{epochs}: train MSE {running / max(seen, 1):.4f}, "
                    f"valid MSE {valid:.4f} (best {best:.4f} @ {best_epoch})")
        atomic_save({"format": STAGE1_PARTIAL_FORMAT, "fingerprint": plain(fingerprint),
                     "branch": cpu_state_dict(branch), "optimizer": opt.state_dict(), "epoch": epoch,
                     "best": float(best), "best_epoch": best_epoch, "best_state": best_state or {},
                     "rng": torch.get_rng_state(), "shuffle_rng": loaders["train"].generator.get_state()},
                    partial)
        stopped = epoch - best_epoch >= early_stop
    if best_state:
        branch.load_state_dict(best_state)
    meta = dict(job.origin, settings=job.settings(modality), valid_mse=best, epoch=best_epoch,
                feature_dim=job.model.feature_dim(modality), seq_len=job.model.seq_len(modality))
    save_knowledge(branch, out_path, modality, meta)
    atomic_write_text(out_path.parent / "settings.json", json.dumps(job.settings(), indent=1))
    partial.unlink(missing_ok=True)
    logger.info(f"Stage 1 [{name}]: best valid MSE {best:.4f} at epoch {best_epoch}; saved {out_path}")
    return out_path


def _up_to_date(job: Stage1Job, modality: str) -> Optional[str]:
    """None when the modality's checkpoint exists for the same data, encoder and settings;
    else why not ('missing' or the differences)."""
    path = job.paths[modality]
    if not path.exists():
        return "missing"
    meta = read_knowledge(path, modality, job.command).get("meta", {})
    have = {"origin": {"dataset": meta.get("dataset"), "data": data_content(meta.get("data")),
                       "encoder": meta.get("encoder")}, "settings": meta.get("settings")}
    want = {"origin": dict(plain(job.origin), data=data_content(job.origin.get("data"))),
            "settings": job.settings(modality)}
    if plain(have) == want:
        return None
    return describe_differences(plain(have), want)


def data_label(run: RunConfig) -> str:
    """How messages name the run's data: its file, else its dataset."""
    return str(run.feature_file or run.dataset_name or "the data")


def check_text_data(datasets: Optional[Mapping[str, Any]], pretrained: Any, where: str, hint: str = "") -> Optional[dict]:
    """The text ids of ``datasets`` (the train split, else the first) against the tokenizer of
    the text encoder ``pretrained`` (data.tokenization.check_tokenization): a KudaInputError when
    they were made with another vocabulary. Nothing is checked when the encoder has no
    tokenizer files offline or the data has no text."""
    if not datasets or pretrained is None:
        return None
    split = "train" if "train" in datasets else next(iter(datasets))
    ds = datasets[split]
    text = getattr(ds, "text", None)
    if text is None or getattr(text, "ndim", 0) != 3 or text.shape[1] != 3:
        return None
    tokenizer = load_tokenizer(pretrained)
    if tokenizer is None:
        logger.debug(f"No tokenizer files for {pretrained!r}: token ids of {where} checked against its vocabulary size only.")
        return None
    return check_tokenization(text[:, 0], text[:, 1], getattr(ds, "raw_text", None), tokenizer, str(pretrained),
                              f"{where} (split '{split}', key 'text_bert')", sample_ids=getattr(ds, "ids", None),
                              hint=hint)


UNIMODAL_LABELS = ("regression_labels_T", "regression_labels_V", "regression_labels_A")


def check_unimodal_labels(job: Stage1Job, datasets: Optional[Mapping[str, Any]]) -> None:
    """Stage 1's one rule for its targets (``pretrain`` and the automatic stage 1 of ``train``
    alike): a dataset with unimodal labels (the SIMS sets, the demo) trains each modality on its
    own label, so every split must hold all three; none is replaced by the multimodal label
    silently. Datasets without unimodal labels (MOSI, MOSEI) use the multimodal label, with a
    warning."""
    if not job.has_unimodal_labels or not datasets:
        return
    for split, ds in datasets.items():
        found = getattr(ds, "unimodal_keys", None)
        if found is None:       # a dataset object of another kind: its labels say what it has
            found = [k for k, m in zip(UNIMODAL_LABELS, "TVA") if m in getattr(ds, "labels", {})]
        missing = [k for k in UNIMODAL_LABELS if k not in found]
        if missing:
            where = getattr(ds, "source", None) or ((job.origin.get("data") or {}).get("file") or {}).get("path")
            raise KudaInputError(
                f"The feature file '{where}', split '{split}', lacks {', '.join(missing)}"
                f"{' (it has ' + ', '.join(found) + ')' if found else ''}. Stage 1 trains each modality on its "
                f"own unimodal label, which dataset '{job.origin.get('dataset')}' has (regression_labels_T/_V/_A "
                f"in every split); a missing one is not replaced by the multimodal label. Add the missing labels, "
                f"or take the knowledge of a dataset that has them (--knowledge-from sims2, the paper's protocol "
                f"for data without unimodal labels).")


def pretrain_unimodal(job: Stage1Job, datasets: Mapping[str, Any], modalities: Iterable[str] = ("T", "V", "A"),
                      overwrite: bool = False) -> Dict[str, Path]:
    """Train and save the knowledge checkpoint of each modality that is not already there for
    the same data and settings (the text ids are first checked against the encoder's
    tokenizer). Returns {modality: path}."""
    modalities = [m.upper() for m in modalities]
    bad = [m for m in modalities if m not in MODALITY_NAMES]
    if bad:
        raise KudaCheckpointError(f"Unknown modality {bad[0]!r} for stage 1; expected some of T, V, A.")
    check_unimodal_labels(job, datasets)
    if not job.has_unimodal_labels:
        logger.warning(
            f"Dataset {job.origin.get('dataset')!r} has no unimodal labels (regression_labels_T/_V/_A): "
            "stage 1 uses the multimodal label as every modality's target (the paper pre-trains on a "
            "SIMS set instead: --knowledge-from sims2).")
    whys = {m: _up_to_date(job, m) for m in modalities}
    folders = sorted({job.paths[m].parent for m in modalities if overwrite or whys[m] is not None})
    for folder in folders:      # before any epoch: a folder that cannot take the checkpoints is refused now
        ensure_writable_dir(folder, "stage-1 knowledge folder (--knowledge-dir, $KUDA_MMSA_KNOWLEDGE_DIR)")
    with preserved_rng():
        for m in modalities:
            why = whys[m]
            if why is None and not overwrite:
                logger.info(f"Stage 1 [{MODALITY_NAMES[m]}]: {job.paths[m]} is up to date for this data "
                            f"and these settings; not trained again.")
                continue
            if why not in (None, "missing") and not overwrite:
                raise KudaStaleStateError(
                    f"Stage-1 {MODALITY_NAMES[m]} checkpoint {job.paths[m]} was trained with other data or "
                    f"settings ({why}). Pass --overwrite to replace it, or use another --knowledge-dir.")
            if m == "T":
                where = ((job.origin.get("data") or {}).get("file") or {}).get("path") or f"dataset {job.origin.get('dataset')}"
                check_text_data(datasets, job.model.pretrained, f"the feature file '{where}'")
            train_branch(job, m, datasets)
    return {m: job.paths[m] for m in modalities}


def ensure_knowledge(job: Stage1Job, datasets: Optional[Mapping[str, Any]], auto_pretrain: bool = True,
                     allow_other_data: bool = False, modalities: Iterable[str] = ("T", "V", "A")) -> Dict[str, Path]:
    """Stage-1 checkpoints of ``modalities`` for stage 2: runs stage 1 (announced) for the
    missing ones when `auto_pretrain` is on and data is given, else stops with the command to
    run; refuses knowledge made from other data (unless `allow_other_data`) or another text
    encoder."""
    paths = {m: job.paths[m] for m in modalities}
    missing = [m for m, p in paths.items() if not p.exists()]
    if missing:
        names = ", ".join(MODALITY_NAMES[m] for m in missing)
        folder = paths[missing[0]].parent
        if not auto_pretrain or datasets is None:
            raise KudaCheckpointError(
                f"Stage-1 knowledge checkpoints for {names} are missing (expected {paths[missing[0]]} and "
                f"its siblings in {folder}). Stage 2 will not train without the knowledge it is built on. "
                f"Run stage 1 first: {job.command} (or set use_knowledge: false for the no-knowledge "
                f"ablation).")
        logger.info(f"Stage-1 knowledge checkpoints missing for {names} in {folder}: running stage 1 now "
                    f"(same as `{job.command}`).")
        pretrain_unimodal(job, datasets, missing)
    for m, path in paths.items():
        ckpt = read_knowledge(path, m, job.command)
        check_knowledge_origin(ckpt, path, m, {"data": job.origin["data"], "encoder": job.origin["encoder"]},
                               job.command, allow_other_data=allow_other_data)
    return paths


__all__ = ["Stage1Job", "job_for_run", "pretrain_command", "pretrain_unimodal", "ensure_knowledge",
           "branch_inputs", "unimodal_target", "step_inputs", "branch_training", "preserved_rng", "read_checkpoint",
           "check_text_data", "data_label"]
