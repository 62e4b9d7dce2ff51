"""The ablation runner: KuDA variants and MMSA peers, each (variant, seed) an MMSA run on the same
splits, resumable cell by cell, mean ± std per variant (``kuda-mmsa ablate`` is its command line)."""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, List, Optional

from .. import __version__
from ..data.kinds import PROTOCOLS
from ..errors import KudaInputError
from ..files import atomic_write_text, check_csv_target, output_folder, update_csv
from ..mmsa.register import register
from ..sweeps.cells import Cell, CellResult
from ..sweeps.executors import describe_result, run_cells
from .explanation import collect
from .robustness import ablation_robustness
from .variants import DEFAULT_VARIANTS, VARIANTS, Variant

if TYPE_CHECKING:
    from ..sweeps.executors import Executor


logger = logging.getLogger("MMSA")


DEFAULT_SEEDS = (1111, 1112, 1113)


ID_COLUMNS = ["variant", "model", "seed"]


EXTRA_COLUMNS = ["DomFrac", "seconds", "cell"]   # cell: the settings fingerprint's id


# ---------------------------------------------------------------------- CSV and table
def read_rows(csv_path) -> List[dict]:
    p = Path(csv_path)
    if not p.is_file():
        return []
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def _columns(rows: List[dict]) -> List[str]:
    cols = list(ID_COLUMNS)
    for r in rows:
        cols += [k for k in r if k not in cols and k not in EXTRA_COLUMNS]
    return cols + [c for c in EXTRA_COLUMNS if any(c in r for r in rows)]


def write_rows(rows: List[dict], csv_path) -> Path:
    """Add or replace ``rows`` (by variant and seed) in the CSV, under its lock and in one
    rename: rows other processes wrote meanwhile are kept."""
    new = {(str(r["variant"]), str(r["seed"])): {k: "" if v is None else str(v) for k, v in r.items()} for r in rows}

    def merge(header, old):
        kept = [dict(zip(header, r)) for r in old] if header else []
        kept = [r for r in kept if (r.get("variant"), r.get("seed")) not in new] + list(new.values())
        cols = _columns(kept)
        return cols, [[r.get(c, "") for c in cols] for r in kept]

    return update_csv(csv_path, merge)


# ---------------------------------------------------------------------- what defines a cell
_DIGESTS: dict = {}


def file_digest(path) -> Optional[str]:
    """sha1 of a file's bytes (cached per path, size and modification time); None if absent."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError:
        return None
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha1()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(2 ** 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


# Shared flags that also set a stock MMSA model's own key, when its MMSA entry has it
# (--pretrained: the text encoder of Self-MM, MISA, ...).
SHARED_MODEL_KEYS = ("pretrained",)


@functools.lru_cache(maxsize=None)
def _stock_model_keys(model: str, dataset: str) -> frozenset:
    from ..mmsa.args import build_args

    register()
    return frozenset(build_args(model, dataset)[0])


def cell_config(variant: Variant, config: Optional[dict], dataset: str) -> dict:
    """The config layer a cell runs with: the sweep's overrides, then the variant's. A stock
    MMSA model takes the run keys and the shared flags its own config has (a user who names
    the text encoder expects every variant that has one to use it)."""
    from ..mmsa.args import RUN_KEYS

    cfg = dict(config or {})
    if not variant.is_kuda:   # KuDA's own keys mean nothing to MMSA's models
        takes = _stock_model_keys(variant.model, dataset) if any(k in cfg for k in SHARED_MODEL_KEYS) else ()
        cfg = {k: v for k, v in cfg.items() if k in RUN_KEYS or (k in SHARED_MODEL_KEYS and k in takes)}
    cfg.update(variant.config)
    return cfg


def cell_fingerprint(variant: Variant, dataset: str, feature_file=None, config_file=None,
                     config: Optional[dict] = None) -> dict:
    """Everything that defines a cell's result apart from its seed: the effective config of
    its model, the feature file's content, the text encoder and the package version."""
    from ..mmsa.args import RUN_KEYS, build_args, plain_args
    from ..model.encoders import text_encoder_info
    from ..training.checkpoints import plain
    from ..mmsa.run_files import PLACE_KEYS

    register()
    args, _ = build_args(variant.model, dataset, config_file if variant.is_kuda else None,
                         cell_config(variant, config, dataset) or None, f"ablation variant {variant.name}",
                         custom_feature=feature_file)
    settings = {k: v for k, v in plain_args(args).items() if k not in PLACE_KEYS and k not in RUN_KEYS}
    data = args.get("featurePath")
    encoder = args.get("pretrained")
    return plain({"variant": variant.name, "model": variant.model, "dataset": dataset, "config": settings,
                  "data": {"file": Path(str(data)).name if data else None,
                           "sha1": file_digest(data) if data else None},
                  "encoder": text_encoder_info(encoder) if encoder else None, "version": __version__})


