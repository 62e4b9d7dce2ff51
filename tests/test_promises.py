"""Promises of the README that a deliberate break once slipped through (issue 18): each test
here fails when its promise is broken, checked against what the test itself computes.

- safe loading: every checkpoint load in the package is weights_only, the MMSA run path too;
- stale state: a resume (stage 2) or a partial stage 1 made for other data, seed, settings,
  world size or modality is refused;
- padding and missing modalities: what sits at padded text positions, or anything about a
  modality missing from every sample, never changes a prediction or the CE loss; the present
  modalities keep the weight they have when all are present;
- knowledge provenance: knowledge made with another text encoder is refused.
"""
import ast
import copy
import dataclasses
import shutil
from pathlib import Path

import pytest

from kuda_mmsa.training.run_config import RunConfig
import torch
from test_model import L_T, make_batch, make_model   # tests/ is on sys.path
from test_trust import Payload, run_cli
from tiny_kuda import write_tiny_config

from kuda_mmsa.errors import KudaStaleStateError

PACKAGE = Path(__file__).resolve().parents[1] / "kuda_mmsa"


# ---------------------------------------------------------------------- safe loading
def _torch_load_calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            yield node


def test_every_torch_load_in_the_package_is_weights_only():
    """README: every checkpoint is loaded with torch.load(weights_only=True). Read from the
    source, so that a load on a path no test reaches is caught too."""
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for call in _torch_load_calls(ast.parse(path.read_text(), str(path))):
            kw = {k.arg: k.value for k in call.keywords}
            flag = kw.get("weights_only")
            calls.append(f"{path.relative_to(PACKAGE)}:{call.lineno}")
            assert isinstance(flag, ast.Constant) and flag.value is True, \
                f"{path.relative_to(PACKAGE)}:{call.lineno} calls torch.load without weights_only=True"
    # the two places that load: checkpoints.read_checkpoint and MMSA's run path (best weights, seed_run)
    assert any(c.startswith("training/checkpoints.py") for c in calls)
    assert any(c.startswith("mmsa/seed_run.py") for c in calls)


def test_the_run_path_never_runs_code_from_the_weights_it_tests(tmp_path, tiny_demo_pickle, monkeypatch):
    """Weights a crafted file replaced between training and testing are refused, and their
    code never runs (MMSA's run path loads the best weights itself)."""
    from kuda_mmsa.training import trainer

    marker = tmp_path / "payload-ran"

    def train_writes_a_payload(self, model, dataloader, return_epoch_results=False):
        torch.save({"w": Payload(marker)}, self.run.model_save_path)

    monkeypatch.setattr(trainer.KuDATrainer, "do_train", train_writes_a_payload)
    try:
        rc = run_cli(tmp_path, feature_file=tiny_demo_pickle, config=write_tiny_config(tmp_path / "c.yaml"))
    except Exception:     # an unpickling error escaping is a refusal too; what matters is below
        rc = None
    assert not marker.exists(), "unpickling the weights ran code"
    assert rc != 0
    assert not (tmp_path / "r" / "normal" / "demo.csv").exists()


# ---------------------------------------------------------------------- stale state: stage 2
@pytest.fixture
def stage2_args(tiny_demo_pickle, tmp_path):
    from test_training import make_kuda_args

    args, _ = make_kuda_args(tiny_demo_pickle, write_tiny_config(tmp_path / "c.yaml"), tmp_path)
    args.world_size = 1
    return args


# each: how a later run differs from the one that saved the state (its args; its trainer)
RUN_CHANGES = {
    "data": lambda a, t: a.__setitem__("data_fingerprint", {**a["data_fingerprint"], "splits": {"train": 1}}),
    "seed": lambda a, t: a.__setitem__("seed", a["seed"] + 1),
    "world size": lambda a, t: a.__setitem__("world_size", 2),
    "config": lambda a, t: a.__setitem__("learning_rate", a["learning_rate"] * 2),
    "model config": lambda a, t: a.__setitem__("fusion_mode", "reference"),
    "model": lambda a, t: a.__setitem__("model_name", "kuda_v2"),
    "dataset": lambda a, t: a.__setitem__("dataset_name", "sims"),
    "KeyEval": lambda a, t: a.__setitem__("KeyEval", "MAE"),
    "precision": lambda a, t: setattr(t, "precision", "fp32" if t.precision != "fp32" else "bf16"),
    "knowledge": lambda a, t: setattr(t, "knowledge", {"T": "another stage-1 checkpoint"}),
    "version": "version",
}


