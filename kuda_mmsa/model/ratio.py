"""Sentiment ratio: how much each modality counts for a sample.

The paper's rule (KuDA paper, method section: sentiment knowledge guiding) is agreement with
a target score s: R_m = softmax_m(-k (s_m - s)^2). It is not scale-free: the same k means
something else on SIMS' [-1, 1] labels and MOSI's [-3, 3], and k = 0.1 on [-1, 1] keeps every
weight within 3 % of uniform.

``reliability`` (ours, the default in dynamic mode) is scale-free and reacts to corrupted
inputs. Each modality predicts, from its own representation, the log of its expected squared
error against the overall label, v_m (a small head trained with a Gaussian negative
log-likelihood on detached inputs); the ratio is inverse-variance weighting, lowered for a
modality that disagrees with the others by more than their typical error:

    R_m ∝ present_m · exp( -v_m - a · (s_m - c)^2 / exp(mean_m v_m) ),

c the median of the present modalities' scores, a = ``ratio_agreement``. Scaling the labels
by c (and so the scores by c and exp(v) by c^2) or shifting them leaves R unchanged. A missing
modality (``present`` false) gets R = 0 under every dynamic source.

Each ``ratio_source`` is a rule registered in ``RATIO_RULES`` (kuda_mmsa.registry): a class
that builds the heads it needs and turns a ``RatioInputs`` into a ``RatioResult`` (the ratio,
its auxiliary loss, what it reports). The model builds only the heads of its own rule. Besides
``reliability``, the agreement rules R_m = softmax_m(-k (s_m - s)^2) with target s:
- `consensus`: label-free, the mean unimodal score;
- `estimate`: label-free, a small learned estimator of the overall score from the unimodal
  scores (RatioEstimator), trained with an auxiliary MSE against the label, so the ratio
  approximates the authors' label-based one and exists at inference too;
- `prediction`: label-free, the model's own prediction from a first fusion pass with every
  modality weighted 1 (static fusion, same blocks and head; trained with an auxiliary MSE),
  i.e. "how close is each modality to what the whole model thinks"; costs a second pass
  through the fusion blocks;
- `label`: the ground truth (the authors' training-time choice; training only)."""
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Dict, List, Optional

import torch
from torch import nn

from ..registry import RATIO_RULES


class RatioEstimator(nn.Module):
    """Overall score estimated from the (detached) unimodal scores: 3 -> 16 -> 1."""

    def __init__(self, num_modalities: int = 3, hidden: int = 16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(num_modalities, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, scores: torch.Tensor, present: Optional[torch.Tensor] = None) -> torch.Tensor:
        if present is not None:   # a missing modality's score says nothing
            scores = scores * present.to(scores.dtype)
        return self.mlp(scores.detach())


def sentiment_ratio(scores: torch.Tensor, target: torch.Tensor, k: float,
                    present: Optional[torch.Tensor] = None) -> torch.Tensor:
    """scores [B, M] unimodal predictions, target [B, 1] -> ratios [B, M] summing to 1
    (over the present modalities when ``present`` [B, M] bool is given)."""
    return masked_softmax(-k * (scores - target) ** 2, present)


def masked_softmax(logits: torch.Tensor, present: Optional[torch.Tensor]) -> torch.Tensor:
    """softmax over the last dim restricted to ``present``; a row with none present is uniform."""
    if present is None:
        return torch.softmax(logits, dim=-1)
    none = ~present.any(dim=-1, keepdim=True)
    keep = present | none
    r = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)
    return torch.where(none, torch.full_like(r, 1.0 / r.shape[-1]), r)


def present_median(scores: torch.Tensor, present: Optional[torch.Tensor]) -> torch.Tensor:
    """[B, 1] median of each row over the present entries (mean of the two middle ones when
    their number is even; 0 when none is present)."""
    if present is None:
        present = torch.ones_like(scores, dtype=torch.bool)
    count = present.sum(dim=-1, keepdim=True)
    ordered = scores.masked_fill(~present, float("inf")).sort(dim=-1).values
    lo = ((count - 1).clamp(min=0) // 2)
    hi = (count // 2).clamp(max=scores.shape[-1] - 1)
    mid = (ordered.gather(-1, lo) + ordered.gather(-1, hi)) / 2
    return torch.where(count > 0, mid, torch.zeros_like(mid))


def reliability_ratio(scores: torch.Tensor, log_var: torch.Tensor, present: Optional[torch.Tensor],
                      agreement: float) -> torch.Tensor:
    """The ``reliability`` rule (module docstring): scores, log_var [B, M] -> R [B, M]."""
    if present is None:
        present = torch.ones_like(scores, dtype=torch.bool)
    center = present_median(scores, present)
    weight = present.to(log_var.dtype)
    mean_v = (log_var * weight).sum(-1, keepdim=True) / weight.sum(-1, keepdim=True).clamp(min=1)
    z2 = (scores - center) ** 2 / torch.exp(mean_v)
    return masked_softmax(-log_var - agreement * z2, present)


class ReliabilityHeads(nn.Module):
    """v_m = log of modality m's expected squared error against the overall label, from its
    own pooled representation (detached: the heads estimate, they do not shape the encoders)."""

    def __init__(self, widths, hidden: int = 32):
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(w, hidden), nn.GELU(), nn.Linear(hidden, 1)) for w in widths)

    def forward(self, pooled) -> torch.Tensor:
        # fp32 at least (bf16 autocast inputs), fp64 in an fp64 model
        return torch.cat([h(x.detach().to(torch.promote_types(x.dtype, torch.float32)))
                          for h, x in zip(self.heads, pooled)], dim=-1)

    @staticmethod
    def nll(log_var: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
            present: Optional[torch.Tensor]) -> torch.Tensor:
        """Gaussian negative log-likelihood of each modality's error (s_m - y), present ones only."""
        err2 = (scores.detach().float() - labels.reshape(-1, 1).float()) ** 2
        terms = err2 * torch.exp(-log_var) + log_var
        if present is None:
            return terms.mean()
        w = present.to(terms.dtype)
        return (terms * w).sum() / w.sum().clamp(min=1)


