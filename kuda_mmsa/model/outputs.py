"""What KuDA's forward returns: a typed output, read as ``out.M`` or, like a dict (MMSA's
convention and Hugging Face's ``ModelOutput``), as ``out["M"]``, ``"aux" in out`` and
``out.items()`` over the entries that are set."""
from dataclasses import dataclass, field, fields
from typing import Dict, Iterator, Optional, Tuple

import torch


@dataclass
class KuDAOutput:
    M: torch.Tensor                  # [B, 1] the prediction
    T: torch.Tensor                  # [B, 1] the unimodal scores, (T, V, A)
    V: torch.Tensor
    A: torch.Tensor
    ratio: torch.Tensor              # [B, 3] (T, V, A); uniform where no ratio acts
    present: torch.Tensor            # [B, 3] bool: the modality has a valid step
    ce: torch.Tensor                 # the correlation-estimation loss (unweighted scalar)
    aux: Optional[torch.Tensor] = None       # the ratio rule's own loss, given labels; the trainer adds it
    estimate: Optional[torch.Tensor] = None  # [B, 1] the agreement target of estimate / prediction
    log_var: Optional[torch.Tensor] = None   # [B, 3] the reliability heads' log error variance
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)   # what other ratio rules report

    @classmethod
    def known(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name != "extras")

    def with_report(self, report: Dict[str, torch.Tensor]) -> "KuDAOutput":
        """Adds a ratio rule's report: known names to their fields, others to ``extras``."""
        for name, value in report.items():
            if name in self.known():
                setattr(self, name, value)
            else:
                self.extras[name] = value
        return self

    # ---- the mapping view
    def keys(self) -> Tuple[str, ...]:
        return tuple(n for n in self.known() if getattr(self, n) is not None) + tuple(self.extras)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self.extras:
            return self.extras[name]
        value = getattr(self, name, None) if name in self.known() else None
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        self.with_report({name: value})

    def __contains__(self, name) -> bool:
        return name in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def get(self, name: str, default=None):
        return self[name] if name in self else default

    def items(self):
        return [(k, self[k]) for k in self.keys()]

    def values(self):
        return [self[k] for k in self.keys()]
