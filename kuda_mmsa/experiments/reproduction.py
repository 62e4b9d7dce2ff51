"""Reproducing the paper's table: per-dataset plans (encoders, knowledge, feature files), the
probe before the long runs and the ablation runs (``kuda-mmsa reproduce``); what it prints and
writes is in reproduction_report, the published numbers in published."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..config.schema import KNOWLEDGE_TEXT
from ..errors import KudaInputError
from ..files import output_folder
from ..mmsa.datasets import DATASETS, canonical_name, dataset_choices, get_facts
from .ablation import finished_cells, run_ablation
from .reproduction_report import _default_file, describe_plan, write_report
from .variants import VARIANTS, Variant, register_variant

# numpy, torch, MMSA and the model are imported inside the functions that use them: `-h` and
# the plan answer without loading them


DEFAULT_DATASETS = ("sims", "simsv2", "mosi", "mosei")


DEFAULT_SEEDS = (1111, 1112, 1113, 1114, 1115)        # MMSA's default seeds (MMSA_run)


KUDA_VARIANTS = ("kuda", "kuda_static", "kuda_no_knowledge", "kuda_no_adapters", "kuda_concat", "kuda_add",
                 "kuda_late")


PEERS = ("lf_dnn", "tfn", "lmf", "mult", "misa", "self_mm")


DEFAULT_VARIANTS = KUDA_VARIANTS + PEERS


DEFAULT_KNOWLEDGE_FROM = "simsv2"


# ---------------------------------------------------------------------- the plan
@dataclass
class DatasetPlan:
    dataset: str
    feature_file: Optional[str]
    encoder: Optional[str]
    overrides: dict
    todo: List[Tuple[str, int]]
    done: List[Tuple[str, int]]
    knowledge: List[dict] = field(default_factory=list)   # {"dataset", "folder", "modalities", "present"}
    seconds_per_run: Optional[float] = None               # KuDA, from the probe
    stage1_seconds: Optional[float] = None
    notes: List[str] = field(default_factory=list)


def parse_feature_files(items) -> Dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, path = str(item).partition("=")
        name = canonical_name(name.strip())
        if not sep or not path.strip():
            raise KudaInputError(f"--feature-file-for takes DATASET=PATH (e.g. mosi=/data/mosi.pkl); got {item!r}.")
        if name not in DATASETS:
            raise KudaInputError(f"--feature-file-for {item!r}: '{name}' is not a dataset; choices: "
                                 f"{', '.join(dataset_choices())}.")
        out[name] = str(Path(path.strip()).expanduser())
    return out


def encoder_for(dataset: str, zh: Optional[str], en: Optional[str]) -> Optional[str]:
    facts = DATASETS[canonical_name(dataset)]
    return zh if facts["language"] == "cn" else en


def dataset_overrides(dataset: str, zh, en, knowledge_from, knowledge_text, feature_files, base: dict) -> dict:
    """The config layer of every KuDA cell of ``dataset`` (the paper's protocol for knowledge)."""
    cfg = dict(base)
    encoder = encoder_for(dataset, zh, en)
    if encoder:
        cfg["pretrained"] = encoder
    source = canonical_name(knowledge_from) if knowledge_from and knowledge_from != "none" else None
    if source and source != dataset and not DATASETS[dataset]["has_unimodal_labels"]:
        cfg["knowledge_from"] = source
        mode = knowledge_text
        if mode == "auto":
            same = (encoder_for(source, zh, en) or DATASETS[source]["default_bert"]) == \
                   (encoder or DATASETS[dataset]["default_bert"])
            mode = "source" if same else "own"
        cfg["knowledge_text"] = mode
        if source in feature_files:
            cfg["knowledge_feature_file"] = feature_files[source]
    return cfg


def _kuda_args(dataset, config_file, cfg, feature_file):
    from ..mmsa.args import build_args

    args, _ = build_args("kuda", dataset, config_file, cfg or None, "reproduce", custom_feature=feature_file)
    return args


def knowledge_folders(args) -> List[dict]:
    """The stage-1 folders a KuDA run with ``args`` needs (no data is read)."""
    from ..training.run_config import RunConfig
    from ..training.stage1 import job_for_run

    run = RunConfig.from_args(args)
    if not run.model.use_knowledge:
        return []
    out = []
    if run.cross_dataset:
        info = run.knowledge_source
        src = run.with_(dataset_name=info["dataset"], knowledge_from=None,
                        has_unimodal_labels=bool(info["has_unimodal_labels"]))
        mods = ["V", "A"] + (["T"] if run.train.knowledge_text == "source" else [])
        out.append((info["dataset"], job_for_run(src).paths, mods))
        if run.train.knowledge_text == "own":
            out.append((run.dataset_name, job_for_run(run.with_(knowledge_from=None)).paths, ["T"]))
    else:
        out.append((run.dataset_name, job_for_run(run).paths, ["T", "V", "A"]))
    return [{"dataset": d, "folder": str(paths["T"].parent), "modalities": mods,
             "present": all(paths[m].is_file() for m in mods)} for d, paths, mods in out]


def _shapes(dataset: str, feature_file: Optional[str]) -> dict:
    """seq_lens, feature_dims (MMSA order T, A, V) and split sizes: from the file when one is given
    (or the demo's), else from the dataset table."""
    import numpy as np

    from ..data.validate import read_pickle

    if feature_file:
        data = read_pickle(feature_file)
        tr = data["train"]
        return {"seq_lens": [int(np.asarray(tr["text_bert"]).shape[2]), int(np.asarray(tr["audio"]).shape[1]),
                             int(np.asarray(tr["vision"]).shape[1])],
                "feature_dims": [0, int(np.asarray(tr["audio"]).shape[2]), int(np.asarray(tr["vision"]).shape[2])],
                "splits": {s: int(len(data[s]["regression_labels"])) for s in ("train", "valid", "test") if s in data}}
    facts = get_facts(dataset)
    return {"seq_lens": list(facts["seq_lens"]), "feature_dims": list(facts["feature_dims"]),
            "splits": dict(facts["splits"] or {})}


def probe(args, shapes: dict, knowledge: List[dict], source_shapes: Optional[dict] = None, steps: int = 1):
    """(seconds per KuDA run, seconds of the missing stage 1) on this machine, from timing one
    training step on synthetic inputs of the data's shapes; (None, None) when the model cannot be
    built here (e.g. the text encoder is not available offline)."""
    import torch

    from ..model import KuDAConfig, build_branch, build_kuda
    from ..model.encoders import local_encoder_config

    if local_encoder_config(args.get("pretrained")) is None:     # not available offline: never download
        return None, None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    a = dict(args, seq_lens=shapes["seq_lens"],
             feature_dims=[int(args["feature_dims"][0])] + shapes["feature_dims"][1:])
    b = int(a["batch_size"])

    def batch(dims, lens, vocab):
        g = torch.Generator().manual_seed(0)
        lt, la, lv = lens
        ids = torch.randint(5, max(vocab, 6), (b, lt), generator=g)
        text = torch.stack([ids.float(), torch.ones(b, lt), torch.zeros(b, lt)], 1).to(device)
        audio = torch.randn(b, la, dims[1], generator=g).to(device)
        vision = torch.randn(b, lv, dims[2], generator=g).to(device)
        full = lambda n: torch.full((b,), n, dtype=torch.long, device=device)  # noqa: E731
        return dict(text=text, audio=audio, vision=vision, audio_lengths=full(la), vision_lengths=full(lv))

    def timed(fn):
        fn()                                  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps

    try:
        with torch.random.fork_rng(devices=[]):
            model = build_kuda(a).to(device).train()
            inputs = batch(a["feature_dims"], a["seq_lens"], model.branches["T"].vocab_size)

            def step():
                model.zero_grad(set_to_none=True)
                out = model(**inputs)
                (out["M"].pow(2).mean() + out["ce"]).backward()

            per_step = timed(step)
            splits = shapes["splits"]
            train = math.ceil(splits.get("train", b) / b)
            evals = math.ceil((splits.get("valid", 0) + splits.get("test", 0)) / b)
            run = int(a["epochs"]) * (train * per_step + evals * per_step / 3)
            stage1 = 0.0
            for k in knowledge:
                if k["present"]:
                    continue
                s_shapes = source_shapes if (source_shapes and k["dataset"] != args["dataset_name"]) else shapes
                cfg = KuDAConfig.from_dict(dict(a, seq_lens=s_shapes["seq_lens"],
                                                feature_dims=[a["feature_dims"][0]] + s_shapes["feature_dims"][1:]))
                n_train = math.ceil(s_shapes["splits"].get("train", b) / int(a["pretrain"]["batch_size"]))
                sb = batch([0] + s_shapes["feature_dims"][1:], s_shapes["seq_lens"], model.branches["T"].vocab_size)
                for m in k["modalities"]:
                    branch = build_branch(cfg, m, model.branches["T"].bert if m == "T" else None).to(device).train()
                    x = {"T": (sb["text"],), "V": (sb["vision"], sb["vision_lengths"]),
                         "A": (sb["audio"], sb["audio_lengths"])}[m]

                    def bstep(branch=branch, x=x):
                        branch.zero_grad(set_to_none=True)
                        branch(*x)[1].pow(2).mean().backward()

                    stage1 += int(a["pretrain"]["epochs"][m]) * n_train * timed(bstep) * 4 / 3
            return run, stage1
    except Exception:  # the estimate must never stop the plan (missing encoder, no memory, ...)
        return None, None


def make_plan(datasets, seeds, variants, out: Path, zh=None, en=None, knowledge_from=DEFAULT_KNOWLEDGE_FROM,
              knowledge_text="auto", feature_files=None, config_file=None, base: Optional[dict] = None,
              timing: bool = True) -> List[DatasetPlan]:
    feature_files = dict(feature_files or {})
    plans = []
    for d in datasets:
        d = canonical_name(d)
        cfg = dataset_overrides(d, zh, en, knowledge_from, knowledge_text, feature_files, base or {})
        ff = feature_files.get(d)
        cells = [(v, int(s)) for v in variants for s in seeds]
        try:        # a cell counts as finished only with the fingerprint it would run with now
            with peer_encoders(d, cfg.get("pretrained"), variants):
                finished, rerun = finished_cells(out / d, cells, d, ff, config_file, cfg or None)
        except KudaInputError:      # not ready (e.g. a missing file): the notes below say why
            finished, rerun = [], {}
        plan = DatasetPlan(d, ff, cfg.get("pretrained"), cfg, [c for c in cells if c not in finished],
                           [c for c in cells if c in finished])
        plan.notes += [f"{v} seed {s} runs again: {why}" for (v, s), why in rerun.items()]
        kuda = [v for v in variants if VARIANTS[v].is_kuda]
        folders = {}
        try:
            for v in kuda:
                args = _kuda_args(d, config_file, dict(cfg, **VARIANTS[v].config), ff)
                for k in knowledge_folders(args):
                    folders.setdefault(k["folder"], dict(k, variants=[]))["variants"].append(v)
            plan.knowledge = list(folders.values())
            if timing and kuda:
                args = _kuda_args(d, config_file, cfg, ff)
                src = cfg.get("knowledge_from")
                shapes = _shapes(d, ff or (args["featurePath"] if d == "demo" else None))
                source_shapes = (_shapes(src, cfg.get("knowledge_feature_file")
                                         or (args["knowledge_source"]["feature_file"] if src == "demo" else None))
                                 if src else None)
                plan.seconds_per_run, plan.stage1_seconds = probe(args, shapes, plan.knowledge, source_shapes)
                if plan.seconds_per_run is None:
                    plan.notes.append(f"no timing probe: the text encoder {args.get('pretrained')!r} could not be "
                                      f"loaded offline (pass a local folder)")
        except KudaInputError as e:
            plan.notes.append(f"not ready: {e}")
        for label, path in (("features", ff or _default_file(d, cfg)),
                            ("knowledge source features", cfg.get("knowledge_feature_file"))):
            if path and not Path(path).expanduser().is_file():
                plan.notes.append(f"{label} not found: {path}")
        plans.append(plan)
    return plans


# ---------------------------------------------------------------------- running
def _stock_takes_pretrained(model: str, dataset: str) -> bool:
    from ..mmsa.args import build_args

    try:
        args, _ = build_args(model, dataset)
    except Exception:
        return False
    return "pretrained" in args and bool(args.get("use_bert", False) or args.get("pretrained"))


@contextmanager
def peer_encoders(dataset: str, encoder: Optional[str], variants):
    """The MMSA peers that use BERT get this dataset's text encoder (their registry entries,
    restored afterwards)."""
    saved = {}
    if encoder:
        for name in variants:
            v = VARIANTS[name]
            if not v.is_kuda and _stock_takes_pretrained(v.model, dataset):
                saved[name] = v
                register_variant(Variant(v.name, v.model, dict(v.config, pretrained=encoder), v.description))
    try:
        yield
    finally:
        for v in saved.values():
            register_variant(v)


def reproduce(datasets=DEFAULT_DATASETS, seeds=DEFAULT_SEEDS, variants=DEFAULT_VARIANTS, out=None,
              zh=None, en=None, knowledge_from=DEFAULT_KNOWLEDGE_FROM, knowledge_text="auto", feature_files=None,
              config_file=None, base: Optional[dict] = None, dry_run=False, num_workers: int = 0,
              verbose_level: int = 1, executor=None, echo=print, command: str = "") -> dict:
    out = output_folder(out, "reproduction", "")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise KudaInputError(f"Unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}.")
    if knowledge_text != "auto" and knowledge_text not in KNOWLEDGE_TEXT:
        raise KudaInputError(f"--knowledge-text must be auto or one of {', '.join(KNOWLEDGE_TEXT)}; got {knowledge_text!r}.")
    datasets = list(dict.fromkeys(canonical_name(d) for d in datasets))
    plans = make_plan(datasets, seeds, variants, out, zh, en, knowledge_from, knowledge_text, feature_files,
                      config_file, base, timing=dry_run)
    if dry_run:
        text = describe_plan(plans, seeds, variants)
        echo(text)
        return {"plans": plans, "text": text}
    ran, failed = [], []
    for p in plans:
        echo(f"[reproduce] {p.dataset}: {len(p.todo)} cell(s) to run, {len(p.done)} finished")
        with peer_encoders(p.dataset, p.encoder, variants):
            res = run_ablation(p.dataset, seeds, variants, out / p.dataset, feature_file=p.feature_file,
                               config_file=config_file, num_workers=num_workers, verbose_level=verbose_level,
                               config=p.overrides or None, echo=echo, executor=executor)
        ran += [(p.dataset, *c) for c in res["ran"]]
        failed += [(p.dataset, *c) for c in res["failed"]]
    md, csv_path = write_report(out, plans, seeds, variants, command)
    return {"plans": plans, "markdown": md, "csv": csv_path, "ran": ran, "failed": failed}
