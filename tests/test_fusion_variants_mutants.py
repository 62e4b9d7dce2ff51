"""The fusion ablations (model/fusion_variants.py) against their definitions, written out
here from the module's contract: w_m = weight_m * present_m normalised to sum to M (all ones
when nothing is left), ``add`` = one Transformer layer over mean_m(w_m h_m), ``concat`` = one
layer over Linear(cat_m(w_m h_m)), ``late`` = mean_m(w_m head(pool_m)) with the pooled
representation mean_m(w_m pool_m); text padding is masked in the layer and in every mean."""
import pytest
import torch

from kuda_mmsa.model.fusion_variants import LateFusion, SequenceFusion, modality_weights
from test_model import make_config

B, L, D = 3, 6, 32


def _sources(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, L, D, generator=g) for _ in range(3)]


PAD = torch.tensor([[False] * 6, [False] * 4 + [True] * 2, [False] + [True] * 5])
WEIGHT = torch.tensor([[0.5, 1.0, 1.5], [3.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
PRESENT = torch.tensor([[True, True, True], [True, False, True], [True, True, False]])


def _weights_by_definition(weight, present):
    w = weight * present
    total = w.sum(-1, keepdim=True)
    return torch.where(total > 0, 3 * w / total, torch.ones_like(w))


def test_modality_weights_sum_to_m_over_present_modalities():
    got = modality_weights(WEIGHT, PRESENT)
    torch.testing.assert_close(got, _weights_by_definition(WEIGHT, PRESENT))
    torch.testing.assert_close(got, torch.tensor([[0.5, 1.0, 1.5], [3.0, 0.0, 0.0], [1.5, 1.5, 0.0]]))
    # nothing left (all weight on missing modalities): every modality counts 1
    torch.testing.assert_close(modality_weights(torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([[True, False, True]])),
                               torch.ones(1, 3))
    # a sample whose weights are all tiny still sums to M
    torch.testing.assert_close(modality_weights(torch.tensor([[1e-14, 0.0, 0.0]]), None), torch.tensor([[3.0, 0, 0]]))


def _masked_mean(x, pad):
    keep = (~pad).float()[..., None]
    return (x * keep).sum(1) / keep.sum(1)


@pytest.mark.parametrize("kind", ["add", "concat"])
def test_sequence_fusions_are_one_masked_layer_over_the_weighted_sources(kind):
    torch.manual_seed(0)
    fusion = SequenceFusion(make_config(fusion_dropout=0.0), kind, 3).eval()
    assert len(fusion.layer.layers) == 1
    sources = _sources()
    w = _weights_by_definition(WEIGHT, PRESENT)
    scaled = [h * w[:, i, None, None] for i, h in enumerate(sources)]
    f = sum(scaled) / 3 if kind == "add" else fusion.project(torch.cat(scaled, -1))
    with torch.no_grad():
        want = fusion.layer.layers[0](f, PAD)
        got = fusion(sources, WEIGHT, PAD, PRESENT)
        torch.testing.assert_close(got, want)
        # what sits at padded text positions never reaches a valid position
        noisy = [h.masked_fill(PAD[..., None], 7.0) for h in sources]
        torch.testing.assert_close(fusion(noisy, WEIGHT, PAD, PRESENT)[~PAD], got[~PAD])


def test_late_fusion_is_the_weighted_mean_of_the_modalities_scores():
    torch.manual_seed(0)
    head = torch.nn.Linear(D, 1)
    sources = _sources(1)
    w = _weights_by_definition(WEIGHT, PRESENT)
    pooled = [_masked_mean(h, PAD) for h in sources]
    want_pred = sum(head(p) * w[:, i, None] for i, p in enumerate(pooled)) / 3
    want_fused = sum(p * w[:, i, None] for i, p in enumerate(pooled)) / 3
    with torch.no_grad():
        pred, fused = LateFusion()(sources, WEIGHT, PAD, head, PRESENT)
        torch.testing.assert_close(pred, want_pred)
        torch.testing.assert_close(fused, want_fused)
