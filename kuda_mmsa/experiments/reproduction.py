"""Reproducing the paper's table: per-dataset plans (encoders, knowledge, feature files), the
probe before the long runs, the ablation runs and the report against the published numbers
(``kuda-mmsa reproduce``)."""

from __future__ import annotations

import csv
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..config.schema import KNOWLEDGE_TEXT
from ..errors import KudaInputError
from ..files import atomic_path, default_data_root, output_folder
from ..mmsa.datasets import DATASETS, canonical_name, dataset_choices, get_facts
from .ablation import finished_cells, read_rows, run_ablation
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


# ---------------------------------------------------------------------- published numbers
SOURCES = {
    "MMSA": "thuiar/MMSA, results/result-stat.md (\"Baseline results\", linked from MMSA's README section 4 "
            "'Results'), Regression tables, unaligned data settings; https://github.com/thuiar/MMSA/blob/master/"
            "results/result-stat.md. Published in percent (MAE x 100 too); shown here divided by 100.",
}


# The rows of that file's Regression tables for the peers run here, copied as published.
_MMSA_REGRESSION = {
    "mosi": ("Has0_acc_2 Has0_F1_score Non0_acc_2 Non0_F1_score Mult_acc_5 Mult_acc_7 MAE Corr", """
        lf_dnn |77.52 |77.58 |78.63 |78.63 |38.05 |34.52 |95.48 |65.84
        tfn |77.99 |78.03 |79.08 |79.06 |39.39 |34.46 |94.73 |67.33
        lmf |77.9 |78.0 |79.18 |79.2 |38.13 |33.82 |95.04 |65.1
        mult |79.71 |79.79 |80.98 |81.0 |42.68 |36.91 |87.99 |70.22
        misa |81.84 |81.85 |83.54 |83.49 |47.08 |41.37 |77.65 |77.81
        self_mm |83.0 |83.05 |84.82 |84.81 |52.66 |46.07 |72.44 |78.92"""),
    "mosei": ("Has0_acc_2 Has0_F1_score Non0_acc_2 Non0_F1_score Mult_acc_5 Mult_acc_7 MAE Corr", """
        lf_dnn |80.6 |80.35 |82.74 |82.95 |51.97 |50.83 |58.02 |70.87
        tfn |78.5 |78.05 |81.89 |82.04 |53.1 |51.6 |57.26 |71.41
        lmf |80.54 |80.14 |83.48 |83.6 |52.99 |51.59 |57.57 |71.69
        mult |81.15 |80.73 |84.63 |84.73 |54.18 |52.84 |55.93 |73.31
        misa |80.67 |80.12 |84.67 |84.68 |53.63 |52.05 |55.75 |75.15
        self_mm |81.94 |81.62 |84.88 |85.02 |56.06 |54.4 |53.46 |75.87"""),
    "sims": ("Mult_acc_2 Mult_acc_3 Mult_acc_5 F1_score MAE Corr", """
        lf_dnn |77.02 |64.33 |39.74 |77.27 |44.63 |55.51
        tfn |78.38 |65.12 |39.3 |78.62 |43.22 |59.1
        lmf |77.77 |64.68 |40.53 |77.88 |44.12 |57.59
        mult |78.56 |64.77 |37.94 |79.66 |45.32 |56.41
        self_mm |80.04 |65.47 |41.53 |80.44 |42.50 |59.52"""),
}


def _published_table() -> Dict[Tuple[str, str, str], Tuple[float, str]]:
    out = {}
    for dataset, (header, body) in _MMSA_REGRESSION.items():
        metrics = header.split()
        for line in body.strip().splitlines():
            cells = [c.strip() for c in line.split("|")]
            for metric, value in zip(metrics, cells[1:]):
                out[(dataset, cells[0], metric)] = (float(value) / 100.0, "MMSA")
    return out


PUBLISHED = _published_table()


def published(dataset: str, variant: str, metric: str) -> Optional[Tuple[float, str]]:
    return PUBLISHED.get((canonical_name(dataset), variant, metric))


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


def _default_file(dataset, cfg) -> Optional[str]:
    rel = DATASETS[dataset]["featurePath"]
    if rel is None:
        return None
    root = Path(cfg["data_root"]).expanduser() if cfg.get("data_root") else default_data_root()
    return str(root / rel)


