"""KuDAConfig: every number the network needs.

Its fields are the ``model`` section of the configuration schema (kuda_mmsa.config.schema:
names, defaults = the paper's values, ranges and help live there, once) plus two data facts
that always come from the data: ``feature_dims`` and ``seq_lens`` (MMSA's order T, A, V).
"""
from dataclasses import field, fields, make_dataclass
from typing import Any, List, Mapping

from ..config.schema import FUSION_MODES, RATIO_SOURCES, keys_of
from ..errors import KudaInputError

# Internal modality order is the paper's (T, V, A); MMSA's lists are (T, A, V).
MODALITIES = ("T", "V", "A")
_MMSA_INDEX = {"T": 0, "A": 1, "V": 2}
_MODEL_KEYS = {k.name: k for k in keys_of("model")}


def _field(key):
    import copy

    default = key.default
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d))
    return field(default=default)


def _post_init(self) -> None:
    for name, key in _MODEL_KEYS.items():
        if name == "pretrained":  # also a config object or a module (tests, benchmarks)
            continue
        setattr(self, name, key.check(getattr(self, name), "model config"))
    if len(self.feature_dims) != 3 or len(self.seq_lens) != 3:
        raise KudaInputError(
            "feature_dims and seq_lens must list 3 values in MMSA's order [text, audio, vision]; "
            f"found feature_dims={self.feature_dims}, seq_lens={self.seq_lens}.")
    for name, width, heads in (
        ("hidden_size / fusion_heads", self.hidden_size, self.fusion_heads),
        ("av_hidden_size / av_heads", self.av_hidden_size, self.av_heads),
        ("av_hidden_size/2 / adapter_heads", self.av_hidden_size // 2, self.adapter_heads),
    ):
        if width % heads:
            raise KudaInputError(
                f"Config {name}: width {width} is not divisible by the number of heads {heads}.")


def _from_dict(cls, args: Mapping[str, Any]) -> "KuDAConfig":
    """The model config from an MMSA args dict (extra keys are ignored: they belong to
    training or to MMSA)."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: args[k] for k in known if k in args})


def _authors(self, part: str) -> bool:
    """Whether the authors' choice for ``part`` ('dropout', 'combine', 'padding') applies:
    always in reference mode, per switch in dynamic mode."""
    if self.fusion_mode == "reference":
        return True
    return {"dropout": self.authors_dropout, "combine": self.authors_combine,
            "padding": not self.mask_padding}[part]


def _seq_len(self, m: str) -> int:
    return int(self.seq_lens[_MMSA_INDEX[m]])


def _feature_dim(self, m: str) -> int:
    return int(self.feature_dims[_MMSA_INDEX[m]])


KuDAConfig = make_dataclass(
    "KuDAConfig",
    [("feature_dims", List[int]), ("seq_lens", List[int])]
    + [(name, Any, _field(key)) for name, key in _MODEL_KEYS.items()],
    namespace={
        "__post_init__": _post_init,
        "from_dict": classmethod(_from_dict),
        "seq_len": _seq_len,
        "authors": _authors,
        "feature_dim": _feature_dim,
        "__doc__": __doc__,
    },
)
KuDAConfig.__module__ = __name__


def scaled_layer_indices(indices: List[int], depth: int, reference_depth: int = 12) -> List[int]:
    """Map BERT-base hidden-state indices (of 12 layers) to an encoder of `depth` layers.

    Rounds half up and clamps to [1, depth], so a 12-layer BERT keeps the paper's 3, 6, 9, 11.
    """
    out = []
    for i in indices:
        j = int(i * depth / reference_depth + 0.5)
        out.append(min(max(j, 1), depth))
    return out


__all__ = ["KuDAConfig", "MODALITIES", "FUSION_MODES", "RATIO_SOURCES", "scaled_layer_indices"]
