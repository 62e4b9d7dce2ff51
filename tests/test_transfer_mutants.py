"""kuda_mmsa.training.transfer's rules (knowledge from another dataset), each against a
reference written here: when a run is cross-dataset, which modalities' knowledge is frozen,
which tensors transfer (the data-shaped projection and position embeddings only when the data
agree), what a mismatch says, and the decoder's affine rescale to the run's label range.
"""
import pytest
import torch
from torch import nn

from kuda_mmsa.errors import KudaCheckpointError, KudaInputError
from kuda_mmsa.training import transfer
from tiny_kuda import run_of


def test_a_run_is_cross_dataset_only_with_knowledge_from_another_dataset():
    assert not run_of(dataset_name="mosi").cross_dataset
    assert not run_of(dataset_name="mosi", knowledge_from="").cross_dataset
    assert not run_of(dataset_name="mosi", knowledge_from="mosi").cross_dataset
    assert run_of(dataset_name="mosi", knowledge_from="sims").cross_dataset


def test_the_frozen_knowledge_is_every_modality_unless_text_starts_from_scratch():
    cross = {"dataset_name": "mosi", "knowledge_from": "sims"}
    assert transfer.knowledge_modalities(run_of()) == ("T", "V", "A")
    assert transfer.knowledge_modalities(run_of(use_knowledge=False, **cross)) == ()
    assert transfer.knowledge_modalities(run_of(**cross, knowledge_text="scratch")) == ("V", "A")
    assert transfer.knowledge_modalities(run_of(**cross, knowledge_text="own")) == ("T", "V", "A")
    assert transfer.knowledge_modalities(run_of(**cross)) == ("T", "V", "A")
    assert transfer.knowledge_modalities(run_of(dataset_name="sims", knowledge_from="sims",
                                                knowledge_text="scratch")) == ("T", "V", "A")

    class Model:
        def freeze_knowledge(self, modalities):
            self.frozen = modalities

    m = Model()
    transfer.freeze_knowledge(m, iter(["V", "A"]))
    assert m.frozen == ("V", "A")


def test_the_source_must_say_where_its_features_are():
    for info in (None, {}, {"dataset": "sims", "feature_file": ""}):
        with pytest.raises(KudaInputError, match="knowledge_from 'sims' is set but the run's arguments do not say "
                                                 "where that dataset's features are"):
            transfer.source_info(run_of(knowledge_from="sims", knowledge_source=info))
    info = {"dataset": "sims", "feature_file": "/s.pkl"}
    got = transfer.source_info(run_of(knowledge_source=info))
    assert got == info
    got["dataset"] = "changed"
    assert info["dataset"] == "sims"            # a copy: the run's arguments stay as they were


class _Branch(nn.Module):
    """A stand-in branch with KuDA's naming: the data-shaped proj.* and pos, the rest not."""

    def __init__(self, feature_dim=5, seq_len=4, width=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.proj = nn.Linear(feature_dim, width)
        self.pos = nn.Parameter(torch.randn(1, seq_len, width))
        self.encoder = nn.Linear(width, width)
        self.decoder = nn.Sequential(nn.Linear(width, 2), nn.GELU(), nn.Linear(2, 1))


def test_a_decoder_is_rescaled_affinely_to_the_runs_label_range():
    branch = _Branch()
    x = torch.randn(6, 3)
    before = branch.decoder(x).detach()
    assert not transfer.rescale_decoder(branch, (-1, 1), [-1.0, 1.0])
    torch.testing.assert_close(branch.decoder(x).detach(), before, rtol=0, atol=0)
    assert transfer.rescale_decoder(branch, (0, 1), (-3, 3))          # y in [0, 1] -> -3 + 6 y
    torch.testing.assert_close(branch.decoder(x).detach(), -3 + 6 * before, rtol=1e-6, atol=1e-6)
    first = _Branch().decoder[0].weight
    torch.testing.assert_close(branch.decoder[0].weight, first)        # only the last layer changes


def test_data_shaped_tensors_transfer_only_when_the_data_agree():
    facts = lambda dim, length: {"dataset": "x", "feature_dim": dim, "seq_len": length}
    src = _Branch(feature_dim=7, seq_len=4, seed=1)
    dst = _Branch(feature_dim=5, seq_len=4, seed=2)
    own_proj = dst.proj.weight.detach().clone()
    got = transfer.transfer_state(dst, src.state_dict(), "V", "/k/vision.pth", facts(7, 4), facts(5, 4))
    assert got["fresh"] == ["proj.bias", "proj.weight"]
    assert got["loaded"] == sorted(k for k in dst.state_dict() if not k.startswith("proj."))
    torch.testing.assert_close(dst.proj.weight, own_proj, rtol=0, atol=0)
    for k in got["loaded"]:
        torch.testing.assert_close(dst.state_dict()[k], src.state_dict()[k], rtol=0, atol=0)

    src = _Branch(feature_dim=5, seq_len=9, seed=1)
    dst = _Branch(feature_dim=5, seq_len=4, seed=2)
    got = transfer.transfer_state(dst, src.state_dict(), "A", "/k/audio.pth", facts(5, 9), facts(5, 4))
    assert got["fresh"] == ["pos"] and "proj.weight" in got["loaded"]


def test_text_knowledge_never_skips_a_tensor_and_a_mismatch_names_both_sides():
    enc = {"name": "bert", "hidden_size": 3, "vocab_size": 10, "layers": 2}
    src = _Branch(feature_dim=7)
    dst = _Branch(feature_dim=5)
    with pytest.raises(KudaCheckpointError) as e:
        transfer.transfer_state(dst, src.state_dict(), "T", "/k/text.pth",
                                {"dataset": "sims", "encoder": enc}, {"dataset": "mosi", "encoder": enc})
    text = str(e.value)
    assert text.startswith("The text knowledge of dataset 'sims' (/k/text.pth) cannot be used for 'mosi': "
                           "proj.weight is [3, 7] there and [3, 5] here. Source: text encoder 'bert' "
                           "(hidden 3, vocabulary 10, 2 layers); this run: text encoder 'bert'")
    assert " and more" not in text


def test_missing_and_extra_tensors_are_named_and_counted():
    facts = {"dataset": "sims", "feature_dim": 5, "seq_len": 4}
    state = _Branch().state_dict()
    del state["encoder.weight"]
    state["extra.a"] = torch.ones(1)
    with pytest.raises(KudaCheckpointError, match=r"cannot be used for 'sims': encoder.weight is missing there; "
                                                  r"extra.a there has no place here\. Source: feature dim 5, "
                                                  r"padded length 4; this run: feature dim 5"):
        transfer.transfer_state(_Branch(), state, "V", "/k/v.pth", facts, facts)
    for k in ("extra.b", "extra.c"):
        state[k] = torch.ones(1)
    with pytest.raises(KudaCheckpointError, match=r"extra.b there has no place here and more\. Source"):
        transfer.transfer_state(_Branch(), state, "V", "/k/v.pth", facts, facts)
