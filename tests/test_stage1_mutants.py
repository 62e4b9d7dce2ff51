"""Stage 1's small promises, each against a reference written here: the command it names to
re-create knowledge, the branch inputs and targets it takes from an MMSA batch, that it leaves
every random stream where it was, what a message calls the data, the unimodal-label rule, and
what its settings (the knowledge folder's name) contain.
"""
import random
from types import SimpleNamespace

import numpy as np
import pytest

from kuda_mmsa.training.run_config import RunConfig
import torch

from test_training import kuda_args, tiny_config_file  # noqa: F401  (fixtures)
from tiny_kuda import run_of

from kuda_mmsa.errors import KudaInputError
from kuda_mmsa.training import stage1


def test_the_pretrain_command_names_dataset_file_encoder_and_folder():
    assert stage1.pretrain_command(run_of(dataset_name="mosi")) == "python -m kuda_mmsa pretrain -d mosi"
    full = {"dataset_name": "mosi", "custom_feature": "/f.pkl", "pretrained_arg": "bert-x", "knowledge_dir": "/k"}
    assert stage1.pretrain_command(run_of(**full)) == ("python -m kuda_mmsa pretrain -d mosi --feature-file /f.pkl "
                                                       "--pretrained bert-x --knowledge-dir /k")
    # knowledge from another dataset: stage 1 runs on that one, not on this run's file
    assert stage1.pretrain_command(run_of(**full, knowledge_from="sims")) == (
        "python -m kuda_mmsa pretrain -d sims --pretrained bert-x --knowledge-dir /k")


def test_branch_inputs_and_targets_come_from_the_mmsa_batch():
    batch = {"text": torch.ones(2, 3, 4), "vision": torch.zeros(2, 5, 6), "audio": torch.full((2, 7, 3), 2.0),
             "vision_lengths": [5, 2], "labels": {"M": torch.tensor([0.5, -0.5]), "V": torch.tensor([1.0, 2.0])}}
    (text,) = stage1.branch_inputs(batch, "T", None)
    assert text is batch["text"]
    vision, lengths = stage1.branch_inputs(batch, "V", "cpu")
    assert torch.equal(vision, batch["vision"]) and lengths.tolist() == [5, 2]
    audio, none = stage1.branch_inputs(batch, "A", None)
    assert torch.equal(audio, batch["audio"]) and none is None
    assert stage1.unimodal_target(batch, "V", None).tolist() == [[1.0], [2.0]]     # its own label
    assert stage1.unimodal_target(batch, "A", "cpu").tolist() == [[0.5], [-0.5]]   # none: the multimodal one


def test_stage1_inside_a_run_leaves_every_random_stream_where_it_was():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    with stage1.preserved_rng():
        random.random(), np.random.rand(), torch.rand(5)
        random.seed(9), np.random.seed(9), torch.manual_seed(9)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


def test_messages_call_the_data_by_its_file_else_its_dataset():
    assert stage1.data_label(run_of(custom_feature="/c.pkl", featurePath="/f.pkl")) == "/c.pkl"
    assert stage1.data_label(run_of(featurePath="/f.pkl", dataset_name="mosi")) == "/f.pkl"
    assert stage1.data_label(run_of(dataset_name="mosi")) == "mosi"
    assert stage1.data_label(run_of()) == "the data"


def _job(has=True, data=None):
    return SimpleNamespace(has_unimodal_labels=has, origin={"dataset": "demo", "data": data})


def test_every_split_must_hold_all_three_unimodal_labels_when_the_dataset_has_them():
    full = SimpleNamespace(unimodal_keys=list(stage1.UNIMODAL_LABELS), source="/d.pkl")
    stage1.check_unimodal_labels(_job(), {"train": full})
    part = SimpleNamespace(unimodal_keys=["regression_labels_T"], source="/d.pkl")
    with pytest.raises(KudaInputError, match=r"The feature file '/d.pkl', split 'valid', lacks regression_labels_V, "
                                             r"regression_labels_A \(it has regression_labels_T\)\. .*dataset 'demo'"):
        stage1.check_unimodal_labels(_job(), {"train": full, "valid": part})
    stage1.check_unimodal_labels(_job(has=False), {"valid": part})          # MOSI-like: the multimodal label
    stage1.check_unimodal_labels(_job(), None)
    # a dataset of another kind: its labels say what it has; the file named from the fingerprint
    other = SimpleNamespace(labels={"M": 0, "T": 0, "A": 0})
    with pytest.raises(KudaInputError, match=r"The feature file '/fp.pkl', split 'test', lacks "
                                             r"regression_labels_V \(it has regression_labels_T, regression_labels_A\)"):
        stage1.check_unimodal_labels(_job(data={"file": {"path": "/fp.pkl"}}), {"test": other})
    none = SimpleNamespace(labels={"M": 0})
    with pytest.raises(KudaInputError) as e:
        stage1.check_unimodal_labels(_job(), {"train": none})
    assert "(it has" not in str(e.value) and "'None'" in str(e.value)


def test_the_knowledge_settings_hold_what_defines_it(kuda_args):
    args, _ = kuda_args
    job = stage1.job_for_run(RunConfig.from_args(args))
    s = job.settings()
    assert set(s) == {"pretrain", "model", "masked", "data", "target"}
    assert set(s["model"]) == set(stage1.BRANCH_KEYS) and s["model"]["av_layers"] == args["av_layers"]
    assert s["pretrain"]["epochs"] == args["pretrain"]["epochs"] and s["target"] == "unimodal"
    one = job.settings("V")
    assert one["pretrain"]["epochs"] == args["pretrain"]["epochs"]["V"]
    assert s["data"] == job.data_name == str(args["custom_feature"]).rsplit("/", 1)[-1]
    assert job.masked is True and job.seed == int(args["pretrain"]["seed"])
    assert job.origin["dataset"] == "demo" and job.origin["data"] == args["data_fingerprint"]
    assert job.command == stage1.pretrain_command(RunConfig.from_args(args))
    assert job.paths["A"].name == "audio.pth" and job.paths["A"].parent.parent.parent.name == "demo"
    job.has_unimodal_labels = False
    assert job.settings()["target"] == "M"


def test_zero_padding_names_its_own_knowledge_only_where_it_acts(kuda_args):
    """Zeroed padding changes what the branches learn in stage 1, so it gets its own knowledge
    folder; where it does not act (padding masked), the knowledge stays the default's."""
    import dataclasses

    from kuda_mmsa.training.checkpoints import settings_id

    args, _ = kuda_args
    job = stage1.job_for_run(RunConfig.from_args(args))
    base = settings_id(job.settings())
    inert = dataclasses.replace(job, model=dataclasses.replace(job.model, zero_padding=True))
    assert settings_id(inert.settings()) == base
    unmasked = dataclasses.replace(job, model=dataclasses.replace(job.model, mask_padding=False), masked=False)
    zeroed = dataclasses.replace(unmasked, model=dataclasses.replace(unmasked.model, zero_padding=True))
    assert zeroed.settings()["model"]["zero_padding"] is True
    assert len({base, settings_id(unmasked.settings()), settings_id(zeroed.settings())}) == 3


def test_each_modality_has_a_seed_stream_of_its_own():
    # the module's promise: stage 1 of one modality never replays another's random draws or data order
    assert set(stage1.MODALITY_STREAM) == {"T", "V", "A"}
    assert len(set(stage1.MODALITY_STREAM.values())) == 3
