"""Stage 1's promises at the unit level (found by tools/mutate.py): what names the knowledge
(other settings, another feature file, other padding or targets get their own folder), which
label each branch learns, the validation MSE that picks the best epoch, and the authors'
padding in reference mode."""
import dataclasses

import pytest

from kuda_mmsa.training.run_config import RunConfig
import torch
from tiny_kuda import write_tiny_config


@pytest.fixture
def job(tiny_demo_pickle, tmp_path):
    from test_training import make_kuda_args

    from kuda_mmsa.training.stage1 import job_for_run

    args, loaders = make_kuda_args(tiny_demo_pickle, write_tiny_config(tmp_path / "c.yaml"), tmp_path)
    return job_for_run(RunConfig.from_args(args)), args, loaders


def test_what_knowledge_was_made_with_names_its_folder(job):
    from kuda_mmsa.training.checkpoints import settings_id

    job, args, _ = job
    base = settings_id(job.settings())
    for change in (dict(data_name="other.pkl"), dict(masked=not job.masked), dict(has_unimodal_labels=False),
                   dict(pretrain={**job.pretrain, "learning_rate": 0.5})):
        assert settings_id(dataclasses.replace(job, **change).settings()) != base, change
    one = job.settings("V")
    assert one["pretrain"]["epochs"] == job.pretrain["epochs"]["V"]            # a modality's own epochs
    assert job.settings()["pretrain"]["epochs"] == job.pretrain["epochs"]
    assert job.origin["dataset"] == "demo" and job.paths["T"].parts[-4] == "demo"


def test_reference_mode_stage1_averages_over_padding(tiny_demo_pickle, tmp_path):
    from test_training import make_kuda_args

    from kuda_mmsa.training.stage1 import job_for_run

    ref, _ = make_kuda_args(tiny_demo_pickle, write_tiny_config(tmp_path / "r.yaml", fusion_mode="reference"), tmp_path)
    dyn, _ = make_kuda_args(tiny_demo_pickle, write_tiny_config(tmp_path / "d.yaml"), tmp_path)
    assert job_for_run(RunConfig.from_args(ref)).masked is False and job_for_run(RunConfig.from_args(dyn)).masked is True
    assert job_for_run(RunConfig.from_args(ref)).paths["T"] != job_for_run(RunConfig.from_args(dyn)).paths["T"]


def test_each_branch_learns_its_own_label_or_the_overall_one():
    from kuda_mmsa.training.stage1 import branch_inputs, unimodal_target

    batch = {"labels": {"M": torch.tensor([[0.1], [0.2]]), "T": torch.tensor([[0.5], [0.6]])},
             "text": torch.zeros(2, 3, 4), "audio": torch.ones(2, 5, 2), "audio_lengths": [3, 5]}
    torch.testing.assert_close(unimodal_target(batch, "T", "cpu"), torch.tensor([[0.5], [0.6]]))
    torch.testing.assert_close(unimodal_target(batch, "A", "cpu"), torch.tensor([[0.1], [0.2]]))   # no A label
    audio, lengths = branch_inputs(batch, "A", "cpu")
    assert torch.equal(lengths, torch.tensor([3, 5])) and audio.shape == (2, 5, 2)
    assert branch_inputs({**batch, "audio_lengths": None}, "A", "cpu")[1] is None
    assert len(branch_inputs(batch, "T", "cpu")) == 1


def test_validation_mse_is_the_mean_squared_error_in_evaluation_mode(job):
    from kuda_mmsa.model.encoders import build_branch
    from kuda_mmsa.training.stage1 import _evaluate

    job, args, loaders = job
    torch.manual_seed(0)
    model_cfg = dataclasses.replace(job.model, av_dropout=0.5, adapter_dropout=0.5, decoder_dropout=0.5)
    branch = build_branch(model_cfg, "V").train()
    valid = loaders()["valid"]
    errors = []
    branch.eval()
    with torch.no_grad():
        for batch in valid:
            _, score, _ = branch(batch["vision"], torch.as_tensor(batch["vision_lengths"]), masked=True)
            errors.append((score - batch["labels"]["V"].view(-1, 1)) ** 2)
    want = float(torch.cat(errors).mean())
    branch.train()                                    # _evaluate must switch to evaluation itself
    assert _evaluate(branch, valid, "V", "cpu", True) == pytest.approx(want, rel=1e-6)
