"""kuda_mmsa.mmsa.loader, MMSA's MMDataLoader drop-in: which file a run reads, what it
writes back into args (feature dims, lengths, train size, fingerprint), the batches it yields
(also one rank's share in a data-parallel run), and the hint when a file is missing. The
references are read from the pickle here.
"""
import pickle
from pathlib import Path

import pytest
import torch

from kuda_mmsa.errors import KudaInputError
from kuda_mmsa.mmsa import loader


@pytest.fixture
def raw(tiny_demo_pickle):
    with open(tiny_demo_pickle, "rb") as f:
        return pickle.load(f)


def test_the_missing_file_hint_names_the_dataset_its_download_and_the_data_root():
    text = loader.missing_file_hint({"dataset_name": "mosi", "dataset_download": "https://x", "data_root": "/d"})
    assert "Dataset 'mosi' features come from https://x." in text and "; now '/d')" in text
    text = loader.missing_file_hint({"dataset_name": None})
    assert "Dataset '?' features come from the MMSA / CH-SIMS v2 dataset download pages." in text
    assert "now" not in text and "~/MMSA/datasets)" in text


def test_the_run_reads_its_custom_feature_file_else_the_datasets(loader_args, tmp_path, monkeypatch):
    spec = loader.feature_spec(dict(loader_args, custom_feature="/c.pkl", featurePath="/f.pkl"))
    assert spec.path == Path("/c.pkl")
    assert loader.feature_spec(dict(loader_args, custom_feature=None, featurePath="/f.pkl")).path == Path("/f.pkl")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert loader.feature_spec(dict(loader_args, custom_feature="~/x.pkl")).path == tmp_path / "x.pkl"
    with pytest.raises(KudaInputError, match="No feature file configured for dataset 'demo': neither "
                                             "custom_feature nor featurePath is set. Dataset 'demo' features"):
        loader.feature_spec(dict(loader_args, custom_feature=None, featurePath=None))


def test_the_feature_spec_carries_the_runs_data_options(loader_args):
    spec = loader.feature_spec(dict(loader_args, model_name="kuda", label_range=[-1, 1],
                                    feature_A="/a.pkl", feature_T="", need_data_aligned=True,
                                    need_normalized=True), require_unimodal_labels=True)
    assert spec.use_bert and spec.aligned and spec.normalized and spec.require_unimodal_labels
    assert spec.overrides == {"A": Path("/a.pkl")}
    assert spec.label_range == (-1, 1) and spec.encoder_name == str(loader_args.pretrained)
    assert spec.vocab_size is not None and spec.min_length == 0       # KuDA: length 0 = missing modality
    assert "Dataset 'demo' features come from" in spec.missing_hint
    other = loader.feature_spec(dict(loader_args, model_name="tfn", use_bert=False, pretrained=None))
    assert not other.use_bert and other.vocab_size is None and other.min_length == 1     # MMSA's models need a step
    assert other.label_range is None and other.overrides == {} and not other.aligned and not other.normalized
    assert not other.require_unimodal_labels and other.encoder_name == ""


def test_loading_writes_the_files_facts_into_args(loader_args, raw):
    args = dict(loader_args, feature_dims=[64, 0, 0])
    features = loader.load_features(args)
    audio_dim, vision_dim = raw["train"]["audio"].shape[-1], raw["train"]["vision"].shape[-1]
    assert args["feature_dims"] == [64, audio_dim, vision_dim]          # BERT: the configured text width
    assert args["seq_lens"] == [raw["train"]["text_bert"].shape[-1], raw["train"]["audio"].shape[1],
                                raw["train"]["vision"].shape[1]]
    assert args["train_samples"] == len(raw["train"]["id"]) == 30
    assert args["data_fingerprint"] == features.fingerprint and args["data_fingerprint"]
    args = dict(loader_args, feature_dims=None)
    loader.load_features(args)
    assert args["feature_dims"] == [768, audio_dim, vision_dim]         # BERT width by default
    args = dict(loader_args, feature_dims=[0, 0, 0])
    loader.load_features(args)
    assert args["feature_dims"][0] == 768
    args = dict(loader_args, use_bert=False, feature_dims=[64, 0, 0])
    loader.load_features(args)
    assert args["feature_dims"] == [raw["train"]["text"].shape[-1], audio_dim, vision_dim]   # the file's text width


