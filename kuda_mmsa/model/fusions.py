"""The fusions (config key ``fusion``), one registered class each: what turns the aligned
modality sequences and their weights into the prediction.

A fusion builds its modules (registered on the model under the names it gives, so they are in
its state dict) and, called with the model, returns (prediction [B, 1], pooled fused
representation [B, D] that the correlation-estimation loss compares with the modalities).
Add one with a class and ``@FUSIONS.register()`` (README "Extending")."""
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..registry import FUSIONS
from .fusion import DAFBlock
from .fusion_variants import LateFusion, SequenceFusion
from .layers import masked_mean


class Fusion:
    name: ClassVar[str] = ""
    help: ClassVar[str] = ""

    def __init__(self, config, num_modalities: int):
        self.config, self.num_modalities = config, num_modalities

    def modules(self) -> Dict[str, nn.Module]:
        return {}

    def __call__(self, model: nn.Module, sources: List[torch.Tensor], weight: torch.Tensor,
                 text_pad: Optional[torch.Tensor], reference_ratio: Optional[torch.Tensor],
                 present: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


@FUSIONS.register()
class DAF(Fusion):
    name = "daf"

    def modules(self):
        return {"blocks": nn.ModuleList(DAFBlock(self.config, self.num_modalities)
                                        for _ in range(self.config.fusion_layers))}

    def __call__(self, model, sources, weight, text_pad, reference_ratio, present):
        if present is not None and model.dynamic:   # F0 over the present modalities
            w = present.to(sources[0].dtype)
            f = sum(h * w[:, i, None, None] for i, h in enumerate(sources))
        else:
            f = sum(sources)
        for block in model.blocks:
            f = block(f, sources, weight.to(f.dtype), text_pad, reference_ratio)
        fused = masked_mean(f, text_pad)
        return model.head(fused), fused


class _Sequence(Fusion):
    def modules(self):
        return {"fusion_variant": SequenceFusion(self.config, self.name, self.num_modalities)}

    def __call__(self, model, sources, weight, text_pad, reference_ratio, present):
        fused = masked_mean(model.fusion_variant(sources, weight, text_pad, present), text_pad)
        return model.head(fused), fused


@FUSIONS.register()
class Concat(_Sequence):
    name = "concat"


@FUSIONS.register()
class Add(_Sequence):
    name = "add"


@FUSIONS.register()
class Late(Fusion):
    name = "late"

    def modules(self):
        return {"fusion_variant": LateFusion()}

    def __call__(self, model, sources, weight, text_pad, reference_ratio, present):
        return model.fusion_variant(sources, weight, text_pad, model.head, present)
