"""Running a trained KuDA model over a split: predictions, unimodal scores, ratios, labels
and ids, in the split's order (the trainer's test, explain, robustness and evaluate all use
this one loop)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from .precision import autocast


def batch_inputs(batch, device) -> dict:
    """The model's keyword inputs from an MMSA batch."""
    lengths = {k: torch.as_tensor(batch[k]).to(device) if k in batch else None
               for k in ("audio_lengths", "vision_lengths")}
    return dict(text=batch["text"].to(device), audio=batch["audio"].to(device),
                vision=batch["vision"].to(device), **lengths)


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


@torch.no_grad()
def predict(model, loader, device, precision: str = "fp32",
            transform: Optional[Callable[[dict], dict]] = None) -> Predictions:
    """Evaluation-mode outputs over `loader`; `transform(batch) -> batch` may change the
    inputs first (test-time corruption)."""
    model.eval()
    preds, labels, uni, ratio, ids = [], [], [], [], []
    for batch in loader:
        if transform is not None:
            batch = transform(batch)
        with autocast(device, precision):
            out = model(**batch_inputs(batch, device))
        preds.append(out["M"].float().cpu())
        labels.append(batch["labels"]["M"].view(-1, 1).float())
        uni.append(torch.cat([out[m] for m in "TVA"], -1).float().cpu())
        ratio.append(out["ratio"].float().cpu())
        ids.extend(str(i) for i in batch["id"])
    return Predictions(torch.cat(preds), torch.cat(labels), torch.cat(uni), torch.cat(ratio), ids)


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
