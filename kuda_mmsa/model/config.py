"""KuDAConfig: every number the network needs, read from MMSA's args dict.

The defaults are the paper's values (../shared/design/KUDA.md); configs/kuda.yaml is where
users change them. Shapes (feature dims, sequence lengths) always come from the data.
"""
from dataclasses import dataclass, field, fields
from typing import Any, List, Mapping, Optional

from ..errors import KudaInputError

FUSION_MODES = ("dynamic", "reference")
RATIO_SOURCES = ("consensus", "estimate", "prediction", "label")
# Internal modality order is the paper's (T, V, A); MMSA's lists are (T, A, V).
MODALITIES = ("T", "V", "A")


@dataclass
class KuDAConfig:
    # data facts (MMSA order T, A, V)
    feature_dims: List[int] = field(default_factory=lambda: [768, 25, 177])
    seq_lens: List[int] = field(default_factory=lambda: [50, 925, 232])
    pretrained: Any = "bert-base-chinese"
    # fusion
    fusion_mode: str = "dynamic"
    ratio_source: str = "consensus"
    ratio_k: float = 0.1
    use_ratio: bool = True
    use_knowledge: bool = True
    ce_weight: float = 0.1
    fusion_layers: int = 3
    hidden_size: int = 256
    fusion_heads: int = 8
    fusion_head_dim: int = 64
    fusion_ff_size: int = 512
    fusion_dropout: float = 0.3
    # unimodal encoders
    av_hidden_size: int = 128
    av_layers: int = 4
    av_heads: int = 8
    av_ff_size: int = 64
    av_dropout: float = 0.2
    text_adapter_layers: List[int] = field(default_factory=lambda: [3, 6, 9, 11])
    adapter_layers: int = 2
    adapter_heads: int = 4
    adapter_dropout: float = 0.1
    decoder_dropout: float = 0.1
    head_sizes: List[int] = field(default_factory=lambda: [64, 32])
    # memory: recompute encoder/adapter activations in backward (same results)
    gradient_checkpointing: bool = False

    @classmethod
    def from_dict(cls, args: Mapping[str, Any]) -> "KuDAConfig":
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: args[k] for k in known if k in args})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.fusion_mode not in FUSION_MODES:
            raise KudaInputError(
                f"Config key 'fusion_mode' must be one of {FUSION_MODES}, found {self.fusion_mode!r}."
            )
        if self.ratio_source not in RATIO_SOURCES:
            raise KudaInputError(
                f"Config key 'ratio_source' must be one of {RATIO_SOURCES}, found {self.ratio_source!r}."
            )
        if len(self.feature_dims) != 3 or len(self.seq_lens) != 3:
            raise KudaInputError(
                "Config keys 'feature_dims' and 'seq_lens' must list 3 values in MMSA's order "
                f"[text, audio, vision]; found feature_dims={self.feature_dims}, seq_lens={self.seq_lens}."
            )
        for name, width, heads in (
            ("hidden_size/fusion_heads", self.hidden_size, self.fusion_heads),
            ("av_hidden_size/av_heads", self.av_hidden_size, self.av_heads),
            ("av_hidden_size/2 / adapter_heads", self.av_hidden_size // 2, self.adapter_heads),
        ):
            if width % heads:
                raise KudaInputError(
                    f"Config {name}: width {width} is not divisible by the number of heads {heads}."
                )

    # per-modality views in the paper's order ------------------------------------------
    def seq_len(self, m: str) -> int:
        return int(self.seq_lens[{"T": 0, "A": 1, "V": 2}[m]])

    def feature_dim(self, m: str) -> int:
        return int(self.feature_dims[{"T": 0, "A": 1, "V": 2}[m]])


def scaled_layer_indices(indices: List[int], depth: int, reference_depth: int = 12) -> List[int]:
    """Map BERT-base hidden-state indices (of 12 layers) to an encoder of `depth` layers.

    Rounds half up and clamps to [1, depth], so a 12-layer BERT keeps the paper's 3, 6, 9, 11.
    """
    out = []
    for i in indices:
        j = int(i * depth / reference_depth + 0.5)
        out.append(min(max(j, 1), depth))
    return out
