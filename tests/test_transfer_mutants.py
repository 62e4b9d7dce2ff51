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


# ---------------------------------------------------------------------- the whole load, with stand-ins
# knowledge_from 'sims' (labels [-1, 1], Chinese) into a 'mosi' run (labels [-3, 3], English)
SOURCE = {"dataset": "sims", "feature_file": "/d/sims.pkl", "label_range": [-1, 1], "has_unimodal_labels": True,
          "language": "zh"}


def _cross_run(tmp_path, **keys):
    return run_of(**{**dict(dataset_name="mosi", knowledge_from="sims", knowledge_source=dict(SOURCE), language="en",
                            label_range=[-3, 3], knowledge_dir=str(tmp_path / "k"), pretrained="bert-tiny",
                            feature_dims=[3, 5, 7], seq_lens=[4, 4, 4]), **keys})


class _Kuda:
    """What load_cross_dataset_knowledge uses of KuDA: its branches and the run's data facts."""

    def __init__(self):
        self.branches = {m: _Branch(feature_dim=5, seq_len=4, seed=i) for i, m in enumerate("TVA")}
        self.config = type("C", (), {"feature_dim": staticmethod(lambda m: 5), "seq_len": staticmethod(lambda m: 4)})


def _stand_ins(monkeypatch, tmp_path, checked=None, source_state=None):
    """read_features, check_text_data, ensure_knowledge, read_knowledge and load_knowledge_into
    replaced: the test sees what each was asked and what the load made of their answers."""
    seen = {"ensure": [], "specs": []}
    features = type("F", (), {"fingerprint": {"hash": "src"}, "feature_dims": [3, 5, 5], "seq_lens": [4, 4, 4],
                              "splits": {"train": None}})()

    def read_features(spec):
        seen["specs"].append(spec)
        return features

    def ensure_knowledge(job, datasets, auto_pretrain, allow_other_data, modalities):
        seen["ensure"].append({"job": job, "allow_other_data": allow_other_data, "modalities": list(modalities),
                               "auto": auto_pretrain})
        return {m: tmp_path / job.origin["dataset"] / f"{m}.pth" for m in modalities}

    def read_knowledge(path, m, command):
        state = (source_state or {}).get(m, _Branch(feature_dim=5, seq_len=4, seed=9).state_dict())
        return {"meta": {"feature_dim": 5, "seq_len": 4, "encoder": {"name": "bert-tiny"}, "uid": f"uid-{m}"},
                "state_dict": state}

    monkeypatch.setattr(transfer, "read_features", read_features)
    monkeypatch.setattr(transfer, "text_encoder_vocab_size", lambda p: 50)
    monkeypatch.setattr(transfer, "check_text_data", lambda *a, **k: checked)
    monkeypatch.setattr(transfer, "ensure_knowledge", ensure_knowledge)
    monkeypatch.setattr(transfer, "read_knowledge", read_knowledge)
    monkeypatch.setattr(transfer, "load_knowledge_into", lambda branch, path, m, cmd: {"meta": {"uid": "own-T"}})
    return seen


def test_the_source_is_read_like_a_runs_data_with_this_runs_encoder(monkeypatch, tmp_path):
    seen = _stand_ins(monkeypatch, tmp_path, checked={})
    transfer.read_source(_cross_run(tmp_path), need_text=True)
    transfer.read_source(_cross_run(tmp_path), need_text=False)
    text, no_text = seen["specs"]
    assert str(text.path) == "/d/sims.pkl" and text.use_bert and text.encoder_name == "bert-tiny"
    assert text.vocab_size == 50 and no_text.vocab_size is None    # token ids checked only when its text is used
    assert text.label_range == (-1, 1) and text.require_unimodal_labels is True
    assert "--knowledge-feature-file" in text.missing_hint


def test_the_source_job_has_this_runs_text_encoder_and_the_sources_data(monkeypatch, tmp_path):
    features = type("F", (), {"fingerprint": {"hash": "src"}, "feature_dims": [99, 8, 9], "seq_lens": [6, 7, 8]})()
    job = transfer.source_job(_cross_run(tmp_path), features)
    assert job.model.feature_dims == [3, 8, 9]          # the run's text width, the source's audio and vision
    assert job.model.seq_lens == [6, 7, 8] and job.origin["dataset"] == "sims"
    assert job.origin["data"] == {"hash": "src"} and job.data_name == "sims.pkl"
    assert "-d sims" in job.command and "--pretrained bert-tiny" in job.command   # the encoder, when no name was typed
    assert "--pretrained tiny-alias" in transfer.source_job(_cross_run(tmp_path, pretrained_arg="tiny-alias"),
                                                            features).command