def _fmt_seconds(s: Optional[float]) -> str:
    if s is None:
        return "unknown (not probed)"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def describe_plan(plans: List[DatasetPlan], seeds, variants) -> str:
    lines = [f"Reproduction plan: {len(plans)} dataset(s) x {len(variants)} variant(s) x {len(seeds)} seed(s) "
             f"(seeds {', '.join(map(str, seeds))})"]
    total_runs = total_known = 0
    total_time = 0.0
    for p in plans:
        kinds = {v: VARIANTS[v] for v in variants}
        lines.append(f"\n[{p.dataset}] features: {p.feature_file or _default_file(p.dataset, p.overrides) or 'generated'}; "
                     f"text encoder: {p.encoder or DATASETS[p.dataset]['default_bert']}")
        if p.overrides.get("knowledge_from"):
            lines.append(f"  knowledge: V, A from '{p.overrides['knowledge_from']}' (paper's protocol: "
                         f"{p.dataset} has no unimodal labels); text: {p.overrides['knowledge_text']}")
        for k in p.knowledge:
            lines.append(f"  stage 1 on {k['dataset']} ({' '.join(k['modalities'])}) for {', '.join(k['variants'])}: "
                         f"{k['folder']} [{'present' if k['present'] else 'to run, inside the first cell that needs it'}]")
        todo_kuda = sum(1 for v, _ in p.todo if kinds[v].is_kuda)
        lines.append(f"  cells: {len(p.todo)} to run ({todo_kuda} KuDA, {len(p.todo) - todo_kuda} MMSA peers), "
                     f"{len(p.done)} already finished")
        lines.append(f"  estimated time per KuDA run: {_fmt_seconds(p.seconds_per_run)}"
                     + (f"; missing stage 1: {_fmt_seconds(p.stage1_seconds)}" if p.stage1_seconds else "")
                     + ("; MMSA peers not probed" if len(p.todo) > todo_kuda else ""))
        for note in p.notes:
            lines.append(f"  ! {note}")
        total_runs += len(p.todo)
        if p.seconds_per_run is not None:
            total_known += todo_kuda
            total_time += todo_kuda * p.seconds_per_run + (p.stage1_seconds or 0.0)
    lines.append(f"\nRuns to do: {total_runs} (stage 2 cells; stage 1 runs inside them where missing).")
    if total_known:
        lines.append(f"Estimated time of the {total_known} probed KuDA run(s) with their stage 1: "
                     f"{_fmt_seconds(total_time)} on this machine (one training step timed on synthetic inputs, "
                     f"times the steps at the configured epochs; early stopping makes runs shorter).")
    else:
        lines.append("No run could be probed here (see the notes above): no time estimate.")
    return "\n".join(lines)


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


def _summary(vals: List[float]) -> str:
    import numpy as np

    return f"{np.mean(vals):.4f} ± {np.std(vals):.4f}"


def write_report(out: Path, plans: List[DatasetPlan], seeds, variants, command: str = "") -> Tuple[Path, Path]:
    """reproduction.md (ours beside published numbers with sources) and reproduction.csv."""
    import numpy as np

    md, all_rows, used = [], [], set()
    md.append("# Reproduction\n")
    if command:
        md.append(f"Command: `{command}`\n")
    md.append(f"Seeds {', '.join(map(str, seeds))}; test split; MMSA's metrics (MetricsTop) at the epoch chosen on "
              f"the validation split; ours = mean ± std (population, as MMSA) over the seeds that finished. "
              f"`published` is a number we can cite, with its source below; Δ = ours − published. A cell without a "
              f"source is empty. The KuDA paper's own numbers are not included: no source was transcribed.\n")
    for p in plans:
        rows = [r for r in read_rows(out / p.dataset / "ablation.csv")
                if r["variant"] in variants and int(r["seed"]) in {int(s) for s in seeds}]
        for r in rows:
            all_rows.append({"dataset": p.dataset, **r})
        md.append(f"\n## {p.dataset}\n")
        md.append(f"Features: {p.feature_file or _default_file(p.dataset, p.overrides) or 'generated'}; text encoder: "
                  f"{p.encoder or DATASETS[p.dataset]['default_bert']}"
                  + (f"; knowledge from {p.overrides['knowledge_from']} (text: {p.overrides['knowledge_text']})"
                     if p.overrides.get("knowledge_from") else "; knowledge from its own unimodal labels") + ".\n")
        if p.feature_file:
            md.append(f"Note: these features were given with --feature-file-for; published numbers are for "
                      f"{p.dataset}'s own MMSA features, so the differences say nothing unless this file is that one.\n")
        metrics = []
        for r in rows:
            metrics += [k for k in r if k not in ("variant", "model", "seed", "seconds", "DomFrac", "Loss", "cell")
                        and k not in metrics]
        md.append("| variant | metric | ours | seeds | published | Δ | source |")
        md.append("|---|---|---|---|---|---|---|")
        for v in variants:
            mine = [r for r in rows if r["variant"] == v]
            if not mine:
                continue
            for metric in metrics:
                vals = [float(r[metric]) for r in mine if r.get(metric) not in (None, "")]
                if not vals:
                    continue
                pub = published(p.dataset, v, metric)
                if pub is not None:
                    used.add(pub[1])
                cells = [v, metric, _summary(vals), str(len(vals)),
                         f"{pub[0]:.4f}" if pub else "", f"{np.mean(vals) - pub[0]:+.4f}" if pub else "",
                         f"[{pub[1]}]" if pub else ""]
                md.append("| " + " | ".join(cells) + " |")
    md.append("\n## Sources\n")
    if used:
        md += [f"- [{k}] {SOURCES[k]}" for k in sorted(used)]
    else:
        md.append("- none of the rows above has a published number")
    out.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = out / "reproduction.md", out / "reproduction.csv"
    with atomic_path(md_path) as tmp:
        Path(tmp).write_text("\n".join(md) + "\n", encoding="utf-8")
    cols = ["dataset", "variant", "model", "seed"]
    for r in all_rows:
        cols += [k for k in r if k not in cols]
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, restval="")
        w.writeheader()
        w.writerows(all_rows)
    return md_path, csv_path


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
