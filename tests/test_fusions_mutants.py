"""The fusions as the model calls them (model/fusions.py, found by tools/mutate.py): a fusion
ablation gets the text padding and the presence of each modality from the model, so padded
text positions and a missing modality change nothing through concat, add or late fusion either."""
import pytest
import torch

from kuda_mmsa.model.fusions import Fusion
from test_model import make_batch, make_config, make_model
from test_promises import _short_text_batch

VARIANTS = ("concat", "add", "late")


@pytest.mark.parametrize("fusion", VARIANTS)
def test_what_sits_at_padded_text_positions_never_changes_a_fusion_ablation(fusion):
    model = make_model(fusion=fusion).eval()
    inputs, _ = _short_text_batch(max_len=7)
    with torch.no_grad():
        ref = model(**inputs)
        for align in model.align.values():      # what the alignment puts at padded positions
            align.time.weight[7:].normal_(0, 3.0)
            align.time.bias[7:].normal_(0, 3.0)
        out = model(**inputs)
    for k in ("M", "ce"):
        torch.testing.assert_close(out[k], ref[k], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fusion", VARIANTS)
@pytest.mark.parametrize("missing", ["V", "A"])
def test_a_missing_modality_changes_nothing_in_a_static_fusion_ablation(fusion, missing):
    """Static fusion weights every modality 1, so only the presence the model passes on keeps a
    missing modality out: its whole path (encoder, alignment) must not reach the prediction."""
    model = make_model(fusion=fusion, use_ratio=False).eval()
    inputs, _ = make_batch()
    key = {"V": "vision", "A": "audio"}[missing]
    inputs[f"{key}_lengths"] = torch.tensor([0, 0, 3, 0])
    with torch.no_grad():
        ref = model(**inputs)
        for p in list(model.branches[missing].parameters()) + list(model.align[missing].parameters()):
            p.add_(torch.randn_like(p))
        out = model(**inputs)
    missing_rows = torch.tensor([True, True, False, True])
    torch.testing.assert_close(out["M"][missing_rows], ref["M"][missing_rows], atol=1e-5, rtol=1e-5)
    assert (out["M"][~missing_rows] - ref["M"][~missing_rows]).abs().max() > 1e-4   # present there: it counts


def test_a_fusion_without_a_computation_says_so():
    """README "Extending": a new fusion is a class with __call__; one that forgets it must fail
    loudly, not return nothing."""
    with pytest.raises(NotImplementedError):
        Fusion(make_config(), 3)(None, [], torch.ones(1, 3), None, None, None)