@pytest.mark.parametrize("text", ["source", "own", "scratch"])
def test_a_cross_dataset_load_reports_each_modality_and_refuses_knowledge_of_other_data(
        text, monkeypatch, tmp_path, caplog):
    seen = _stand_ins(monkeypatch, tmp_path, checked={})
    kuda = _Kuda()
    caplog.set_level("INFO", logger="MMSA")
    where, uids, report = transfer.load_cross_dataset_knowledge(kuda, _cross_run(tmp_path, knowledge_text=text),
                                                                {"train": None})
    from_source = ["V", "A"] + (["T"] if text == "source" else [])
    assert seen["ensure"][0]["modalities"] == from_source and seen["ensure"][0]["job"].origin["dataset"] == "sims"
    assert all(e["allow_other_data"] is False for e in seen["ensure"])   # knowledge of other data: refused
    assert seen["specs"][0].vocab_size == (50 if text == "source" else None)   # its token ids matter only then
    for m in from_source:
        assert report[m]["source"] == "sims" and report[m]["rescaled"] is True and uids[m] == f"uid-{m}"
    assert "decoder rescaled from [-1, 1] to [-3, 3]" in caplog.text
    if text == "own":
        assert seen["ensure"][1]["job"].origin["dataset"] == "mosi" and seen["ensure"][1]["modalities"] == ["T"]
        assert report["T"] == {"source": "mosi", "path": str(tmp_path / "mosi" / "T.pth"), "rescaled": False,
                               "loaded": sorted(kuda.branches["T"].state_dict()), "fresh": []}
        assert uids["T"] == "own-T" and "(this dataset's own)" in where
    if text == "scratch":
        assert report["T"] == {"source": None, "path": None, "rescaled": False, "loaded": [],
                               "fresh": sorted(kuda.branches["T"].state_dict())}
        assert uids["T"] is None
    assert where.startswith(f"{', '.join(from_source)} from ")


def test_no_rescale_is_announced_when_the_label_ranges_agree(monkeypatch, tmp_path, caplog):
    _stand_ins(monkeypatch, tmp_path, checked={})
    caplog.set_level("INFO", logger="MMSA")
    _, _, report = transfer.load_cross_dataset_knowledge(_Kuda(), _cross_run(tmp_path, label_range=[-1, 1]))
    assert not any(r["rescaled"] for r in report.values()) and "rescaled" not in caplog.text


def test_a_mismatch_in_the_load_names_both_datasets_and_encoders(monkeypatch, tmp_path):
    _stand_ins(monkeypatch, tmp_path, checked={}, source_state={"T": _Branch(feature_dim=7).state_dict()})
    with pytest.raises(KudaCheckpointError) as e:
        transfer.load_cross_dataset_knowledge(_Kuda(), _cross_run(tmp_path))
    msg = str(e.value)
    assert "The text knowledge of dataset 'sims'" in msg and "cannot be used for 'mosi'" in msg
    assert msg.count("text encoder 'bert-tiny'") == 2          # the encoder on both sides


def test_source_text_in_another_language_without_a_tokenizer_to_check_is_refused(monkeypatch, tmp_path):
    _stand_ins(monkeypatch, tmp_path, checked=None)          # no tokenizer files: the ids cannot be checked
    with pytest.raises(KudaInputError, match=r"'sims' \(zh\) with this run's text encoder 'bert-tiny'.*"
                                             r"'mosi' is in another language \(en\)"):
        transfer.load_cross_dataset_knowledge(_Kuda(), _cross_run(tmp_path))
    transfer.load_cross_dataset_knowledge(_Kuda(), _cross_run(tmp_path, language="zh"))   # same language: loads
    transfer.load_cross_dataset_knowledge(_Kuda(), _cross_run(tmp_path, knowledge_text="scratch"))  # no text used
