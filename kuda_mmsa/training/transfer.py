"""Stage-1 knowledge from another dataset (``knowledge_from``, the paper's protocol for MOSI and
MOSEI, which have no unimodal labels: the knowledge is pre-trained on a CH-SIMS set).

The rule, per modality, when the source dataset S differs from the run's dataset D:

- **Vision and audio** knowledge is trained by stage 1 on S's features (run first, announced,
  when missing) with this run's stage-1 settings. Everything whose shape does not depend on
  the data transfers: the Transformer encoder, its LayerNorm, the adapters and the decoder.
  The input projection (``proj.*``: feature dim -> av_hidden_size) transfers only when S and D
  have the same feature dim, the position embeddings (``pos``) only when they have the same
  padded length; otherwise they start from this run's initialisation and train in stage 2
  (e.g. SIMS vision 709 -> MOSI 20: the projection trains, the frozen adapters and decoder
  read what it learns to give them).
- **Text** (``knowledge_text``): ``source`` (default) trains the text knowledge on S's text
  with *this run's* text encoder, so S's token ids must come from that encoder's tokenizer
  (sims <-> simsv2 with bert-base-chinese; checked, a clear error otherwise); knowledge made
  with another encoder never loads (its hidden states mean something else). ``own`` takes
  the text knowledge of D itself (stage 1 on D; the multimodal label where D has no unimodal
  labels); ``scratch`` leaves the text adapters and decoder random and trains them in stage 2.
- **Label range**: a transferred decoder predicts on S's label scale; its last linear layer is
  rescaled (affinely) to D's range (x3 for SIMS [-1, 1] -> MOSI [-3, 3]), so the unimodal
  scores, and the ratios built from them, are on the scale of D's labels.
- Adapters and decoders that came from stage 1 are frozen in stage 2 (``freeze_knowledge``);
  the encoders, and what started fresh, train. A tensor of any other shape than this run's
  (other branch sizes) is a KudaCheckpointError naming the dims on both sides.

Without ``knowledge_from`` (or with the run's own dataset) nothing here runs, and the cross-data
check refuses knowledge made from other data (training.checkpoints.check_knowledge_origin).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..data import FeatureSpec, read_features, text_encoder_vocab_size
from ..errors import KudaCheckpointError, KudaInputError
from .checkpoints import MODALITY_NAMES, load_knowledge_into, read_knowledge
from .distributed import file_lock
from .run_config import RunConfig
from .stage1 import check_text_data, ensure_knowledge, job_for_run, pretrain_command

logger = logging.getLogger("MMSA")

# parameters whose shape follows the data: name prefix -> which fact decides
DATA_SHAPED = {"proj.": "feature_dim", "pos": "seq_len"}


def knowledge_modalities(run: RunConfig) -> Tuple[str, ...]:
    """The modalities whose adapters and decoders come from stage 1 (and are frozen)."""
    if not run.model.use_knowledge:
        return ()
    if run.cross_dataset and run.train.knowledge_text == "scratch":
        return ("V", "A")
    return ("T", "V", "A")


def freeze_knowledge(kuda: nn.Module, modalities: Iterable[str]) -> None:
    """Freeze the adapters and decoder of each branch in ``modalities`` (those whose
    knowledge came from stage 1; text knowledge trained from scratch keeps training)."""
    kuda.freeze_knowledge(tuple(modalities))


# ---------------------------------------------------------------------- the source data
def source_info(run: RunConfig) -> dict:
    info = run.knowledge_source
    if not info or not info.get("feature_file"):
        raise KudaInputError(
            f"knowledge_from '{run.train.knowledge_from}' is set but the run's arguments do not say where "
            f"that dataset's features are (knowledge_source). Build the run with kuda_mmsa.mmsa.args."
            f"build_args, or pass --knowledge-feature-file PATH.")
    return dict(info)


def read_source(run: RunConfig, need_text: bool):
    """The source dataset's features, read and validated like a run's (FeatureSet)."""
    info = source_info(run)
    pretrained = run.model.pretrained
    hint = (f"knowledge_from '{info['dataset']}' reads its features from {info['feature_file']}: put the file "
            f"there (data root: --data-root; it comes from {info.get('download') or 'its download page'}) or "
            f"pass the file with --knowledge-feature-file PATH.")
    spec = FeatureSpec(path=Path(info["feature_file"]).expanduser(), use_bert=True,
                       vocab_size=text_encoder_vocab_size(pretrained) if need_text else None,
                       encoder_name=str(pretrained or ""), label_range=tuple(info["label_range"]),
                       require_unimodal_labels=bool(info.get("has_unimodal_labels")), missing_hint=hint)
    return read_features(spec)


def source_job(run: RunConfig, features, device=None, num_workers: int = 0):
    """The stage-1 job on the source dataset: this run's settings and text encoder, the
    source's data, dims and labels; its knowledge lives under <knowledge_dir>/<source>/."""
    info = source_info(run)
    src = run.with_(dataset_name=info["dataset"], knowledge_from=None, custom_feature=info["feature_file"],
                    feature_path=info["feature_file"], data_fingerprint=features.fingerprint,
                    feature_dims=[int(run.model.feature_dims[0])] + list(features.feature_dims[1:]),
                    seq_lens=list(features.seq_lens), label_range=list(info["label_range"]),
                    has_unimodal_labels=bool(info.get("has_unimodal_labels")),
                    pretrained_arg=run.pretrained_arg or run.model.pretrained)
    return job_for_run(src, device=device, num_workers=num_workers, command=pretrain_command(src))


