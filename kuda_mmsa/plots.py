"""Plots for KuDA runs and explanations (matplotlib is a dependency of the package).

Every function returns the path it wrote, or None when matplotlib cannot be imported (an
install that skipped dependencies); in that case a single one-line notice is logged (once per
process) and nothing fails.

- save_training_curves(history, path): train loss and the validation KeyEval per epoch;
- ratio_distribution(ratios, path): histogram of R_T, R_V, R_A;
- ratio_by_group(ratios, groups, path, ...): mean ratio per modality for each group (the
  known dominant modality on the demo data, |error| bins on real data);
- sample_panels(rows, path): paper-Figure-1-style panels (unimodal scores and ratios per
  modality, with the label and the prediction) for chosen samples.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

logger = logging.getLogger("MMSA")

MODALITY_NAMES = ("text", "vision", "audio")          # T, V, A order of the model's ratio
MODALITY_COLORS = ("#1f77b4", "#2ca02c", "#d62728")
_notice = {"shown": False}


def _pyplot():
    """matplotlib.pyplot with a file-only backend, or None (one notice per process)."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        if not _notice["shown"]:
            logger.warning("matplotlib is not installed: no plots written (it is a dependency of "
                           "kuda_mmsa: pip install matplotlib).")
            _notice["shown"] = True
        return None
    return plt


def _save(fig, plt, path, layout=True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_training_curves(history: List[dict], path, key_eval: Optional[str] = None) -> Optional[Path]:
    """history: [{'epoch', 'train_loss', 'valid': {metric: value}}] (KuDATrainer.history).
    Left axis: training loss; right axis: the validation KeyEval (``key_eval``, default
    'Loss' when present, else the first metric). The best epoch is marked."""
    plt = _pyplot()
    if plt is None or not history:
        return None
    epochs = [h["epoch"] for h in history]
    valid = [h.get("valid", {}) for h in history]
    key = key_eval or ("Loss" if "Loss" in valid[0] else next(iter(valid[0]), None))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", color="#1f77b4", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss (MSE + α·CE [+ aux])")
    handles = ax.get_lines()
    if key is not None:
        ax2 = ax.twinx()
        vals = [v.get(key, float("nan")) for v in valid]
        ax2.plot(epochs, vals, "s--", color="#ff7f0e", label=f"valid {key}")
        finite = [(e, v) for e, v in zip(epochs, vals) if v == v]
        if finite:
            best = (min if key in ("Loss", "MAE") else max)(finite, key=lambda t: t[1])
            ax2.plot([best[0]], [best[1]], "*", color="black", markersize=12,
                     label=f"best valid {key} (epoch {best[0]})")
        ax2.set_ylabel(f"validation {key}")
        handles = handles + ax2.get_lines()
    ax.legend(handles, [h.get_label() for h in handles], loc="upper right", fontsize=8)
    ax.set_title("KuDA stage 2: training curves")
    ax.grid(alpha=0.3)
    if len(epochs) < 15:
        ax.set_xticks(epochs)
    return _save(fig, plt, path)


def ratio_distribution(ratios: Sequence[Sequence[float]], path) -> Optional[Path]:
    """Histogram of each modality's ratio over the samples ([N, 3], T, V, A order)."""
    plt = _pyplot()
    if plt is None:
        return None
    import numpy as np

    r = np.asarray(ratios, dtype=float).reshape(-1, 3)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    bins = np.linspace(0.0, 1.0, 21)
    for i, (name, color) in enumerate(zip(MODALITY_NAMES, MODALITY_COLORS)):
        ax.hist(r[:, i], bins=bins, histtype="step", linewidth=2, color=color,
                label=f"R_{name[0].upper()} ({name}), mean {r[:, i].mean():.2f}")
    ax.axvline(1 / 3, color="gray", linestyle=":", label="uniform (1/3)")
    ax.set_xlabel("sentiment ratio R_m")
    ax.set_ylabel("number of samples")
    ax.set_title(f"Ratio distribution per modality (N = {len(r)})")
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def ratio_by_group(ratios, groups: Sequence[str], path, group_order: Optional[Sequence[str]] = None,
                   xlabel: str = "group", title: Optional[str] = None) -> Optional[Path]:
    """Grouped bars: mean ratio (± std) of each modality for each group of samples, with
    the group size in the tick label."""
    plt = _pyplot()
    if plt is None:
        return None
    import numpy as np

    r = np.asarray(ratios, dtype=float).reshape(-1, 3)
    groups = np.asarray(list(groups), dtype=object)
    order = list(group_order) if group_order is not None else sorted(set(groups.tolist()))
    order = [g for g in order if (groups == g).any()]
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    x = np.arange(len(order))
    width = 0.26
    for i, (name, color) in enumerate(zip(MODALITY_NAMES, MODALITY_COLORS)):
        means = [r[groups == g, i].mean() for g in order]
        stds = [r[groups == g, i].std() for g in order]
        ax.bar(x + (i - 1) * width, means, width, yerr=stds, capsize=3, color=color,
               label=f"R_{name[0].upper()} ({name})")
    ax.axhline(1 / 3, color="gray", linestyle=":", label="uniform (1/3)")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{g}\n(n={(groups == g).sum()})" for g in order])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean ratio R_m (± std)")
    ax.set_title(title or "Sentiment ratios by group")
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=8, ncol=4, loc="upper center")
    return _save(fig, plt, path)


