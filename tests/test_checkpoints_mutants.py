"""kuda_mmsa.training.checkpoints, the promises users meet directly: a failed write says what
failed and keeps the old file, refusals name what differs (and how many more), knowledge lives
in a folder named by dataset, text encoder and settings, a knowledge file is checked for its
format, modality, origin and every tensor shape, and a stale resume state is refused or
(tuning) removed with a note. Each reference is written out here.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kuda_mmsa.errors import KudaCheckpointError, KudaInputError, KudaStaleStateError
from kuda_mmsa.training import checkpoints as ck


# ---------------------------------------------------------------------- writing
def test_a_failed_torch_save_names_its_first_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "w.pth"
    ck.atomic_save({"a": torch.ones(2)}, target)

    def broken(obj, f, *a, **k):
        Path(f).write_bytes(b"half")
        raise RuntimeError("unexpected pos 64 vs 0\nsecond line of torch's message")

    monkeypatch.setattr(ck.torch, "save", broken)
    with pytest.raises(KudaInputError) as e:
        ck.atomic_save({"a": torch.zeros(2)}, target)
    assert "torch.save: unexpected pos 64 vs 0" in str(e.value) and "second line" not in str(e.value)
    assert torch.load(target, weights_only=True)["a"].tolist() == [1.0, 1.0]

    monkeypatch.setattr(ck.torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("  ")))
    with pytest.raises(KudaInputError, match="torch.save: torch.save failed"):
        ck.atomic_save({"a": torch.zeros(2)}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["w.pth"]


def test_a_saved_file_holds_what_was_saved(tmp_path):
    path = ck.atomic_save({"x": torch.arange(3), "n": 2}, tmp_path / "sub" / "s.pth")
    assert path == tmp_path / "sub" / "s.pth"
    got = torch.load(path, weights_only=True)
    assert got["n"] == 2 and got["x"].tolist() == [0, 1, 2]


def test_weights_info_sits_next_to_the_weights():
    assert ck.weights_info_path("runs/kuda-demo.pth") == Path("runs/kuda-demo.pth.json")


# ---------------------------------------------------------------------- plain values
def test_plain_turns_numbers_paths_devices_sets_and_tuples_into_json_types():
    got = ck.plain({"i": np.int64(3), "f": np.float32(0.5), "t": torch.tensor(2.5), "p": Path("a/b"),
                    "d": torch.device("cpu"), "s": {"b", "a"}, "fs": frozenset({2, 1}), "tu": (1, 2),
                    "o": slice(1, 2)})
    assert got == {"i": 3, "f": 0.5, "t": 2.5, "p": "a/b", "d": "cpu", "s": ["a", "b"], "fs": [1, 2],
                   "tu": [1, 2], "o": "slice(1, 2, None)"}
    assert type(got["i"]) is int


# ---------------------------------------------------------------------- naming differences
def test_differences_name_every_changed_added_and_removed_entry():
    old = {"a": 1, "b": {"c": 2, "d": 3}, "gone": 0}
    new = {"a": 1, "b": {"c": 5, "d": 3}, "new": 0}
    assert ck.differences(old, new) == ["b.c", "gone", "new"]
    assert ck.differences(old, dict(old)) == []
    assert ck.differences(1, 2) == ["(value)"] and ck.differences(1, 1) == []
    assert ck.differences({"a": {"x": 1}}, {"a": 3}) == ["a"]


def test_a_description_shows_six_differences_then_counts_the_rest():
    old = {f"k{i}": i for i in range(8)}
    six = dict(old, **{f"k{i}": -1 for i in range(6)})
    text = ck.describe_differences(old, six)
    assert text == "; ".join(f"k{i}: {i} -> -1" for i in range(6))        # exactly the limit: no count
    seven = dict(six, k6=-1)
    assert ck.describe_differences(old, seven) == text + " and 1 more"
    assert ck.describe_differences({"a": 1}, {}) == "a: 1 -> '<absent>'"


def test_a_description_shortens_only_long_nested_values():
    short = {"x": ["a" * 56]}                      # json: exactly 60 characters, shown whole
    assert len(json.dumps(short["x"])) == 60
    assert ck.describe_differences({"x": []}, short) == f"x: [] -> {short['x']!r}"
    long = {"x": ["a" * 57]}
    assert ck.describe_differences({"x": []}, long) == "x: [] -> '<...>'"
    assert ck.describe_differences({"s": "a" * 80}, {"s": "b"}) == f"s: {'a' * 80!r} -> 'b'"
    assert ck.describe_differences({"a": {"b": 1}}, {"a": {"b": 2}}) == "a.b: 1 -> 2"


# ---------------------------------------------------------------------- reading
def test_a_missing_or_unreadable_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(KudaCheckpointError, match=r"Weights .*nope.pth does not exist"):
        ck.read_checkpoint(tmp_path / "nope.pth", "Weights")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(KudaCheckpointError, match=r"could not be read \(\w+Error: .+\)\. The file is truncated"):
        ck.read_checkpoint(bad, "Weights")
    good = ck.atomic_save({"a": 1}, tmp_path / "g.pth")
    assert ck.read_checkpoint(str(good), "Weights") == {"a": 1}


# ---------------------------------------------------------------------- knowledge folders
def test_the_encoder_tag_is_the_encoders_name_made_folder_safe(tmp_path):
    class Tokenizer:
        name_or_path = "org/bert base"

    assert ck.encoder_tag(Tokenizer()) == "org_bert_base"
    assert ck.encoder_tag("bert-base-uncased") == "bert-base-uncased"
    folder = tmp_path / "my bert"
    folder.mkdir()
    assert ck.encoder_tag(str(folder) + "/") == "my_bert"          # a local folder: its name
    assert ck.encoder_tag("name/") == "name"
    assert ck.encoder_tag("") == "text-encoder"


def test_knowledge_lives_under_dataset_encoder_and_settings(tmp_path, monkeypatch):
    a = {"epochs": 3, "seed": 1}
    sid = ck.settings_id(a)
    assert len(sid) == 10 and sid == ck.settings_id({"seed": 1, "epochs": 3})   # key order does not matter
    assert sid != ck.settings_id({"epochs": 4, "seed": 1})
    assert ck.knowledge_folder(tmp_path, "mosi", "bert", a) == tmp_path / "mosi" / "bert" / sid
    monkeypatch.setenv("KUDA_MMSA_KNOWLEDGE_DIR", str(tmp_path / "env"))
    assert ck.knowledge_folder(None, "mosi", "bert", a) == tmp_path / "env" / "mosi" / "bert" / sid
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ck.knowledge_folder("~/k", "mosi", "bert", a) == tmp_path / "home" / "k" / "mosi" / "bert" / sid
    paths = ck.knowledge_paths(tmp_path, "mosi", "bert", a)
    assert {m: p.name for m, p in paths.items()} == {"T": "text.pth", "V": "vision.pth", "A": "audio.pth"}
    assert all(p.parent == tmp_path / "mosi" / "bert" / sid for p in paths.values())


# ---------------------------------------------------------------------- knowledge files
def _branch():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))


def test_knowledge_round_trips_with_its_metadata_and_a_fresh_uid(tmp_path):
    branch = _branch()
    p1 = ck.save_knowledge(branch, tmp_path / "audio.pth", "A", {"data": {"splits": (1, 2)}})
    p2 = ck.save_knowledge(branch, tmp_path / "audio2.pth", "A", {})
    ckpt = ck.read_knowledge(p1, "A", "CMD")
    assert ckpt["format"] == ck.KNOWLEDGE_FORMAT and ckpt["modality"] == "A"
    assert ckpt["meta"]["data"] == {"splits": [1, 2]} and ckpt["meta"]["version"]
    assert len(ckpt["meta"]["uid"]) == 32 and ckpt["meta"]["uid"] != ck.read_knowledge(p2, "A", "CMD")["meta"]["uid"]
    other = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    got = ck.load_knowledge_into(other, p1, "A", "CMD")
    assert got["meta"]["uid"] == ckpt["meta"]["uid"]
    for k, v in branch.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)


@pytest.mark.parametrize("modality, name", [("T", "text"), ("V", "vision"), ("A", "audio")])
def test_knowledge_of_another_modality_or_format_is_refused_with_the_command(tmp_path, modality, name):
    wrong = "A" if modality != "A" else "T"
    path = ck.save_knowledge(_branch(), tmp_path / "k.pth", wrong, {})
    with pytest.raises(KudaCheckpointError, match=f"Stage-1 checkpoint .* holds modality '{wrong}', "
                                                  f"expected '{modality}'. Re-create it with: CMD"):
        ck.read_knowledge(path, modality, "CMD")
    ck.atomic_save({"format": "kuda_mmsa.knowledge/1", "modality": modality}, tmp_path / "old.pth")
    with pytest.raises(KudaCheckpointError, match="found 'kuda_mmsa.knowledge/1'"):
        ck.read_knowledge(tmp_path / "old.pth", modality, "CMD")
    ck.atomic_save([1, 2], tmp_path / "list.pth")
    with pytest.raises(KudaCheckpointError, match="found 'list'"):
        ck.read_knowledge(tmp_path / "list.pth", modality, "CMD")
    with pytest.raises(KudaCheckpointError, match=f"Stage-1 {name} checkpoint .* does not exist"):
        ck.read_knowledge(tmp_path / "none.pth", modality, "CMD")


def test_data_content_keeps_the_splits_and_drops_where_the_file_is():
    assert ck.data_content(None) is None and ck.data_content({}) is None
    assert ck.data_content({"path": "/a", "splits": {"train": (3, 4)}}) == {"splits": {"train": [3, 4]}}


def test_knowledge_origin_checks_data_then_encoder():
    meta = {"data": {"path": "/old", "splits": {"train": 3}}, "encoder": {"name": "bert"}}
    ckpt = {"meta": meta}
    moved = {"data": {"path": "/new", "splits": {"train": 3}}, "encoder": {"name": "bert"}}
    ck.check_knowledge_origin(ckpt, "/k/audio.pth", "A", moved, "CMD")          # a moved file is the same data
    other_data = {"data": {"splits": {"train": 4}}, "encoder": {"name": "bert"}}
    with pytest.raises(KudaStaleStateError, match=r"audio checkpoint /k/audio.pth was trained on other data "
                                                  r"than this run uses \(splits.train: 3 -> 4\)"):
        ck.check_knowledge_origin(ckpt, "/k/audio.pth", "A", other_data, "CMD")
    ck.check_knowledge_origin(ckpt, "/k/audio.pth", "A", other_data, "CMD", allow_other_data=True)
    ck.check_knowledge_origin(ckpt, "/k/audio.pth", "A", {"encoder": {"name": "bert"}}, "CMD")   # data not asked
    with pytest.raises(KudaStaleStateError, match=r"other text encoder than this run uses \(name: 'bert' -> 'roberta'\)"):
        ck.check_knowledge_origin(ckpt, "/k/audio.pth", "A", dict(other_data, encoder={"name": "roberta"}), "CMD",
                                  allow_other_data=True)
    with pytest.raises(KudaStaleStateError, match="other data"):          # data is named first
        ck.check_knowledge_origin(ckpt, "/k/audio.pth", "A", dict(other_data, encoder={"name": "x"}), "CMD")
    with pytest.raises(KudaStaleStateError, match="other text encoder"):  # no encoder recorded
        ck.check_knowledge_origin({}, "/k/audio.pth", "A", {"encoder": {"name": "bert"}}, "CMD")


def test_a_state_that_does_not_fit_is_refused_naming_each_kind_of_mismatch():
    module = nn.Linear(3, 2)
    good = {k: v.clone() + 1 for k, v in module.state_dict().items()}
    ck.load_state_checked(module, good, "p", "Weights", "CMD")
    assert all(torch.equal(module.state_dict()[k], v) for k, v in good.items())       # and loaded
    wrong = {"weight": torch.zeros(2, 4), "bias": torch.zeros(5)}
    with pytest.raises(KudaCheckpointError, match=r"Weights p does not match this model: 2 tensor\(s\) of another "
                                                  r"shape, e\.g\. weight: checkpoint \(2, 4\), model \(2, 3\)\. "
                                                  r"It was made with \{'x': 1\}\. .*Re-create .* CMD"):
        ck.load_state_checked(module, wrong, "p", "Weights", "CMD", made_with={"x": 1})
    with pytest.raises(KudaCheckpointError, match=r"1 missing key\(s\), e\.g\. bias; 2 unexpected key\(s\), "
                                                  r"e\.g\. extra\.a\.(?! It was made)"):
        ck.load_state_checked(module, {"weight": good["weight"], "extra.a": torch.ones(1), "extra.b": torch.ones(1)},
                              "p", "Weights", "CMD")
    # not strict: missing and unexpected keys are allowed, a wrong shape never
    ck.load_state_checked(module, {"weight": good["weight"] * 0}, "p", "Weights", "CMD", strict=False)
    assert torch.equal(module.weight, good["weight"] * 0) and torch.equal(module.bias, good["bias"])
    with pytest.raises(KudaCheckpointError, match="1 tensor"):
        ck.load_state_checked(module, {"bias": torch.zeros(3)}, "p", "Weights", "CMD", strict=False)


# ---------------------------------------------------------------------- resume states
def test_a_resume_state_is_applied_only_for_the_same_run(tmp_path):
    path = tmp_path / "r.resume"
    fp = {"seed": 1, "config": {"lr": 0.1}}
    assert ck.read_resume(path, "F/1", fp, "State") == (None, None)
    ck.atomic_save({"format": "F/1", "fingerprint": fp, "epoch": 3}, path)
    state, note = ck.read_resume(str(path), "F/1", {"config": {"lr": 0.1}, "seed": 1}, "State")
    assert state["epoch"] == 3 and note is None
    with pytest.raises(KudaStaleStateError, match=r"State .* has format 'F/1', not 'F/2'"):
        ck.read_resume(path, "F/2", fp, "State")
    changed = {"seed": 1, "config": {"lr": 0.2}}
    with pytest.raises(KudaStaleStateError, match=r"other settings.*\(config.lr: 0.1 -> 0.2\)\. Resuming it"):
        ck.read_resume(path, "F/1", changed, "State")
    assert path.is_file()                              # refused: kept for the run it belongs to
    state, note = ck.read_resume(path, "F/1", changed, "State", refuse=False)
    assert state is None and not path.exists()         # tuning: removed, and said so
    assert note.endswith("(config.lr: 0.1 -> 0.2). It was removed; this run starts from the beginning.")
    ck.atomic_save(["not", "a", "state"], path)
    with pytest.raises(KudaStaleStateError, match="has format 'list'"):
        ck.read_resume(path, "F/1", fp, "State")


def test_a_state_dict_snapshot_is_a_copy_on_the_cpu():
    module = nn.Linear(2, 2)
    snap = ck.cpu_state_dict(module)
    with torch.no_grad():
        module.weight.add_(1)
    assert not torch.equal(snap["weight"], module.weight) and snap["weight"].device.type == "cpu"
    assert not snap["weight"].requires_grad


class _Payload:
    """Unpickling it the unsafe way creates the marker file: code from the checkpoint ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_that_needs_code_to_load_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"x": _Payload(marker)}, path)
    with pytest.raises(KudaCheckpointError) as e:
        ck.read_checkpoint(path, "Weights")
    assert not marker.exists()
    # the first line of torch's reason, not a later (here empty) one
    assert "(UnpicklingError: Weights only load failed." in str(e.value)