# ---------------------------------------------------------------------- loading
def rescale_decoder(branch: nn.Module, source_range, target_range) -> bool:
    """Map the decoder's output from ``source_range`` to ``target_range`` (affine, exact: the
    decoder ends with a linear layer). Returns whether anything changed."""
    lo_s, hi_s = (float(x) for x in source_range)
    lo_t, hi_t = (float(x) for x in target_range)
    if (lo_s, hi_s) == (lo_t, hi_t):
        return False
    last = [m for m in branch.decoder.modules() if isinstance(m, nn.Linear)][-1]
    k = (hi_t - lo_t) / (hi_s - lo_s)
    with torch.no_grad():
        last.weight.mul_(k)
        last.bias.mul_(k).add_(lo_t - lo_s * k)
    return True


def transfer_state(branch: nn.Module, state: Mapping[str, torch.Tensor], modality: str, path,
                   source: Mapping[str, Any], target: Mapping[str, Any]) -> Dict[str, List[str]]:
    """Load the tensors of a stage-1 branch ``state`` that transfer (module docstring) into
    ``branch``; returns {"loaded": names, "fresh": names}. ``source`` / ``target``: the facts
    {"dataset", "feature_dim", "seq_len", "encoder"} on each side."""
    own = branch.state_dict()
    same = {prefix: source.get(fact) == target.get(fact) for prefix, fact in DATA_SHAPED.items()}
    loaded, fresh, bad = {}, [], []
    for name, tensor in own.items():
        prefix = next((p for p in DATA_SHAPED if name.startswith(p)), None)
        if modality != "T" and prefix is not None and not same[prefix]:
            fresh.append(name)
            continue
        if name not in state:
            bad.append(f"{name} is missing there")
        elif tuple(state[name].shape) != tuple(tensor.shape):
            bad.append(f"{name} is {list(state[name].shape)} there and {list(tensor.shape)} here")
        else:
            loaded[name] = state[name]
    bad += [f"{name} there has no place here" for name in state if name not in own]
    if bad:
        what = MODALITY_NAMES[modality]
        def facts(side):
            if modality == "T":
                enc = side.get("encoder") or {}
                return (f"text encoder {enc.get('name')!r} (hidden {enc.get('hidden_size')}, vocabulary "
                        f"{enc.get('vocab_size')}, {enc.get('layers')} layers)")
            return f"feature dim {side.get('feature_dim')}, padded length {side.get('seq_len')}"
        raise KudaCheckpointError(
            f"The {what} knowledge of dataset '{source.get('dataset')}' ({path}) cannot be used for "
            f"'{target.get('dataset')}': {'; '.join(bad[:3])}{' and more' if len(bad) > 3 else ''}. Source: "
            f"{facts(source)}; this run: {facts(target)}. Only the input projection and the position embeddings "
            f"may differ (they train); the adapters, decoder and encoder need the same sizes (av_hidden_size, "
            f"adapter and decoder settings) and, for text, the same encoder. Run stage 1 for these settings or drop "
            f"knowledge_from.")
    branch.load_state_dict(loaded, strict=False)
    return {"loaded": sorted(loaded), "fresh": sorted(fresh)}