@pytest.mark.parametrize("change", sorted(RUN_CHANGES))
def test_stage2_resume_is_refused_after_a_change_of(change, stage2_args, monkeypatch):
    """A resume state saved by one run is refused by a run whose data, seed, world size,
    config, stage-1 knowledge, precision or package version differ (the README's list),
    before any training, naming the file to delete."""
    from kuda_mmsa.training import trainer as trainer_mod
    from kuda_mmsa.training.checkpoints import RESUME_FORMAT, atomic_save

    assert stage2_args.get("data_fingerprint"), "the loader records the data's fingerprint in args"
    saved = trainer_mod.KuDATrainer(stage2_args)
    resume = Path(str(stage2_args["model_save_path"]) + ".resume")
    atomic_save({"format": RESUME_FORMAT, "fingerprint": saved.fingerprint()}, resume)

    later = copy.deepcopy(stage2_args)
    if change in ("precision", "knowledge", "version"):     # what the trainer decides or finds
        trainer = trainer_mod.KuDATrainer(later)
        if change == "version":
            monkeypatch.setattr(trainer_mod, "__version__", trainer_mod.__version__ + ".1")
        else:
            RUN_CHANGES[change](later, trainer)
    else:                                   # the run's args, read once when its trainer is built
        RUN_CHANGES[change](later, None)
        trainer = trainer_mod.KuDATrainer(later)
    monkeypatch.setattr(trainer, "load_knowledge", lambda *a, **k: None)
    with pytest.raises(KudaStaleStateError, match="Delete the file") as e:
        trainer.do_train(make_model(), {s: _NoBatches() for s in ("train", "valid", "test")})
    assert str(resume) in str(e.value)
    # and the same state is accepted by the run that saved it (the refusal is about the change)
    same = trainer_mod.KuDATrainer(stage2_args)
    assert same.fingerprint() == saved.fingerprint()


class _NoBatches:
    """A train loader the refusal must come before (iterating it fails the test)."""
    generator = torch.Generator()
    dataset = None

    def __len__(self):
        return 1

    def __iter__(self):
        raise AssertionError("training started although the resume state is stale")


