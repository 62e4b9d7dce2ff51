"""What model/ratio.py promises beyond the laws in test_properties.py: the learned heads'
shapes are the checkpoint format (weights saved by this version must load, so their widths
are fixed and written here), the reliability NLL is a mean over the present (sample,
modality) pairs, the consensus target is the plain mean when nothing is missing, and a
rule a newcomer leaves unfinished fails loudly rather than returning nothing."""
import pytest
import torch

from kuda_mmsa.model.ratio import (Agreement, Consensus, RatioEstimator, RatioInputs, RatioRule,
                                   ReliabilityHeads)


def test_the_learned_heads_have_the_checkpoint_format():
    # the estimator: 3 scores -> 16 -> 1; a reliability head per modality: width -> 32 -> 1
    est = {k: tuple(v.shape) for k, v in RatioEstimator(3).state_dict().items()}
    assert est == {"mlp.0.weight": (16, 3), "mlp.0.bias": (16,), "mlp.2.weight": (1, 16), "mlp.2.bias": (1,)}
    rel = {k: tuple(v.shape) for k, v in ReliabilityHeads([40, 24, 8]).state_dict().items()}
    for m, width in enumerate([40, 24, 8]):
        assert rel[f"heads.{m}.0.weight"] == (32, width) and rel[f"heads.{m}.2.weight"] == (1, 32)


def test_the_reliability_nll_is_a_mean_over_present_pairs():
    g = torch.Generator().manual_seed(0)
    log_var, scores = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    labels = torch.randn(2, 1, generator=g)
    terms = (scores - labels) ** 2 * torch.exp(-log_var) + log_var
    for present in (torch.tensor([[True, False, False], [False, False, False]]),     # one pair
                    torch.tensor([[True, True, False], [True, False, True]])):        # four pairs
        want = terms[present].mean()
        torch.testing.assert_close(ReliabilityHeads.nll(log_var, scores, labels, present), want)
    torch.testing.assert_close(ReliabilityHeads.nll(log_var, scores, labels, None), terms.mean())


def test_the_consensus_target_without_a_presence_mask_is_the_row_mean():
    scores = torch.tensor([[0.3, -0.6, 0.9], [1.0, 2.0, 4.5]])
    got = Consensus.mean(scores)
    assert got.shape == (2, 1)
    torch.testing.assert_close(got, torch.tensor([[0.2], [2.5]]))


def test_an_unfinished_rule_fails_loudly():
    x = RatioInputs(scores=torch.zeros(1, 3), present=torch.ones(1, 3, dtype=torch.bool), labels=None,
                    training=False, pooled=lambda: [], static_prediction=lambda: torch.zeros(1, 1))
    with pytest.raises(NotImplementedError):
        RatioRule(config=None)(None, x)
    with pytest.raises(NotImplementedError):
        Agreement(config=None)(None, x)