def load_cross_dataset_knowledge(kuda: nn.Module, run: RunConfig, datasets=None, device=None,
                                 num_workers: int = 0) -> Tuple[str, Dict[str, Optional[str]], Dict[str, dict]]:
    """Knowledge from dataset ``knowledge_from`` into ``kuda`` (stage 1 on it first where it is
    missing and ``auto_pretrain`` is on). Returns (where it came from, {modality: checkpoint
    uid or None}, {modality: {"source", "path", "loaded", "fresh", "rescaled"}})."""
    info = source_info(run)
    source = info["dataset"]
    text_mode = run.train.knowledge_text
    auto = bool(run.train.auto_pretrain)
    from_source = ["V", "A"] + (["T"] if text_mode == "source" else [])
    features = read_source(run, need_text="T" in from_source)
    job = source_job(run, features, device=device, num_workers=num_workers)
    if "T" in from_source:
        checked = check_text_data(features.splits, run.model.pretrained, f"the feature file '{info['feature_file']}' of "
                        f"'{source}' (knowledge_from)",
                        hint=f"With knowledge_from, the text knowledge is trained on '{source}' with this run's "
                             f"text encoder; set knowledge_text: own (this dataset's own text knowledge) or "
                             f"scratch (a -c config key, or --knowledge-text of reproduce) when '{source}' is tokenised for another "
                             f"encoder.")
        if checked is None and info.get("language") and info.get("language") != run.language:
            raise KudaInputError(
                f"knowledge_text is 'source', so the text knowledge would be trained on '{source}' "
                f"({info.get('language')}) with this run's text encoder {run.model.pretrained!r}, which has no "
                f"tokenizer files here to check that '{source}''s token ids are its own, and '{run.dataset_name}' "
                f"is in another language ({run.language}). Set knowledge_text: own (this dataset's own text "
                f"knowledge) or scratch, or pass a --pretrained folder that holds the tokenizer.")
    with file_lock(job.paths["V"].parent):     # parallel cells share the source's knowledge folder
        paths = ensure_knowledge(job, features.splits, auto_pretrain=auto, allow_other_data=False,
                                 modalities=from_source)
    config = kuda.config
    target_range = run.label_range
    report, uids, where = {}, {}, [f"{', '.join(from_source)} from {job.paths['V'].parent}"]
    for m in from_source:
        ckpt = read_knowledge(paths[m], m, job.command)
        meta = ckpt.get("meta", {})
        src = {"dataset": source, "feature_dim": meta.get("feature_dim"), "seq_len": meta.get("seq_len"),
               "encoder": meta.get("encoder")}
        tgt = {"dataset": run.dataset_name, "encoder": job.origin["encoder"],
               "feature_dim": config.feature_dim(m) if m != "T" else meta.get("feature_dim"),
               "seq_len": config.seq_len(m) if m != "T" else meta.get("seq_len")}
        branch = kuda.branches[m]
        moved = transfer_state(branch, ckpt["state_dict"], m, paths[m], src, tgt)
        rescaled = bool(target_range) and rescale_decoder(branch, info["label_range"], target_range)
        report[m] = dict(moved, source=source, path=str(paths[m]), rescaled=rescaled)
        uids[m] = meta.get("uid")
        note = (f"; trains from scratch: {', '.join(moved['fresh'])} (feature dim {src['feature_dim']} / length "
                f"{src['seq_len']} there, {tgt['feature_dim']} / {tgt['seq_len']} here)" if moved["fresh"] else "")
        scale = (f"; decoder rescaled from {list(info['label_range'])} to {list(target_range)}" if rescaled else "")
        logger.info(f"Knowledge from '{source}' ({MODALITY_NAMES[m]}): {len(moved['loaded'])} tensors loaded{note}{scale}.")
    if text_mode == "own":
        own = job_for_run(run.with_(knowledge_from=None), device=device, num_workers=num_workers)
        with file_lock(own.paths["T"].parent):
            path = ensure_knowledge(own, datasets, auto_pretrain=auto, allow_other_data=False, modalities=["T"])["T"]
        ckpt = load_knowledge_into(kuda.branches["T"], path, "T", own.command)
        uids["T"] = ckpt["meta"].get("uid")
        report["T"] = {"source": run.dataset_name, "path": str(path), "rescaled": False,
                       "loaded": sorted(kuda.branches["T"].state_dict()), "fresh": []}
        where.append(f"T from {path.parent} (this dataset's own)")
        logger.info(f"Knowledge for text: this dataset's own ({path}); knowledge_text is 'own'.")
    elif text_mode == "scratch":
        uids["T"] = None
        report["T"] = {"source": None, "path": None, "rescaled": False, "loaded": [],
                       "fresh": sorted(kuda.branches["T"].state_dict())}
        logger.info("Knowledge for text: none (knowledge_text 'scratch'): the text adapters and decoder train.")
    return "; ".join(where), uids, report


__all__ = ["DATA_SHAPED", "knowledge_modalities", "freeze_knowledge", "read_source", "source_job",
           "rescale_decoder", "transfer_state", "load_cross_dataset_knowledge"]
