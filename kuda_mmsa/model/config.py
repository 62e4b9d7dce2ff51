"""KuDAConfig: every number the network needs.

Its fields are the ``model`` section of the configuration schema (kuda_mmsa.config.schema:
defaults = the paper's values, ranges and help live there, once; ``default("name")`` reads
them) plus two data facts that always come from the data: ``feature_dims`` and ``seq_lens``
(MMSA's order T, A, V). A test checks that the fields here and the schema's model keys are
the same set, so a key added to the schema without a field here (or the reverse) fails.
"""
import copy
from dataclasses import dataclass, field, fields
from typing import Any, List, Mapping, Optional

from ..config.schema import FUSION_MODES, SCHEMA, keys_of
from ..errors import KudaInputError

# Internal modality order is the paper's (T, V, A); MMSA's lists are (T, A, V).
MODALITIES = ("T", "V", "A")
_MMSA_INDEX = {"T": 0, "A": 1, "V": 2}


def default(name: str):
    """The schema's default of key ``name`` (any section), as a dataclass field default."""
    value = SCHEMA[name].default
    if isinstance(value, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(value))
    return field(default=value)


@dataclass
class KuDAConfig:
    # data facts, MMSA's order [text, audio, vision]
    feature_dims: List[int]
    seq_lens: List[int]
    # fusion (see the schema's help of each key)
    fusion_mode: str = default("fusion_mode")
    fusion: str = default("fusion")
    ratio_source: str = default("ratio_source")
    ratio_k: float = default("ratio_k")
    ratio_agreement: float = default("ratio_agreement")
    use_ratio: bool = default("use_ratio")
    use_knowledge: bool = default("use_knowledge")
    use_adapters: bool = default("use_adapters")
    modality_dropout: float = default("modality_dropout")
    mask_padding: bool = default("mask_padding")
    zero_padding: bool = default("zero_padding")
    authors_dropout: bool = default("authors_dropout")
    authors_combine: bool = default("authors_combine")
    fusion_layers: int = default("fusion_layers")
    hidden_size: int = default("hidden_size")
    fusion_heads: int = default("fusion_heads")
    fusion_head_dim: int = default("fusion_head_dim")
    fusion_ff_size: int = default("fusion_ff_size")
    fusion_dropout: float = default("fusion_dropout")
    head_sizes: List[int] = default("head_sizes")
    # unimodal encoders; ``pretrained`` may also be a transformers config or a module (tests, benchmarks)
    pretrained: Optional[Any] = default("pretrained")
    av_hidden_size: int = default("av_hidden_size")
    av_layers: int = default("av_layers")
    av_heads: int = default("av_heads")
    av_ff_size: int = default("av_ff_size")
    av_dropout: float = default("av_dropout")
    text_adapter_layers: List[int] = default("text_adapter_layers")
    adapter_layers: int = default("adapter_layers")
    adapter_heads: int = default("adapter_heads")
    adapter_dropout: float = default("adapter_dropout")
    decoder_dropout: float = default("decoder_dropout")
    gradient_checkpointing: str = default("gradient_checkpointing")

    def __post_init__(self) -> None:
        for key in keys_of("model"):
            if key.name == "pretrained":  # also a config object or a module (tests, benchmarks)
                continue
            setattr(self, key.name, key.check(getattr(self, key.name), "model config"))
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

    @classmethod
    def from_dict(cls, args: Mapping[str, Any]) -> "KuDAConfig":
        """The model config from an MMSA args dict (extra keys are ignored: they belong to
        training or to MMSA)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: args[k] for k in known if k in args})

    def authors(self, part: str) -> bool:
        """Whether the authors' choice for ``part`` ('dropout', 'combine', 'padding') applies:
        always in reference mode, per switch in dynamic mode."""
        if self.fusion_mode == "reference":
            return True
        return {"dropout": self.authors_dropout, "combine": self.authors_combine,
                "padding": not self.mask_padding}[part]

    def zeroes_padding(self) -> bool:
        """Whether padded vision/audio frames are zeroed before the encoders: only where the
        means run over padding (unmasked dynamic mode); masked, padding is ignored anyway, and
        reference mode is the authors' computation, which keeps the padding's content."""
        return self.zero_padding and self.fusion_mode != "reference" and not self.mask_padding

    def seq_len(self, m: str) -> int:
        return int(self.seq_lens[_MMSA_INDEX[m]])

    def feature_dim(self, m: str) -> int:
        return int(self.feature_dims[_MMSA_INDEX[m]])


def scaled_layer_indices(indices: List[int], depth: int, reference_depth: int = 12) -> List[int]:
    """Map BERT-base hidden-state indices (of 12 layers) to an encoder of `depth` layers.

    Rounds half up and clamps to [1, depth], so a 12-layer BERT keeps the paper's 3, 6, 9, 11.
    """
    out = []
    for i in indices:
        j = int(i * depth / reference_depth + 0.5)
        out.append(min(max(j, 1), depth))
    return out


__all__ = ["KuDAConfig", "MODALITIES", "FUSION_MODES", "scaled_layer_indices"]
