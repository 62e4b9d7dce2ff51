"""Running a trained KuDA model over a split: predictions, unimodal scores, ratios, labels
and ids, in the split's order (the trainer's test, explain, robustness and evaluate all use
this one loop)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from .precision import autocast
from .step import EvalForward


def batch_inputs(batch, device=None) -> dict:
    """The model's keyword inputs from an MMSA batch (moved to ``device`` unless it is None)."""
    move = (lambda t: t) if device is None else (lambda t: t.to(device))
    lengths = {k: move(torch.as_tensor(batch[k])) for k in ("audio_lengths", "vision_lengths") if k in batch}
    return dict(text=move(batch["text"]), audio=move(batch["audio"]), vision=move(batch["vision"]), **lengths)


@dataclass
class Predictions:
    pred: torch.Tensor           # [N, 1]
    labels: torch.Tensor         # [N, 1]
    unimodal: torch.Tensor       # [N, 3] (T, V, A)
    ratio: torch.Tensor          # [N, 3]
    ids: List[str]

    def rows(self) -> List[Dict]:
        out = []
        for i, sid in enumerate(self.ids):
            p, y = float(self.pred[i]), float(self.labels[i])
            u, r = self.unimodal[i].tolist(), self.ratio[i].tolist()
            out.append({"id": str(sid), "T": u[0], "V": u[1], "A": u[2], "R_T": r[0], "R_V": r[1],
                        "R_A": r[2], "prediction": p, "label": y, "abs_error": abs(p - y)})
        return out


def eval_forward(model, device, precision: str = "fp32", graphs: bool = False) -> EvalForward:
    """The evaluation forward of ``predict``: prediction, unimodal scores and ratio in fp32,
    replayed from a CUDA graph when ``graphs`` (see training.step)."""
    def fn(x):
        with autocast(device, precision):
            out = model(**x)
        return {"M": out["M"].float(), "unimodal": torch.cat([out[m] for m in "TVA"], -1).float(),
                "ratio": out["ratio"].float()}

    return EvalForward(fn, device, graphs, check=getattr(model, "check_inputs", None))


@torch.no_grad()
def predict(model, loader, device, precision: str = "fp32",
            transform: Optional[Callable[[dict], dict]] = None, forward: Optional[EvalForward] = None) -> Predictions:
    """Evaluation-mode outputs over `loader`; `transform(batch) -> batch` may change the
    inputs first (test-time corruption); ``forward``: an ``eval_forward`` of this model to
    reuse (its CUDA graph), else an eager one."""
    model.eval()
    forward = forward or eval_forward(model, device, precision)
    preds, labels, uni, ratio, ids = [], [], [], [], []
    for batch in loader:
        if transform is not None:
            batch = transform(batch)
        out = forward(batch_inputs(batch))
        preds.append(out["M"])           # on the device until the end: no sync per batch
        uni.append(out["unimodal"])
        ratio.append(out["ratio"])
        labels.append(batch["labels"]["M"].view(-1, 1).float())
        ids.extend(str(i) for i in batch["id"])
    cat = lambda xs: torch.cat(xs).cpu()
    return Predictions(cat(preds), torch.cat(labels), cat(uni), cat(ratio), ids)


# ---------------------------------------------------------------------- dominant modality
MODALITY_INDEX = {"text": 0, "vision": 1, "audio": 2}    # T, V, A order of the model's ratio


def dominant_of(annotation: str) -> Optional[int]:
    """'dominant:vision' -> 1 (T, V, A order); None when not such an annotation."""
    a = str(annotation or "")
    if a.startswith("dominant:"):
        return MODALITY_INDEX.get(a.split(":", 1)[1].strip().lower())
    return None


def on_dominant(row: Dict, d: int) -> bool:
    """True when the ratio of modality d is strictly the largest (a tie, e.g. the uniform
    ratio of static fusion, picks nothing)."""
    r = [float(row["R_T"]), float(row["R_V"]), float(row["R_A"])]
    return all(r[d] > r[m] + 1e-9 for m in range(3) if m != d)


def dominant_fraction(rows: List[Dict]) -> Optional[float]:
    """Fraction of annotated samples whose largest ratio is on the dominant modality."""
    hits = [on_dominant(r, d) for r in rows for d in [dominant_of(r.get("annotation"))] if d is not None]
    return float(sum(hits) / len(hits)) if hits else None