def fingerprint_id(fingerprint: dict) -> str:
    return hashlib.sha1(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]


def _fingerprint_file(out: Path, name: str, seed: int) -> Path:
    return out / "runs" / name / f"seed{seed}" / "fingerprint.json"


def finished_cells(out: Path, cells, dataset: str, feature_file=None, config_file=None,
                   config: Optional[dict] = None):
    """(finished, rerun): the (variant, seed) cells of ``cells`` that ablation.csv holds with
    today's fingerprint, and {cell: why it must run again} for those it holds with another."""
    from ..training.checkpoints import describe_differences

    rows = {(r["variant"], str(r["seed"])): r for r in read_rows(Path(out) / "ablation.csv")}
    prints, finished, rerun = {}, [], {}
    for name, seed in cells:
        row = rows.get((name, str(seed)))
        if row is None:
            continue
        if name not in prints:
            prints[name] = cell_fingerprint(VARIANTS[name], dataset, feature_file, config_file, config)
        now = prints[name]
        if row.get("cell") == fingerprint_id(now):
            finished.append((name, int(seed)))
            continue
        try:
            old = json.loads(_fingerprint_file(Path(out), name, seed).read_text())
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict):
            rerun[(name, int(seed))] = f"settings changed ({describe_differences(old, now)})"
        else:
            rerun[(name, int(seed))] = "its row has no settings fingerprint to compare (written by an older version)"
    return finished, rerun


def _record_cell(out: Path, name: str, seed: int, fingerprint: dict) -> None:
    atomic_write_text(_fingerprint_file(out, name, seed), json.dumps(fingerprint, indent=1))


def _num(x) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def summarize(rows: List[dict], variants: Optional[Iterable[str]] = None, group: str = "variant") -> str:
    """Markdown table: one row per variant, mean ± std (population std, as MMSA) over seeds."""
    import numpy as np

    order = list(variants) if variants else list(dict.fromkeys(r[group] for r in rows))
    metric_cols = []
    for r in rows:
        metric_cols += [k for k in r if k not in ID_COLUMNS and k not in ("seconds", "cell") and k not in metric_cols]
    metric_cols = [c for c in metric_cols if c != "DomFrac"] + (["DomFrac"] if "DomFrac" in metric_cols else [])
    lines = [f"| {group} | seeds | " + " | ".join(metric_cols) + " |", "|---|---|" + "---|" * len(metric_cols)]
    for name in order:
        rs = [r for r in rows if r[group] == name]
        if not rs:
            continue
        cells = []
        for c in metric_cols:
            vals = [v for v in (_num(r.get(c)) for r in rs) if v is not None]
            empty = "n/a" if c == "DomFrac" else "–"     # DomFrac is empty where there is no ratio
            cells.append(f"{np.mean(vals):.4f} ± {np.std(vals):.4f}" if vals else empty)
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- running
def run_one(variant: Variant, dataset: str, seed: int, run_dir: Path, feature_file=None, config_file=None,
            num_workers: int = 0, verbose_level: int = 1, config: Optional[dict] = None,
            gpu_ids=None) -> dict:
    """One MMSA_run with one seed; returns {metric: value} (MMSA's) plus DomFrac for KuDA."""
    from ..mmsa.run import MMSA_run

    register()
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = cell_config(variant, config, dataset)
    (run_dir / "variant.json").write_text(json.dumps(
        {"variant": variant.name, "model": variant.model, "config": cfg,
         "config_file": str(config_file) if config_file else None, "dataset": dataset, "seed": seed,
         "feature_file": str(feature_file) if feature_file else None}, indent=2))
    t0 = time.time()
    result = MMSA_run(variant.model, dataset, config_file=(config_file if variant.is_kuda else None),
                      config=cfg or None, config_source=f"ablation variant {variant.name}", seeds=[seed],
                      custom_feature=feature_file or None, gpu_ids=list(gpu_ids or []), num_workers=num_workers,
                      verbose_level=verbose_level, model_save_dir=str(run_dir), res_save_dir=str(run_dir),
                      log_dir=str(run_dir))
    out = dict(result.per_seed[0])
    out["seconds"] = round(time.time() - t0, 1)
    if variant.is_kuda:
        out["DomFrac"] = _dominant_fraction(Path(result.weights[0]), dataset, feature_file)
    return out


