"""KuDAOutput's dict view (model/outputs.py): code written for MMSA's dict outputs assigns
entries too (``out["M"] = ...``, a new key), and must read back what it wrote."""
import torch

from kuda_mmsa.model.outputs import KuDAOutput


def _output():
    t = torch.zeros(2, 1)
    return KuDAOutput(M=t, T=t, V=t, A=t, ratio=torch.full((2, 3), 1 / 3),
                      present=torch.ones(2, 3, dtype=torch.bool), ce=torch.tensor(0.0))


def test_assigning_an_entry_like_a_dict_reads_back():
    out = _output()
    out["M"] = torch.ones(2, 1)                  # a known field
    out["attention"] = torch.arange(3.0)         # a new key: an extra entry
    assert torch.equal(out.M, torch.ones(2, 1)) and torch.equal(out["M"], torch.ones(2, 1))
    assert torch.equal(out["attention"], torch.arange(3.0)) and "attention" in out
    assert "aux" not in out and out.get("aux") is None
    assert list(out) == ["M", "T", "V", "A", "ratio", "present", "ce", "attention"]