# ---------------------------------------------------------------------------- the rules
@dataclass
class RatioInputs:
    """What a ratio rule may read, for one batch. ``pooled`` and ``static_prediction`` are
    computed only when a rule asks (the second costs a fusion pass)."""
    scores: torch.Tensor                    # [B, M] unimodal scores, as the decoders give them
    present: torch.Tensor                   # [B, M] bool
    labels: Optional[torch.Tensor]          # [B, 1] in training, else None
    training: bool
    pooled: Callable[[], List[torch.Tensor]]        # each modality's pooled representation [B, D_m]
    static_prediction: Callable[[], torch.Tensor]   # [B, 1]: every present modality weighted 1

    @property
    def detached(self) -> torch.Tensor:
        """The scores the ratio is computed from: detached, in fp32 at least (also under bf16 autocast)."""
        return self.scores.detach().to(torch.promote_types(self.scores.dtype, torch.float32))


@dataclass
class RatioResult:
    ratio: torch.Tensor                     # [B, M], summing to 1 over the present modalities
    aux: Optional[torch.Tensor] = None      # the rule's own loss, added by the trainer
    report: Dict[str, torch.Tensor] = field(default_factory=dict)   # extra outputs of forward


class RatioRule:
    """One ``ratio_source``. Subclass, set ``name`` and ``help``, build your heads in
    ``heads`` (registered on the model under the names you give, so they are in its state
    dict), compute the ratio in ``__call__``, and register with ``@RATIO_RULES.register()``."""
    name: ClassVar[str] = ""
    help: ClassVar[str] = ""

    def __init__(self, config):
        self.config = config

    def heads(self, widths: List[int]) -> Dict[str, nn.Module]:
        """{attribute name: module} the rule needs; ``widths``: each modality's representation width."""
        return {}

    def __call__(self, model: nn.Module, x: RatioInputs) -> RatioResult:
        raise NotImplementedError


@RATIO_RULES.register()
class Reliability(RatioRule):
    name = "reliability"

    def heads(self, widths):
        return {"reliability": ReliabilityHeads(widths)}

    def __call__(self, model, x):
        log_var = model.reliability(x.pooled())
        r = reliability_ratio(x.detached, log_var.detach(), x.present, self.config.ratio_agreement)
        # the heads learn each modality's error variance
        aux = ReliabilityHeads.nll(log_var, x.scores, x.labels, x.present) if x.labels is not None else None
        return RatioResult(r, aux, {"log_var": log_var})


class Agreement(RatioRule):
    """R_m = softmax_m(-k (s_m - s)^2) over the present modalities, s = ``target``."""

    def target(self, model, x: RatioInputs):
        """(s [B, 1], the auxiliary loss or None, what to report)."""
        raise NotImplementedError

    def __call__(self, model, x):
        s, aux, report = self.target(model, x)
        return RatioResult(sentiment_ratio(x.detached, s, self.config.ratio_k, x.present), aux, report)


def _fit(estimate: torch.Tensor, labels: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The auxiliary MSE that teaches a learned target the label."""
    if labels is None:
        return None
    return nn.functional.mse_loss(estimate, labels.reshape(-1, 1).to(estimate.dtype))


@RATIO_RULES.register()
class Consensus(Agreement):
    name = "consensus"

    @staticmethod
    def mean(scores: torch.Tensor, present: Optional[torch.Tensor] = None) -> torch.Tensor:
        if present is None:
            return scores.mean(dim=-1, keepdim=True)
        w = present.to(scores.dtype)
        return (scores * w).sum(-1, keepdim=True) / w.sum(-1, keepdim=True).clamp(min=1)

    def target(self, model, x):
        return self.mean(x.detached, x.present), None, {}


@RATIO_RULES.register()
class Estimate(Agreement):
    name = "estimate"

    def heads(self, widths):
        return {"ratio_estimator": RatioEstimator(len(widths))}

    def target(self, model, x):
        estimate = model.ratio_estimator(x.scores, x.present)
        return estimate.detach(), _fit(estimate, x.labels), {"estimate": estimate}


@RATIO_RULES.register()
class Prediction(Agreement):
    name = "prediction"

    def target(self, model, x):
        estimate = x.static_prediction()
        return estimate.detach(), _fit(estimate, x.labels), {"estimate": estimate}


@RATIO_RULES.register()
class Label(Agreement):
    name = "label"

    def target(self, model, x):
        if x.training and x.labels is not None:
            return x.labels.reshape(-1, 1).to(x.detached.dtype), None, {}
        return Consensus.mean(x.detached, x.present), None, {}