# ---------------------------------------------------------------------- stale state: stage 1
@pytest.fixture
def interrupted_stage1(tiny_demo_pickle, tmp_path, monkeypatch):
    """A stage-1 job whose text branch was interrupted after epoch 1 (its .partial exists)."""
    from test_training import make_kuda_args

    from kuda_mmsa.training import stage1

    cfg = write_tiny_config(tmp_path / "c.yaml", pretrain={"epochs": {"T": 2, "V": 2, "A": 2}, "batch_size": 8})
    args, loaders = make_kuda_args(tiny_demo_pickle, cfg, tmp_path)
    job = stage1.job_for_run(RunConfig.from_args(args))
    datasets = {s: dl.dataset for s, dl in loaders().items()}
    real, calls = stage1._evaluate, {"n": 0}

    def interrupt_in_epoch_two(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(stage1, "_evaluate", interrupt_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        stage1.train_branch(job, "T", datasets)
    monkeypatch.setattr(stage1, "_evaluate", real)
    partial = job.paths["T"].with_name(job.paths["T"].name + ".partial")
    assert partial.is_file()
    return job, datasets, partial


STAGE1_CHANGES = {
    "data": lambda j: dataclasses.replace(j, origin={**j.origin, "data": {"splits": {"train": 1}}}),
    "text encoder": lambda j: dataclasses.replace(j, origin={**j.origin, "encoder": {"name": "other"}}),
    "settings": lambda j: dataclasses.replace(j, pretrain={**j.pretrain, "learning_rate": 0.5}),
    "seed": lambda j: dataclasses.replace(j, seed=j.seed + 1, pretrain={**j.pretrain, "seed": j.seed + 1}),
}


@pytest.mark.parametrize("change", sorted(STAGE1_CHANGES))
def test_stage1_partial_state_is_refused_after_a_change_of(change, interrupted_stage1, monkeypatch):
    from kuda_mmsa.training import stage1

    job, datasets, partial = interrupted_stage1
    other = STAGE1_CHANGES[change](job)
    monkeypatch.setattr(stage1, "build_branch", _no_training)
    with pytest.raises(KudaStaleStateError, match="Interrupted stage-1 text state"):
        stage1.train_branch(other, "T", datasets)


def test_stage1_partial_state_of_another_modality_is_refused(interrupted_stage1, monkeypatch):
    from kuda_mmsa.training import stage1

    job, datasets, partial = interrupted_stage1
    vision_partial = job.paths["V"].with_name(job.paths["V"].name + ".partial")
    shutil.copy(partial, vision_partial)        # the text state where the vision state belongs
    monkeypatch.setattr(stage1, "build_branch", _no_training)
    with pytest.raises(KudaStaleStateError, match="Interrupted stage-1 vision state"):
        stage1.train_branch(job, "V", datasets)


def _no_training(*a, **k):
    raise AssertionError("stage 1 went on with a stale partial state")


# ---------------------------------------------------------------------- padding and missing modalities
def _short_text_batch(max_len=7):
    """make_batch with every text at most `max_len` tokens: positions >= max_len are padding
    in every sample."""
    inputs, labels = make_batch()
    lengths = torch.tensor([3, 5, max_len, 4])
    mask = (torch.arange(L_T)[None] < lengths[:, None]).float()
    text = inputs["text"].clone()
    text[:, 0] = text[:, 0] * mask
    text[:, 1] = mask
    inputs["text"] = text
    return inputs, labels


def test_what_sits_at_padded_text_positions_never_changes_a_prediction():
    """The fused sequence lives on the text's time axis: its padded positions are masked in
    every attention (the DAF cross-attention, its self-attention) and mean. Changing what the
    alignment puts there (its rows for those positions) must change nothing."""
    model = make_model().eval()
    inputs, _ = _short_text_batch(max_len=7)
    with torch.no_grad():
        ref = model(**inputs)
        for align in model.align.values():
            align.time.weight[7:].normal_(0, 3.0)
            align.time.bias[7:].normal_(0, 3.0)
        out = model(**inputs)
    for k in ("M", "ratio", "ce"):
        torch.testing.assert_close(out[k], ref[k], atol=1e-5, rtol=1e-5)


def _modality_params(model, m, i):
    return (list(model.branches[m].parameters()) + list(model.align[m].parameters())
            + (list(model.reliability.heads[i].parameters()) if model.reliability is not None else []))


@pytest.mark.parametrize("missing", ["V", "A"])
@pytest.mark.parametrize("source", ["reliability", "consensus"])
def test_a_modality_missing_from_every_sample_changes_nothing(missing, source):
    """README: a missing modality gets ratio 0 and is out of F0 and of the CE loss. So when it
    is missing from every sample of a batch, nothing about it (its encoder, adapters,
    decoder, alignment, reliability head) can change the prediction, the other ratios or
    the CE loss."""
    model = make_model(ratio_source=source).eval()
    inputs, _ = make_batch()
    key = {"V": "vision", "A": "audio"}[missing]
    inputs[f"{key}_lengths"] = torch.zeros_like(inputs[f"{key}_lengths"])
    others = [i for i, m in enumerate("TVA") if m != missing]
    with torch.no_grad():
        ref = model(**inputs)
        for p in _modality_params(model, missing, "TVA".index(missing)):
            p.add_(torch.randn_like(p))
        out = model(**inputs)
    assert torch.all(out["ratio"][:, "TVA".index(missing)] == 0)
    torch.testing.assert_close(out["M"], ref["M"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["ratio"][:, others], ref["ratio"][:, others], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out["ce"], ref["ce"], atol=1e-5, rtol=1e-5)


def _capture_op_weights(monkeypatch):
    from kuda_mmsa.model import fusion

    seen = []
    real = fusion.ops.ratio_cross_attention

    def spy(q, k, v, weight, *a, **kw):
        if weight.shape[1] == 3:        # the DAF cross-attention (the encoders' self-attention has M = 1)
            seen.append(weight.detach().clone())
        return real(q, k, v, weight, *a, **kw)

    monkeypatch.setattr(fusion.ops, "ratio_cross_attention", spy)
    return seen


def test_present_modalities_keep_the_weight_they_have_when_all_are_present(monkeypatch):
    """With equal ratios every present modality's message gets weight 1, however many are
    present: a missing modality's absence must not amplify the others (weight = n_present x R,
    not M x R), and the missing one gets 0."""
    seen = _capture_op_weights(monkeypatch)
    model = make_model(ratio_source="consensus", ratio_k=1e-9).eval()   # k ~ 0: R uniform over present
    inputs, _ = make_batch()
    inputs["vision_lengths"] = torch.tensor([0, 3, 0, 5])
    inputs["audio_lengths"] = torch.tensor([4, 6, 0, 2])
    with torch.no_grad():
        model(**inputs)
    expected = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert seen, "the DAF blocks did not call the fused op"
    for w in seen:
        torch.testing.assert_close(w.float(), expected)


# ---------------------------------------------------------------------- knowledge provenance
def test_knowledge_of_another_text_encoder_is_refused():
    from kuda_mmsa.training.checkpoints import check_knowledge_origin

    data = {"splits": {"train": {"n": 30}}}
    ckpt = {"meta": {"data": data, "encoder": {"name": "bert-base-chinese", "vocab_size": 21128}}}
    ok = {"data": data, "encoder": {"name": "bert-base-chinese", "vocab_size": 21128}}
    check_knowledge_origin(ckpt, "k/text.pth", "T", ok, "kuda-mmsa pretrain")       # same origin: accepted
    other = {"data": data, "encoder": {"name": "bert-base-uncased", "vocab_size": 30522}}
    for allow_other_data in (False, True):    # other data may be allowed; another encoder never
        with pytest.raises(KudaStaleStateError, match="other text encoder"):
            check_knowledge_origin(ckpt, "k/text.pth", "T", other, "kuda-mmsa pretrain",
                                   allow_other_data=allow_other_data)
    with pytest.raises(KudaStaleStateError, match="other data"):
        check_knowledge_origin(ckpt, "k/text.pth", "T", {**ok, "data": {"splits": {"train": {"n": 31}}}},
                               "kuda-mmsa pretrain")
    check_knowledge_origin(ckpt, "k/text.pth", "T", {**ok, "data": {"splits": {"train": {"n": 31}}}},
                           "kuda-mmsa pretrain", allow_other_data=True)


# ---------------------------------------------------------------------- frozen knowledge
def test_stage2_freezes_exactly_the_knowledge_that_came_from_stage1():
    """Adapters and decoders of the modalities whose knowledge was loaded stop training; their
    encoders, the other modalities' knowledge and the fusion keep training."""
    from kuda_mmsa.training.transfer import freeze_knowledge

    model = make_model()
    freeze_knowledge(model, ["V", "A"])        # e.g. knowledge_text: scratch
    for m in "TVA":
        branch = model.branches[m]
        knowledge = list(branch.decoder.parameters()) + list(branch.adapters.parameters())
        assert knowledge and all(p.requires_grad == (m == "T") for p in knowledge), m
        shared = {id(p) for p in knowledge}    # (the adapters use the encoder's output LayerNorm)
        encoder = [p for n, p in branch.named_parameters() if n.startswith(("encoder.", "bert.", "proj"))
                   and id(p) not in shared]
        assert encoder and all(p.requires_grad for p in encoder), m
    assert all(p.requires_grad for p in model.blocks.parameters())
    model.freeze_knowledge()                   # all three (what stage 2 does by default)
    assert not any(p.requires_grad for p in model.knowledge_parameters())
    assert {id(p) for p in model.knowledge_parameters()} == {
        id(p) for m in "TVA" for mod in (model.branches[m].decoder, model.branches[m].adapters) for p in mod.parameters()}


# ---------------------------------------------------------------------- what a refusal names
def test_a_refusal_names_every_key_that_differs():
    """README: a stale state is refused 'naming the keys that differ' (nested keys dotted,
    added and removed keys too, at most six shown with how many more)."""
    from kuda_mmsa.training.checkpoints import describe_differences, differences

    old = {"seed": 1, "config": {"lr": 0.1, "dropout": 0.2}, "gone": 1, "data": {"splits": {"train": 30}}}
    new = {"seed": 2, "config": {"lr": 0.1, "dropout": 0.3, "added": True}, "data": {"splits": {"train": 31}}}
    assert differences(old, new) == ["config.added", "config.dropout", "data.splits.train", "gone", "seed"]
    assert differences(old, old) == [] and differences(1, 2) == ["(value)"]
    text = describe_differences(old, new)
    assert "seed: 1 -> 2" in text and "config.dropout: 0.2 -> 0.3" in text
    assert "gone: 1 -> '<absent>'" in text and "config.added: '<absent>' -> True" in text
    many_old = {f"k{i}": i for i in range(9)}
    many_new = {f"k{i}": i + 1 for i in range(9)}
    text = describe_differences(many_old, many_new)
    assert text.count("->") == 6 and text.endswith("and 3 more")
    assert describe_differences({"k": list(range(40))}, {"k": list(range(41))}) == "k: '<...>' -> '<...>'"
    assert describe_differences({"k": [1, 2]}, {"k": [1, 3]}) == "k: [1, 2] -> [1, 3]"


def test_a_state_dict_snapshot_does_not_follow_later_training():
    """The best weights kept in memory (stage 1's best epoch) are a copy, not the live tensors."""
    from kuda_mmsa.training.checkpoints import cpu_state_dict

    layer = torch.nn.Linear(3, 2)
    snap = cpu_state_dict(layer)
    before = snap["weight"].clone()
    with torch.no_grad():
        layer.weight.add_(1.0)
    assert torch.equal(snap["weight"], before)


# ---------------------------------------------------------------------- knowledge files
def test_knowledge_folder_names_are_stable_and_folder_safe(tmp_path):
    """<knowledge-dir>/<dataset>/<text encoder>/<settings id>/: the encoder's folder name, and
    a settings id that does not depend on key order and keeps its value across versions
    (knowledge from earlier runs is found again)."""
    from kuda_mmsa.training.checkpoints import encoder_tag, knowledge_paths, settings_id

    local = tmp_path / "models" / "bert-base-chinese"
    local.mkdir(parents=True)
    assert encoder_tag(str(local)) == encoder_tag(str(local) + "/") == "bert-base-chinese"
    assert encoder_tag("hfl/chinese roberta") == "hfl_chinese_roberta"      # a hub name: no folder
    assert encoder_tag("???") == "_" and encoder_tag("") == "text-encoder"

    class Config:
        name_or_path = "bert-base-uncased"

    assert encoder_tag(Config()) == "bert-base-uncased"
    a = {"pretrain": {"epochs": 3, "seed": 1111}, "masked": True}
    b = {"masked": True, "pretrain": {"seed": 1111, "epochs": 3}}
    assert settings_id(a) == settings_id(b) == "670e0f4c20"     # the id version 0.3.0 gave
    assert settings_id({**a, "masked": False}) != settings_id(a)
    paths = knowledge_paths(tmp_path / "k", "sims2", str(local), a)
    assert paths["V"] == tmp_path / "k" / "sims2" / "bert-base-chinese" / "670e0f4c20" / "vision.pth"


def test_a_file_that_is_not_knowledge_is_refused_as_knowledge(tmp_path):
    from kuda_mmsa.errors import KudaCheckpointError
    from kuda_mmsa.training.checkpoints import KNOWLEDGE_FORMAT, RESUME_FORMAT, read_checkpoint, read_knowledge

    for content, words in (({"format": RESUME_FORMAT, "modality": "T"}, "not a kuda_mmsa knowledge"),
                           ([1, 2], "not a kuda_mmsa knowledge"),
                           ({"format": KNOWLEDGE_FORMAT, "modality": "V"}, "holds modality 'V'")):
        path = tmp_path / "text.pth"
        torch.save(content, path)
        with pytest.raises(KudaCheckpointError, match=words):
            read_knowledge(path, "T", "kuda-mmsa pretrain")
    assert read_checkpoint(str(path), "a checkpoint")["modality"] == "V"        # a str path is fine


def test_a_checkpoint_that_does_not_fit_the_model_is_refused_naming_the_mismatch():
    from kuda_mmsa.errors import KudaCheckpointError
    from kuda_mmsa.training.checkpoints import load_state_checked

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    good = {k: torch.ones_like(v) for k, v in model.state_dict().items()}
    shapes = dict(good, **{"0.weight": torch.zeros(2, 4), "1.weight": torch.zeros(1, 3)})
    with pytest.raises(KudaCheckpointError, match=r"2 tensor\(s\) of another shape, e.g. 0.weight: checkpoint "
                                                  r"\(2, 4\), model \(2, 3\)\. It was made with \{'uid': 'u1'\}"):
        load_state_checked(model, shapes, "k/text.pth", "Stage-1 text checkpoint", "cmd", made_with={"uid": "u1"})
    missing = {k: v for k, v in good.items() if k != "1.bias"}
    with pytest.raises(KudaCheckpointError, match=r"1 missing key\(s\), e.g. 1.bias\. The data") as e:
        load_state_checked(model, missing, "k/text.pth", "Stage-1 text checkpoint", "cmd")
    assert "made with" not in str(e.value)
    with pytest.raises(KudaCheckpointError, match=r"1 unexpected key\(s\), e.g. 2.weight"):
        load_state_checked(model, dict(good, **{"2.weight": torch.zeros(1)}), "p", "W", "cmd")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_state_checked(model, missing, "p", "W", "cmd", strict=False)       # transfer: partial loads
    assert torch.equal(model.state_dict()["1.bias"], before["1.bias"])
    assert torch.equal(model.state_dict()["0.weight"], torch.ones(2, 3))
    load_state_checked(model, good, "p", "W", "cmd")
    assert all(torch.equal(v, good[k]) for k, v in model.state_dict().items())


def test_knowledge_from_another_dataset_needs_its_feature_file():
    from kuda_mmsa.errors import KudaInputError
    from tiny_kuda import run_of

    from kuda_mmsa.training.transfer import knowledge_modalities, source_info

    for info in (None, {}, {"dataset": "sims2"}, {"dataset": "sims2", "feature_file": ""}):
        with pytest.raises(KudaInputError, match="--knowledge-feature-file"):
            source_info(run_of(knowledge_from="sims2", knowledge_source=info))
    ok = {"dataset": "sims2", "feature_file": "/d/unaligned.pkl"}
    assert source_info(run_of(knowledge_source=ok)) == ok
    assert run_of(knowledge_from="sims2", dataset_name="mosi").cross_dataset
    assert not run_of(knowledge_from="mosi", dataset_name="mosi").cross_dataset
    assert not run_of(knowledge_from=None, dataset_name="mosi").cross_dataset
    cross = {"knowledge_from": "sims2", "dataset_name": "mosi", "use_knowledge": True}
    assert knowledge_modalities(run_of(**cross, knowledge_text="scratch")) == ("V", "A")
    assert knowledge_modalities(run_of(**cross, knowledge_text="own")) == ("T", "V", "A")
    assert knowledge_modalities(run_of(**{**cross, "use_knowledge": False})) == ()


def test_stage1_inside_stage2_leaves_every_random_stream_where_it_was():
    """Stage 1 run by stage 2 (auto_pretrain) must not shift stage 2's random streams:
    torch's, numpy's and Python's, whatever stage 1 draws and seeds."""
    import random

    import numpy as np

    from kuda_mmsa.training.stage1 import _seed_all, preserved_rng

    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    with preserved_rng():
        _seed_all(1234)                       # what stage 1 does
        first = (random.random(), float(np.random.rand()), float(torch.rand(())))
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
    _seed_all(1234)                           # and its seeding seeds all three
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == first
