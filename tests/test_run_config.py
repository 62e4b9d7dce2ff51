"""The typed run object (kuda_mmsa.training.run_config.RunConfig): its sections are the schema's,
it carries every key and fact of a run as MMSA's args hold them, and no code below the glue
reads a run's string keys any more."""
import ast
from dataclasses import fields
from pathlib import Path

import pytest

from kuda_mmsa.config.schema import KEYS
from kuda_mmsa.training.run_config import SECTION_CLASSES, RunConfig

ROOT = Path(__file__).resolve().parents[1] / "kuda_mmsa"


@pytest.mark.parametrize("section", sorted(SECTION_CLASSES))
def test_each_section_has_a_field_for_every_schema_key_and_no_other(section):
    want = {k.name.split(".", 1)[-1] for k in KEYS if k.section == section}
    assert {f.name for f in fields(SECTION_CLASSES[section])} == want


def test_every_default_is_the_schemas():
    run = RunConfig.from_args({"feature_dims": [8, 4, 6], "seq_lens": [5, 6, 7]})
    for key in KEYS:
        if key.section == "model":
            got = getattr(run.model, key.name)
        else:
            holder = {"train": run.train, "pretrain": run.pretrain, "run": run.places}[key.section]
            got = getattr(holder, key.name.split(".", 1)[-1])
        assert got == key.default, key.name


def test_facts_left_out_mean_one_process_on_the_cpu_the_first_seed_and_unimodal_labels():
    # what args written by hand (tools, tests, older callers) get, as the code before the typed
    # run read them: args.get("world_size", 1), args.get("has_unimodal_labels", True), ...
    run = RunConfig.from_args({"feature_dims": [8, 4, 6], "seq_lens": [5, 6, 7]})
    assert (run.world_size, run.has_unimodal_labels, run.cur_seed, run.device, run.is_tune) == (
        1, True, 1, "cpu", False)
    assert run.feature_file is None and run.knowledge_dataset is None and not run.cross_dataset


def test_a_built_run_carries_every_key_and_fact_of_mmsa_args(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    from kuda_mmsa.mmsa.args import build_args

    args, _ = build_args("kuda", "demo", config={"learning_rate": 0.002, "pretrain": {"seed": 7}, "plots": False,
                                                 "fusion_mode": "reference"})
    args.update(seed=1112, device="cpu", model_save_path=str(tmp_path / "k.pth"), cur_seed=2, is_tune=True,
                world_size=3, custom_feature="/c.pkl", data_fingerprint={"hash": "h"}, pretrained_arg="tiny")
    run = RunConfig.from_args(args)
    for key in KEYS:
        if key.section == "model":
            assert getattr(run.model, key.name) == args[key.name], key.name
        elif key.section == "pretrain":
            assert getattr(run.pretrain, key.name.split(".")[1]) == args["pretrain"][key.name.split(".")[1]], key.name
        else:
            holder = run.train if key.section == "train" else run.places
            assert getattr(holder, key.name) == args[key.name], key.name
    assert (run.train.learning_rate, run.pretrain.seed, run.places.plots, run.model.fusion_mode) == (
        0.002, 7, False, "reference")
    assert (run.seed, run.cur_seed, run.is_tune, run.world_size, run.model_save_path) == (
        1112, 2, True, 3, str(tmp_path / "k.pth"))
    assert (run.dataset_name, run.metrics_name, run.label_range, run.language) == (
        "demo", args["metrics_name"], args["label_range"], args["language"])
    assert run.feature_file == "/c.pkl" and run.feature_path == args["featurePath"]
    assert run.model.feature_dims == args["feature_dims"] and run.model.seq_lens == args["seq_lens"]
    assert RunConfig.from_args(run) is run


def test_with_puts_each_change_in_its_section_and_checks_it():
    run = RunConfig.from_args({"feature_dims": [8, 4, 6], "seq_lens": [5, 6, 7], "dataset_name": "mosi"})
    other = run.with_(knowledge_from="sims", av_layers=3, plots=False, dataset_name="sims2")
    assert (other.train.knowledge_from, other.model.av_layers, other.places.plots, other.dataset_name) == (
        "sims", 3, False, "sims2")
    assert (run.train.knowledge_from, run.model.av_layers, run.places.plots, run.dataset_name) == (
        None, 4, True, "mosi")          # a copy: the run itself is unchanged
    with pytest.raises(KeyError, match="no_such_key"):
        run.with_(no_such_key=1)
    from kuda_mmsa.errors import KudaInputError
    with pytest.raises(KudaInputError):
        run.with_(hidden_size=-1)


# Where a run's string keys may still be read: the glue (mmsa/) and what sits above it
# (experiments/, cli/: they build runs through MMSA's args), and the three places that turn
# them into the typed objects.
CONVERTERS = {"training/run_config.py", "model/config.py", "config/schema.py"}


def _string_reads(path: Path):
    """Lines where a mapping named ``args`` is read by key (args["k"], args.get("k"), args.k)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        target = None
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "args":
            target = node
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "args":
            target = node
        if target is not None:
            out.append(target.lineno)
    return out


def test_no_code_below_the_glue_reads_a_runs_string_keys():
    found = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.split("/")[0] in ("cli", "experiments", "mmsa") or rel in CONVERTERS or "/" not in rel:
            continue
        lines = _string_reads(path)
        if lines:
            found[rel] = lines
    assert not found, f"string-keyed reads of a run's args below the glue: {found}"
