"""What ``kuda-mmsa reproduce`` prints and writes: the plan before the runs (``--dry-run``)
and reproduction.md / reproduction.csv after them, beside the published numbers."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import List, Optional, Tuple

from ..files import atomic_path, default_data_root
from ..mmsa.datasets import DATASETS
from .ablation import read_rows
from .published import SOURCES, published
from .variants import VARIANTS

# the plans are reproduction.DatasetPlan objects; imported there, not here, so the two modules
# do not import each other


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


def describe_plan(plans: list, seeds, variants) -> str:
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


def _summary(vals: List[float]) -> str:
    import numpy as np

    return f"{np.mean(vals):.4f} ± {np.std(vals):.4f}"


def write_report(out: Path, plans: list, seeds, variants, command: str = "") -> Tuple[Path, Path]:
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
