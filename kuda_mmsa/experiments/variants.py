"""The variants the ablation runner (and the reproduction command) can run: KuDA with one
config change each, and stock MMSA models. A registry: add one with ``register_variant``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict


@dataclass(frozen=True)
class Variant:
    name: str
    model: str                                   # MMSA model name
    config: Dict = field(default_factory=dict)   # overrides of the model's config
    description: str = ""

    @property
    def is_kuda(self) -> bool:
        return self.model == "kuda"


VARIANTS: Dict[str, Variant] = {}


def register_variant(v: Variant) -> Variant:
    VARIANTS[v.name] = v
    return v


for _v in (
    Variant("kuda", "kuda", {}, "KuDA as configured, dynamic fusion"),
    Variant("kuda_reference", "kuda", {"fusion_mode": "reference"},
            "the authors' computation (label ratio in training, none at evaluation)"),
    Variant("kuda_static", "kuda", {"use_ratio": False}, "static fusion: every modality weight 1"),
    Variant("kuda_no_knowledge", "kuda", {"use_knowledge": False},
            "adapters without stage-1 pre-training: adapters and decoders random, trained in stage 2"),
    Variant("kuda_no_adapters", "kuda", {"use_adapters": False},
            "no knowledge adapters at all: each encoder's own output (encoders and decoders from stage 1)"),
    # the fusion ablations: DAF replaced, same encoders, adapters, head, loss and ratio
    Variant("kuda_concat", "kuda", {"fusion": "concat"},
            "DAF replaced by concatenation (Linear 3D -> D, one Transformer layer)"),
    Variant("kuda_add", "kuda", {"fusion": "add"}, "DAF replaced by addition (weighted mean, one Transformer layer)"),
    Variant("kuda_late", "kuda", {"fusion": "late"},
            "DAF replaced by late fusion: the head on each modality, weighted mean of the predictions"),
    Variant("kuda_no_ce", "kuda", {"ce_weight": 0.0}, "no correlation-estimation loss"),
    Variant("kuda_consensus", "kuda", {"ratio_source": "consensus"}, "ratio target = mean unimodal score"),
    Variant("kuda_estimate", "kuda", {"ratio_source": "estimate"}, "ratio target = learned label-free estimate"),
    Variant("kuda_prediction", "kuda", {"ratio_source": "prediction"},
            "ratio target = the network's own static-fusion prediction"),
    Variant("kuda_reliability", "kuda", {"ratio_source": "reliability"},
            "ratio = scale-free reliability (inverse predicted error variance, lowered on disagreement)"),
    Variant("kuda_label", "kuda", {"ratio_source": "label"}, "ratio target = the label (training only)"),
    Variant("kuda_modality_dropout", "kuda", {"modality_dropout": 0.3},
            "modalities dropped (made missing) at random in training, p = 0.3"),
    # one difference between dynamic and reference mode each, on static fusion
    Variant("kuda_static_unmasked", "kuda", {"use_ratio": False, "mask_padding": False},
            "static fusion, padding averaged over as by the authors"),
    Variant("kuda_static_authors_dropout", "kuda", {"use_ratio": False, "authors_dropout": True},
            "static fusion, the authors' dropout placement"),
    Variant("kuda_static_authors_combine", "kuda", {"use_ratio": False, "authors_combine": True},
            "static fusion, the authors' training-time combine (LN_m per modality)"),
    # the same switches on dynamic fusion (the default ratio): what each costs dynamic mode
    Variant("kuda_unmasked", "kuda", {"mask_padding": False},
            "dynamic fusion, padding averaged over and attended to as by the authors (missing modalities then "
            "stay in F0 and the CE loss too)"),
    Variant("kuda_zero_padding", "kuda", {"mask_padding": False, "zero_padding": True},
            "dynamic fusion, padding averaged over as by the authors but zeroed first, so its content "
            "cannot change a prediction"),
    Variant("kuda_authors_dropout", "kuda", {"authors_dropout": True},
            "dynamic fusion, the authors' dropout placement"),
    Variant("kuda_authors_combine", "kuda", {"authors_combine": True},
            "dynamic fusion, the authors' training-time combine (LN_m per modality)"),
    Variant("lf_dnn", "lf_dnn", {}, "MMSA LF-DNN"),
    Variant("tfn", "tfn", {}, "MMSA TFN"),
    Variant("self_mm", "self_mm", {}, "MMSA Self-MM (BERT = the dataset's text encoder)"),
    Variant("lmf", "lmf", {}, "MMSA LMF"),
    Variant("mult", "mult", {}, "MMSA MulT (without CTC)"),
    Variant("misa", "misa", {}, "MMSA MISA (BERT = the dataset's text encoder)"),
):
    register_variant(_v)

DEFAULT_VARIANTS = ("kuda", "kuda_reference", "kuda_static", "kuda_no_knowledge", "kuda_no_ce",
                    "kuda_consensus", "kuda_estimate", "lf_dnn", "tfn", "self_mm")