def sample_panels(rows: List[Dict], path) -> Optional[Path]:
    """One panel per sample (paper Figure 1 style). Each row: id, T, V, A (unimodal
    scores), R_T, R_V, R_A, prediction, label and optionally annotation."""
    plt = _pyplot()
    if plt is None or not rows:
        return None
    import numpy as np

    n = len(rows)
    cols = min(n, 3)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.4 * cols, 3.6 * nrows), squeeze=False)
    x = np.arange(3)
    handles = None
    for ax, row in zip(axes.flat, rows):
        scores = [float(row[m]) for m in "TVA"]
        ratios = [float(row[f"R_{m}"]) for m in "TVA"]
        b1 = ax.bar(x - 0.2, scores, 0.4, color=MODALITY_COLORS, alpha=0.9)
        l1 = ax.axhline(float(row["label"]), color="black", linestyle="--")
        l2 = ax.axhline(float(row["prediction"]), color="purple", linestyle=":")
        ax.axhline(0.0, color="gray", linewidth=0.5)
        ax.set_ylim(-1.15, 1.15)
        ax.set_ylabel("sentiment score (solid)")
        ax2 = ax.twinx()
        b2 = ax2.bar(x + 0.2, ratios, 0.4, color=MODALITY_COLORS, alpha=0.35, hatch="//",
                     edgecolor="black")
        for xi, rv in zip(x, ratios):
            ax2.text(xi + 0.2, rv + 0.02, f"{rv:.2f}", ha="center", fontsize=7)
        ax2.set_ylim(0, 1.15)
        ax2.set_ylabel("ratio R_m (hatched)")
        ax.set_xticks(x)
        ax.set_xticklabels(["text", "vision", "audio"])
        title = f"{row['id']}"
        if row.get("annotation"):
            title += f"  [{row['annotation']}]"
        title += f"\nlabel {float(row['label']):+.2f}, prediction {float(row['prediction']):+.2f}"
        ax.set_title(title, fontsize=9)
        handles = [(b1[0], "unimodal score ŝ_m (left axis)"), (b2[0], "ratio R_m (right axis)"),
                   (l1, "label y"), (l2, "KuDA prediction")]
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.legend([h for h, _ in handles], [t for _, t in handles], loc="lower center", ncol=4,
               fontsize=8, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.suptitle("Unimodal scores (solid) and sentiment ratios (hatched) per sample", fontsize=10)
    return _save(fig, plt, path, layout=False)


def robustness_curves(rows: List[Dict], path, corruption: str, group: str = "model",
                      metrics: Sequence[str] = ("MAE", "Corr"), title: Optional[str] = None,
                      xlabel: str = "share of test samples corrupted") -> Optional[Path]:
    """Metric against corruption rate for one corruption kind: one panel per (metric,
    modality), one line per ``group`` value (mean over seeds) with a band (min..max over seeds).
    A modality such as ``TVA`` (several corrupted together) gets its own panel after T, V, A."""
    plt = _pyplot()
    if plt is None:
        return None
    import numpy as np

    rows = [r for r in rows if r["corruption"] == corruption]
    modalities = [m for m in "TVA" if any(r["modality"] == m for r in rows)]
    modalities += [m for m in dict.fromkeys(r["modality"] for r in rows) if m not in ("T", "V", "A")]
    names = list(dict.fromkeys(str(r[group]) for r in rows))
    if not rows or not modalities:
        return None
    fig, axes = plt.subplots(len(metrics), len(modalities), figsize=(4.2 * len(modalities), 3.3 * len(metrics)),
                             squeeze=False, sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    full = {"T": "text", "V": "vision", "A": "audio"}
    for j, m in enumerate(modalities):
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            for k, name in enumerate(names):
                mine = [r for r in rows if str(r[group]) == name and r["modality"] == m]
                rates = sorted({float(r["rate"]) for r in mine})
                vals = [[float(r[metric]) for r in mine if float(r["rate"]) == x] for x in rates]
                mean = np.array([np.mean(v) for v in vals])
                lo, hi = np.array([np.min(v) for v in vals]), np.array([np.max(v) for v in vals])
                color = colors[k % len(colors)]
                ax.plot(rates, mean, "o-", color=color, label=name, linewidth=1.6, markersize=4)
                ax.fill_between(rates, lo, hi, color=color, alpha=0.15, linewidth=0)
            ax.set_title(f"{full.get(m) or ' + '.join(full[c] for c in m)} {corruption}", fontsize=10)
            ax.set_ylabel(metric + (" (lower is better)" if metric in ("MAE", "Loss") else " (higher is better)"),
                          fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(metrics) - 1:
                ax.set_xlabel(xlabel)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(names), 6), fontsize=9, frameon=False)
    fig.suptitle(title or f"Test-time corruption: {corruption} (mean over seeds, band = min..max)", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    return _save(fig, plt, path, layout=False)