def test_the_loaders_yield_batches_of_batch_size_and_each_ranks_share(loader_args, raw):
    torch.manual_seed(0)
    loaders = loader.MMDataLoader(dict(loader_args, batch_size=8))
    assert set(loaders) == {"train", "valid", "test"}
    assert [len(b["labels"]["M"]) for b in loaders["test"]] == [8, 4]
    sizes = lambda rank, **kw: [len(b["labels"]["M"]) for b in
                                loader.MMDataLoader(dict(loader_args, batch_size=8, world_size=2, rank=rank,
                                                         **kw))["test"]]
    assert sizes(0) == [4, 2] and sizes(1) == [4, 2]              # the global batch of 8 split over 2 ranks
    assert sizes(1, per_rank_batch=True) == [6]      # 8 per rank: one global batch of 16 holds all 12
    ids = lambda rank: [i for b in loader.MMDataLoader(dict(loader_args, batch_size=8, world_size=2,
                                                            rank=rank))["test"] for i in b["id"]]
    assert sorted(ids(0) + ids(1)) == sorted(raw["test"]["id"]) and not set(ids(0)) & set(ids(1))


def test_args_without_data_options_mean_mmsas_defaults():
    """MMSA's own models may leave the keys out: no BERT ids, unaligned, not normalised, no
    unimodal labels required."""
    spec = loader.feature_spec({"featurePath": "/f.pkl"})
    assert (spec.use_bert, spec.aligned, spec.normalized, spec.require_unimodal_labels) == (False, False, False, False)
    assert spec.vocab_size is None and spec.min_length == 1


def test_loading_asks_for_unimodal_labels_only_when_told(loader_args, write_variant):
    path = write_variant(lambda d: [d[s].pop(k) for s in d for k in list(d[s]) if k == "regression_labels_V"])
    args = dict(loader_args, featurePath=str(path))
    loader.load_features(args)                                    # stage 2 needs only the multimodal label
    with pytest.raises(KudaInputError, match="regression_labels_V"):
        loader.load_features(dict(loader_args, featurePath=str(path)), require_unimodal_labels=True)


def _with_a_test_split_of_42(data):
    """The test split followed by the train samples (renamed): 42 samples, more than one
    default batch."""
    import numpy as np

    test, train = data["test"], data["train"]
    for key in test:
        extra = np.array(["big_" + i for i in train[key]], dtype=object) if key == "id" else train[key]
        test[key] = np.concatenate([test[key], extra])


def test_args_without_batch_size_or_rank_mean_batches_of_32_and_rank_0(loader_args, write_variant):
    """MMSA's own defaults: a global batch of 32, and rank 0 of a data-parallel run when
    the rank is not given. References: the split's order in the file, cut as documented
    (global batches, each split into contiguous halves over 2 ranks)."""
    path = write_variant(_with_a_test_split_of_42)
    args = {k: v for k, v in dict(loader_args, featurePath=str(path)).items() if k != "batch_size"}
    with open(path, "rb") as f:
        ids = list(pickle.load(f)["test"]["id"])
    assert len(ids) == 42
    torch.manual_seed(0)
    test = loader.MMDataLoader(dict(args))["test"]
    assert [len(b["id"]) for b in test] == [32, 10]
    assert [i for b in test for i in b["id"]] == ids
    share = lambda **kw: [i for b in loader.MMDataLoader(dict(args, world_size=2, **kw))["test"] for i in b["id"]]
    rank0, rank1 = ids[:16] + ids[32:37], ids[16:32] + ids[37:]
    assert share(rank=1) == rank1 and share(rank=0) == rank0
    assert share() == rank0                                             # no rank: rank 0


def test_the_loaders_use_the_workers_asked_for_and_pin_memory_only_for_a_cuda_device(loader_args, monkeypatch):
    """MMDataLoader(args, num_workers) as MMSA's: no worker process unless asked for; pinned
    (page-locked) batches only when the run's device is a CUDA device that is there."""
    args = dict(loader_args, batch_size=8)
    workers = lambda *n, **over: {s: d.num_workers for s, d in loader.MMDataLoader(dict(args, **over), *n).items()}
    pinned = lambda **over: {s: d.pin_memory for s, d in loader.MMDataLoader(dict(args, **over)).items()}
    none = {"train": 0, "valid": 0, "test": 0}
    assert workers() == none and workers(None) == none and workers(0) == none
    assert workers(2) == {"train": 2, "valid": 2, "test": 2}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)      # as on a GPU machine
    assert set(pinned(device="cuda:0").values()) == {True} and set(pinned(device="cuda").values()) == {True}
    assert set(pinned(device="cpu").values()) == {False} and set(pinned().values()) == {False}   # no device: CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)     # asked for CUDA, none there
    assert set(pinned(device="cuda").values()) == {False}
