"""Robustness experiments: the corruption grid, evaluating trained models on it (alone or as
cells of an ablation), and the tables and curves they write (``kuda-mmsa robustness``)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List

from .. import plots
from ..data.kinds import KINDS
from ..errors import KudaInputError
from ..files import atomic_path


DEFAULT_RATES = (0.0, 0.25, 0.5, 0.75, 1.0)


LNLN_RATES_HELP = "0 0.1 ... 0.9"


PROTOCOL_HELP = {
    "ours": "a share `rate` of the test samples has one modality corrupted by each kind",
    "tfrnet": "MMSA's TFR-Net missing option: each token / frame of a modality is missing with probability `rate` "
              "(text: [UNK], [CLS]/[SEP] kept; audio / vision: frame zeroed); each modality alone, then all together",
    "lnln": "LNLN's evaluation (NeurIPS 2024): tokens / frames of all three modalities missing with probability "
            "`rate`; 'mean over rates' is LNLN's reported figure",
}


ID_COLUMNS = ["model", "corruption", "modality", "rate", "seed"]


def resolve_grid(protocol: str, kinds, modalities, rates, kinds_flag: str = "--corrupt") -> dict:
    """The grid a protocol evaluates: its defaults for what was not given; options that mean
    nothing under it refused (kuda_mmsa.training.protocols)."""
    from ..training.protocols import check_protocol_options, default_rates

    check_protocol_options(protocol, kinds, modalities, kinds_flag)
    return {"protocol": protocol, "kinds": list(kinds or KINDS), "modalities": list(modalities or ["T", "V", "A"]),
            "rates": check_rates(default_rates(protocol) if rates is None else rates)}


def check_rates(rates) -> List[float]:
    rates = sorted({float(r) for r in rates})
    if any(not 0.0 <= r <= 1.0 for r in rates):
        raise KudaInputError(f"--rate values must lie in [0, 1]; found {rates}.")
    if 0.0 not in rates:
        rates = [0.0] + rates          # the clean score anchors both summary figures
    return rates


def write_csv(rows: List[dict], path: Path, first: List[str]) -> Path:
    cols = list(first) + [k for r in rows for k in r if k not in first]
    cols = list(dict.fromkeys(cols))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, restval="")
        w.writeheader()
        w.writerows(rows)
    return path


def read_csv(path: Path) -> List[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k in ("corruption", "modality", "model", "variant"):
                continue
            try:
                r[k] = float(v)
            except (TypeError, ValueError):
                pass
    return rows


def _mean_std(vals) -> str:
    import numpy as np

    vals = [float(v) for v in vals if v != "" and v is not None]
    return f"{np.mean(vals):.4f} ± {np.std(vals):.4f}" if vals else "–"


def markdown(rows: List[dict], summary: List[dict], group: str, reference: str) -> str:
    """Per corruption: metric at each rate (mean ± std over seeds) and RR / ER per model."""
    from ..training.robustness import SUMMARY_METRICS

    out = []
    names = list(dict.fromkeys(str(r[group]) for r in rows))
    for kind in dict.fromkeys(r["corruption"] for r in rows):
        for modality in dict.fromkeys(r["modality"] for r in rows if r["corruption"] == kind):
            rates = sorted({float(r["rate"]) for r in rows if r["corruption"] == kind})
            out.append(f"#### {kind}, modality {modality}\n")
            means = [m for m in SUMMARY_METRICS if any(f"Mean_{m}" in s for s in summary)]
            head = [group] + [f"{m} @ {x:g}" for m in SUMMARY_METRICS for x in rates] + \
                   [f"{m} mean over rates" for m in means] + \
                   [f"RR {m}" for m in SUMMARY_METRICS] + [f"ER {m} vs {reference}" for m in SUMMARY_METRICS]
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "---|" * len(head))
            for name in names:
                mine = [r for r in rows if str(r[group]) == name and r["corruption"] == kind and r["modality"] == modality]
                summ = [s for s in summary if str(s[group]) == name and s["corruption"] == kind
                        and s["modality"] == modality]
                if not mine:
                    continue
                cells = [_mean_std([r[m] for r in mine if float(r["rate"]) == x]) for m in SUMMARY_METRICS for x in rates]
                cells += [_mean_std([s.get(f"Mean_{m}") for s in summ]) for m in means]
                cells += [_mean_std([s.get(f"RR_{m}") for s in summ]) for m in SUMMARY_METRICS]
                cells += [_mean_std([s.get(f"ER_{m}") for s in summ if f"ER_{m}" in s]) for m in SUMMARY_METRICS]
                out.append(f"| {name} | " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out)


def write_outputs(rows: List[dict], out: Path, group: str, reference: str, protocol: str = "ours") -> Dict[str, Path]:
    """CSV, summary CSV, Markdown and one PNG per corruption kind (named by output_stem)."""
    from ..training.protocols import output_stem
    from ..training.robustness import summaries

    out.mkdir(parents=True, exist_ok=True)
    stem = output_stem(protocol)
    summary = summaries(rows, reference, group, mean_over_rates=protocol == "lnln")
    first = [group] + (["model"] if group != "model" else []) + ID_COLUMNS[1:]
    paths = {"csv": write_csv(rows, out / f"{stem}.csv", first),
             "summary": write_csv(summary, out / f"{stem}_summary.csv", [group, "corruption", "modality", "seed"])}
    md = out / f"{stem}.md"
    intro = "" if protocol == "ours" else f"Protocol {protocol}: {PROTOCOL_HELP[protocol]}. "
    md.write_text(f"{intro}Test split, MMSA's metrics, mean ± std over seeds. RR: mean of the metric along the rate "
                  f"curve; ER: how much less the metric degrades than {reference} (positive = more robust).\n\n"
                  + markdown(rows, summary, group, reference))
    paths["markdown"] = md
    xlabel = "share of test samples corrupted" if protocol == "ours" else "share of tokens / frames missing"
    for kind in dict.fromkeys(r["corruption"] for r in rows):
        png = plots.robustness_curves(rows, out / f"robustness-{kind}.png", kind, group=group, xlabel=xlabel)
        if png is not None:
            paths[f"png_{kind}"] = png
    return paths


def protocol_options(protocol: str, args, options: dict) -> dict:
    """tester_for's corruption options, plus the text encoder's [UNK] id where a protocol
    writes it (read only then: ours never needs the tokenizer)."""
    from ..data.protocols import text_encoder_unk_id

    if protocol == "ours" or not options.get("bert_text"):
        return dict(options)
    return {**options, "unk_id": text_encoder_unk_id(args.get("pretrained"))}


# ---------------------------------------------------------------------- ablation runner
def cell_args(variant, dataset: str, run_dir: Path, feature_file=None, config_file=None, config=None):
    """The args a finished ablation cell ran with (rebuilt; its weights are in run_dir)."""
    import torch

    from ..mmsa.args import RUN_KEYS, build_args

    cfg = dict(config or {})
    if not variant.is_kuda:
        cfg = {k: v for k, v in cfg.items() if k in RUN_KEYS}
    cfg.update(variant.config)
    args, _ = build_args(variant.model, dataset, config_file if variant.is_kuda else None, cfg or None,
                         f"ablation variant {variant.name}", custom_feature=feature_file)
    args.update(custom_feature=str(feature_file) if feature_file else None, feature_T="", feature_A="", train_mode="regression",
                feature_V="", device=torch.device("cpu"), progress=False,
                model_save_path=str(run_dir / f"{variant.model}-{args.dataset_name}.pth"))
    return args


def ablation_robustness(out: Path, dataset: str, cells, grid: dict, feature_file=None, config_file=None,
                        config=None, reference=None, echo=print) -> Dict[str, Path]:
    """Robustness of every finished (variant, seed) cell of an ablation, from its saved
    weights, with corruption seed = the cell's seed (every variant sees the same corruption).
    ``grid``: kinds, modalities, rates, snr_db and protocol (absent: ours). Rows already in
    <out>/robustness.csv (robustness-<protocol>.csv) are kept (resumable)."""
    from ..mmsa.trained import tester_for
    from ..training.protocols import check_protocol, evaluate_protocol, output_stem

    protocol = check_protocol(grid.get("protocol", "ours"))
    path = out / f"{output_stem(protocol)}.csv"
    rows = read_csv(path)
    done = {(r["variant"], int(r["seed"])) for r in rows}
    rates = check_rates(grid["rates"])
    for variant, seed in cells:
        if (variant.name, int(seed)) in done:
            continue
        run_dir = out / "runs" / variant.name / f"seed{seed}"
        args = cell_args(variant, dataset, run_dir, feature_file, config_file, config)
        split, test_fn, options = tester_for(args)
        echo(f"[ablate] robustness of {variant.name} seed {seed}")
        for r in evaluate_protocol(protocol, split, test_fn, grid["kinds"], grid["modalities"], rates, [seed],
                                   int(args.batch_size), grid["snr_db"], **protocol_options(protocol, args, options)):
            rows.append({"variant": variant.name, "model": variant.model, **r})
        write_csv(rows, path, ["variant", "model"] + ID_COLUMNS[1:])      # after every cell
    names = list(dict.fromkeys(v.name for v, _ in cells))
    selected = [r for r in rows if r["variant"] in names and (r["variant"], int(r["seed"])) in
                {(v.name, int(s)) for v, s in cells}]
    reference = reference or ("lf_dnn" if "lf_dnn" in names else names[0])
    return write_outputs(selected, out, "variant", reference, protocol)