def _dominant_fraction(weights: Path, dataset: str, feature_file) -> Optional[float]:
    from ..training.evaluation import dominant_fraction, ratio_placement

    try:
        rows, _ = collect(weights, "test", dataset, None, feature_file)
    except Exception as e:  # the analysis must never lose a finished run
        logger.warning(f"DomFrac not computed: {e}")
        return None
    place = ratio_placement(rows)
    if place and place["uniform"] == place["samples"]:
        return None         # no largest ratio anywhere: the question does not apply (n/a)
    return dominant_fraction(rows)


def run_cell(variant: dict, dataset: str, seed: int, run_dir: str, feature_file=None, config_file=None,
             num_workers: int = 0, verbose_level: int = 1, config: Optional[dict] = None, gpu_ids=None) -> dict:
    """One (variant, seed) as a sweep cell (in a worker process or a Ray task): run_one with
    JSON-able arguments (the variant as its fields, so that registered variants travel)."""
    return run_one(Variant(**variant), dataset, int(seed), Path(run_dir), feature_file=feature_file,
                   config_file=config_file, num_workers=num_workers, verbose_level=verbose_level, config=config,
                   gpu_ids=gpu_ids)


def _cells(todo, dataset, out: Path, feature_file, config_file, num_workers, verbose_level, config) -> List[Cell]:
    cells = []
    for name, seed in todo:
        v = VARIANTS[name]
        run_dir = out / "runs" / name / f"seed{seed}"
        kwargs = dict(variant={"name": v.name, "model": v.model, "config": dict(v.config),
                               "description": v.description},
                      dataset=dataset, seed=int(seed), run_dir=str(run_dir),
                      feature_file=str(feature_file) if feature_file else None,
                      config_file=str(config_file) if config_file else None, num_workers=int(num_workers or 0),
                      verbose_level=int(verbose_level), config=dict(config or {}))
        cells.append(Cell(f"{name} seed {seed}", run_cell, kwargs, run_dir, label=v.description))
    return cells


def default_out(dataset: str, feature_file=None, res_save_dir=None) -> Path:
    """``<res_save_dir or ~/MMSA/results>/ablation/<dataset>[-<feature file name>]``."""
    name = dataset + (f"-{Path(str(feature_file)).name.removesuffix('.pkl')}" if feature_file else "")
    return output_folder(None, "ablation", name, res_save_dir)


