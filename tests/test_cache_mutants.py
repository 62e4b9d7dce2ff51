"""kuda_mmsa.data.cache, in-process: where the cache lives (README: ``~/.cache/kuda_mmsa`` or
``$KUDA_MMSA_CACHE``), that a generated pickle is complete on disk before it is used (both
files present, bytes synced), that wrong parameters and families are refused before anything
is written, and that a folder built by a racing process is kept."""
import json
import os
import pickle

import pytest

from kuda_mmsa.data import cache
from kuda_mmsa.data.families import FAMILIES

SMALL = dict(n_train=4, n_valid=2, n_test=2, text_dim=4)


def test_without_a_folder_or_variable_the_cache_is_under_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUDA_MMSA_CACHE", raising=False)
    assert cache.cache_root() == tmp_path / ".cache" / "kuda_mmsa"
    monkeypatch.setenv("KUDA_MMSA_CACHE", "")          # set but empty: as if unset
    assert cache.cache_root() == tmp_path / ".cache" / "kuda_mmsa"
    monkeypatch.setenv("KUDA_MMSA_CACHE", "~/elsewhere")
    assert cache.cache_root() == tmp_path / "elsewhere"


def test_an_unknown_generator_parameter_is_refused_naming_it_and_nothing_is_written(tmp_path):
    with pytest.raises(TypeError) as e:
        cache.ensure_demo_data(tmp_path, n_trian=3)
    assert "n_trian" in str(e.value) and "n_train" in str(e.value)
    assert not (tmp_path / "demo").exists()


def test_a_pickle_or_sidecar_lost_from_the_cache_is_generated_again(tmp_path):
    path = cache.ensure_demo_data(tmp_path, **SMALL)
    meta = path.with_suffix(".json")
    path.unlink()
    assert cache.ensure_demo_data(tmp_path, **SMALL) == path and path.is_file()
    with open(path, "rb") as f:
        assert len(pickle.load(f)["train"]["regression_labels"]) == SMALL["n_train"]
    meta.unlink()
    assert cache.ensure_demo_data(tmp_path, **SMALL) == path
    assert json.loads(meta.read_text())["generator"]["n_train"] == SMALL["n_train"]


def test_facts_are_read_from_a_string_path_with_or_without_the_sidecar(tmp_path):
    path = cache.ensure_demo_data(tmp_path, **SMALL)
    want = {"train": 4, "valid": 2, "test": 2}
    assert cache.demo_facts(str(path))["splits"] == want
    path.with_suffix(".json").unlink()
    facts = cache.demo_facts(str(path))
    assert facts["splits"] == want and facts["train_samples"] == 4


def test_written_bytes_reach_the_disk_before_the_file_is_renamed_into_place(tmp_path, monkeypatch):
    """A crash after the rename must not leave a short file: fsync runs on the temp file when
    it already holds every byte (flushed from Python's buffer)."""
    blob = b"kuda" * 100
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "out.bin"
    cache.atomic_write_bytes(target, blob)
    assert synced == [len(blob)]
    assert target.read_bytes() == blob


def test_an_unknown_family_is_refused_naming_the_families_and_a_known_one_is_built(tmp_path):
    with pytest.raises(ValueError) as e:
        cache.ensure_family_data("dominnant", tmp_path)
    assert "'dominnant'" in str(e.value) and all(name in str(e.value) for name in FAMILIES)
    path = cache.ensure_family_data("dominant", tmp_path, n_train=4, n_valid=2, n_test=2)
    assert path.is_file() and path.parent == tmp_path / "demo" and path.name.startswith("dominant-")
    assert cache.demo_facts(path)["splits"] == {"train": 4, "valid": 2, "test": 2}


def test_a_folder_built_by_a_racing_process_is_kept_and_ours_discarded(tmp_path):
    final = tmp_path / "bert"
    final.mkdir()
    (final / "config.json").write_text("theirs")
    tmp = tmp_path / ".bert-tmp"
    tmp.mkdir()
    (tmp / "config.json").write_text("ours")
    cache.replace_dir_atomically(tmp, final)
    assert (final / "config.json").read_text() == "theirs"
    assert not tmp.exists()


def test_a_folder_that_cannot_be_moved_into_place_is_an_error(tmp_path):
    tmp = tmp_path / ".bert-tmp"
    tmp.mkdir()
    (tmp / "config.json").write_text("ours")
    with pytest.raises(OSError):
        cache.replace_dir_atomically(tmp, tmp_path / "no" / "such" / "parent" / "bert")