def run_ablation(dataset: str, seeds: Iterable[int] = DEFAULT_SEEDS, variants: Iterable[str] = DEFAULT_VARIANTS,
                 out=None, feature_file=None, config_file=None, num_workers: int = 0,
                 verbose_level: int = 1, config: Optional[dict] = None, echo=print,
                 robustness: Optional[dict] = None, reference: Optional[str] = None,
                 executor: Optional[Executor] = None) -> dict:
    """Runs the missing (variant, seed) pairs, in this process or as cells on ``executor``
    (kuda_mmsa.sweeps); returns {'csv', 'markdown', 'table', 'ran', 'failed'}.
    With ``robustness`` (a corruption grid: kinds, modalities, rates, snr_db and protocol,
    default ours) every cell is then evaluated under test-time corruption
    (kuda_mmsa.experiments.robustness)."""
    from ..training.distributed import env_context
    from ..training.protocols import check_protocol, output_stem

    if env_context().distributed:
        raise KudaInputError("ablate runs many runs: start it without torchrun and spread its cells with "
                             "--devices 0,1,... or --executor ray.")
    if robustness:       # a bad protocol is refused before any cell trains
        check_protocol(robustness.get("protocol", "ours"))
    variants = list(variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise KudaInputError(f"Unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}.")
    out = Path(out).expanduser() if out else default_out(dataset, feature_file)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "ablation.csv", out / "ablation.md"
    check_csv_target(csv_path, "ablation CSV", "--out", lambda header: None if {"variant", "seed"} <= set(header) else
                     f"has the columns {header}; an ablation CSV has variant, model, seed and the metrics.")
    wanted = [(name, int(seed)) for name in variants for seed in dict.fromkeys(int(s) for s in seeds)]
    finished, rerun = finished_cells(out, wanted, dataset, feature_file, config_file, config)
    done = set(finished)
    todo = [c for c in wanted if c not in done]
    for (name, seed), why in rerun.items():
        echo(f"[ablate] {name} seed {seed}: runs again: {why}")
    stale = {(n, str(s)) for n, s in rerun}
    for protocol in PROTOCOLS:                               # their corruption rows are stale too
        rob_csv = out / f"{output_stem(protocol)}.csv"
        if stale and rob_csv.is_file():
            update_csv(rob_csv, lambda h, rs: (h, [r for r in rs if h is None or
                                                   (r[h.index("variant")], r[h.index("seed")]) not in stale]))
    prints = {name: cell_fingerprint(VARIANTS[name], dataset, feature_file, config_file, config)
              for name in dict.fromkeys(n for n, _ in todo)}

    def keep(name, seed, res):
        _record_cell(out, name, seed, prints[name])
        write_rows([{"variant": name, "model": VARIANTS[name].model, "seed": int(seed),
                     "cell": fingerprint_id(prints[name]), **res}], csv_path)
        ran.append((name, int(seed)))

    ran, failed = [], []
    if executor is None:
        for name, seed in todo:
            v = VARIANTS[name]
            echo(f"[ablate] {name} seed {seed}: running ({v.description})")
            t0 = time.time()
            res = run_one(v, dataset, int(seed), out / "runs" / name / f"seed{seed}", feature_file=feature_file,
                          config_file=config_file, num_workers=num_workers, verbose_level=verbose_level,
                          config=config)
            keep(name, seed, res)               # after every run: an interruption loses nothing
            echo(f"[ablate] {name} seed {seed}: "
                 + describe_result(CellResult(name, True, res, seconds=time.time() - t0)))
    elif todo:
        echo(f"[ablate] {len(todo)} cell(s) to run on {executor.describe()}; {len(done)} already in {csv_path}")
        cells = _cells(todo, dataset, out, feature_file, config_file, num_workers, verbose_level, config)
        by_key = {c.key: pair for c, pair in zip(cells, todo)}

        def on_done(r: CellResult):
            name, seed = by_key[r.key]
            if r.ok:
                keep(name, seed, r.value)       # at once: a killed sweep keeps every finished cell
            else:
                failed.append((name, seed, r.error))
            echo(f"[ablate] {r.key}: {describe_result(r)}")

        run_cells(executor, cells, on_done)
    rows = read_rows(csv_path)                  # with the rows other processes added meanwhile
    selected = [r for r in rows if r["variant"] in variants and int(r["seed"]) in {int(s) for s in seeds}]
    table = summarize(selected, variants)
    header = (f"Dataset `{dataset}`{' (' + str(feature_file) + ')' if feature_file else ''}, seeds "
              f"{', '.join(str(s) for s in seeds)}; test split, MMSA's metrics, mean ± std over seeds. "
              f"DomFrac: fraction of test samples whose largest ratio is on the annotated dominant modality (n/a: "
              f"the variant's ratios are uniform or it has none).\n\n")
    atomic_write_text(md_path, header + table)
    if not csv_path.exists():
        write_rows(rows, csv_path)
    result = {"csv": csv_path, "markdown": md_path, "table": table, "ran": ran, "failed": failed,
              "rerun": rerun}
    if robustness:
        finished = done | set(ran)       # failed cells have no weights
        cells = [(VARIANTS[name], int(seed)) for name, seed in wanted if (name, int(seed)) in finished]
        result["robustness"] = ablation_robustness(out, dataset, cells, robustness, feature_file, config_file,
                                                   config, reference, echo)
    return result
