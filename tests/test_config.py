"""The typed config: defaults from one schema, the per-dataset yaml, -c files (flat or
sectioned, YAML or JSON), command-line overrides, provenance, and every key checked
(unknown keys with the closest known one, types, ranges) before anything runs."""
import json
import os
import random

import pytest
import yaml

from kuda_mmsa.config import SCHEMA, render
from kuda_mmsa.errors import KudaInputError
from kuda_mmsa.mmsa.args import build_args, get_config_regression, get_config_tune, kuda_effective


def one_paragraph(msg):
    assert "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, kuda_cache):
    monkeypatch.delenv("MMSA_DATA_ROOT", raising=False)
    monkeypatch.delenv("KUDA_MMSA_KNOWLEDGE_DIR", raising=False)


def _write(tmp_path, data, name="c.yaml"):
    p = tmp_path / name
    p.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
    return p


def test_schema_defaults_are_the_papers_values():
    """KUDA's reference numbers (paper + authors' code): what the defaults must be."""
    expected = {"ratio_k": 0.1, "ce_weight": 0.1, "fusion_layers": 3, "hidden_size": 256, "fusion_heads": 8,
                "fusion_head_dim": 64, "fusion_ff_size": 512, "fusion_dropout": 0.3, "av_hidden_size": 128,
                "av_layers": 4, "av_heads": 8, "av_ff_size": 64, "av_dropout": 0.2,
                "text_adapter_layers": [3, 6, 9, 11], "adapter_layers": 2, "adapter_heads": 4,
                "adapter_dropout": 0.1, "decoder_dropout": 0.0, "head_sizes": [64, 32], "batch_size": 32,
                "learning_rate": 3e-5, "weight_decay": 1e-5, "epochs": 50, "warmup_ratio": 0.1,
                "pretrain.learning_rate": 1e-4, "pretrain.weight_decay": 1e-3, "pretrain.batch_size": 32,
                "pretrain.epochs": {"T": 100, "V": 100, "A": 50}}
    for k, v in expected.items():
        assert SCHEMA[k].default == v, k
    assert all(k.help for k in SCHEMA.values())


def test_kuda_config_demo(kuda_cache):
    a = get_config_regression("kuda", "demo")
    assert a.model_name == "kuda" and a.dataset_name == "demo"
    assert os.path.isfile(a.featurePath) and a.metrics_name == "SIMS"
    assert a.seq_lens == [24, 48, 32] and a.feature_dims == [64, 16, 20]   # from the data
    assert a.train_samples == 600 and a.has_unimodal_labels is True
    assert os.path.isfile(os.path.join(a.pretrained, "config.json"))
    assert a.hidden_size == 64 and a.fusion_mode == "dynamic"             # yaml demo section > default
    assert a.pretrain["epochs"] == {"T": 8, "V": 8, "A": 8}                # nested section
    assert a.pretrain["weight_decay"] == 1e-3                              # default kept beside it
    assert a.KeyEval == "Loss" and a.need_data_aligned is False and a.use_bert is True
    assert a.knowledge_dir == os.path.expanduser("~/MMSA/knowledge")


def test_paths_from_env_and_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("MMSA_DATA_ROOT", str(tmp_path / "env_root"))
    monkeypatch.setenv("KUDA_MMSA_KNOWLEDGE_DIR", str(tmp_path / "env_k"))
    a = get_config_regression("kuda", "sims2")
    assert a.dataset_name == "simsv2" and a.pretrained == "bert-base-chinese"
    assert a.featurePath == str(tmp_path / "env_root" / "SIMSv2/Processed/unaligned.pkl")
    assert a.knowledge_dir == str(tmp_path / "env_k")
    assert a.feature_dims == [768, 25, 177] and a.seq_lens == [50, 925, 232]
    a, eff = build_args("kuda", "simsv2", config={"data_root": str(tmp_path / "cli_root"),
                                                  "knowledge_dir": str(tmp_path / "k"),
                                                  "pretrained": "bert-base-multilingual-cased"},
                        config_source="command line")
    assert a.featurePath.startswith(str(tmp_path / "cli_root"))
    assert a.knowledge_dir == str(tmp_path / "k")
    assert a.pretrained == "bert-base-multilingual-cased" and eff.sources["pretrained"] == "command line"


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_user_config_file_layouts_and_provenance(tmp_path, fmt):
    layered = {"common": {"learning_rate": 1e-3, "pretrain": {"batch_size": 7}},
               "mosi": {"fusion_layers": 5}, "sims": {"fusion_layers": 9}}
    p = _write(tmp_path, layered, f"c.{fmt}")
    a, eff = build_args("kuda", "mosi", str(p))
    assert a.learning_rate == 1e-3 and a.fusion_layers == 5
    assert a.pretrain["batch_size"] == 7 and a.pretrain["learning_rate"] == 1e-4
    assert a.pretrained == "bert-base-uncased"
    assert eff.sources["fusion_layers"] == f"{p} [mosi]"
    assert eff.sources["learning_rate"] == f"{p} [common]"
    assert eff.sources["pretrain.batch_size"] == f"{p} [common]"
    assert eff.sources["ce_weight"] == "default"
    flat = _write(tmp_path, {"ce_weight": 0.5}, f"f.{fmt}")
    b = get_config_regression("kuda", "mosi", str(flat))
    assert b.ce_weight == 0.5 and b.fusion_layers == 3
    table = render(kuda_effective("mosi", str(p)))
    assert f"fusion_layers           5" in table and f"{p} [mosi]" in table


@pytest.mark.parametrize("data,words", [
    ({"learning_rat": 1e-4}, ["'learning_rat'", "Did you mean 'learning_rate'"]),
    ({"common": {"fusion_layer": 2}}, ["'fusion_layer'", "[common]", "'fusion_layers'"]),
    ({"mosi": {"ratio_kk": 2}}, ["'ratio_kk'", "[mosi]", "'ratio_k'"]),     # other datasets' sections checked too
    ({"pretrain": {"epoch": 3}}, ["'pretrain.epoch'", "'pretrain.epochs'"]),
    ({"learning_rate": "3e-5"}, ["'learning_rate'", "a number", "'3e-5'"]),
    ({"learning_rate": -1.0}, ["'learning_rate'", "> 0"]),
    ({"fusion_dropout": 1.0}, ["'fusion_dropout'", "[0, 1)"]),
    ({"batch_size": 0}, ["'batch_size'", ">= 1"]),
    ({"batch_size": 8.5}, ["'batch_size'", "an integer"]),
    ({"use_ratio": "yes"}, ["'use_ratio'", "true or false"]),
    ({"fusion_mode": "static"}, ["'fusion_mode'", "'dynamic', 'reference'"]),
    ({"pretrain": {"epochs": {"X": 3}}}, ["'pretrain.epochs'", "{T: int, V: int, A: int}"]),
    ({"feature_dims": [768, 5, 20]}, ["'feature_dims'", "read from the feature file"]),
    ({"tune": {"d_paras": ["learning_rat"]}}, ["'learning_rat'", "d_paras"]),
    ({"tune": {"learning_rate": [1e-4, "x"]}}, ["'learning_rate'", "[tune]"]),
])
def test_bad_config_is_refused_with_key_source_and_closest(tmp_path, data, words):
    p = _write(tmp_path, data)
    with pytest.raises(KudaInputError) as e:
        build_args("kuda", "sims", str(p))
    msg = one_paragraph(str(e.value))
    for w in words:
        assert w in msg, (w, msg)
    assert str(p) in msg


def test_overrides_from_mmsa_run_config_are_checked():
    with pytest.raises(KudaInputError, match=r"'ratio_kk' \(MMSA_run\(config=...\)\).*'ratio_k'"):
        build_args("kuda", "sims", config={"ratio_kk": 1.0})
    with pytest.raises(KudaInputError, match=r"command line"):
        build_args("kuda", "sims", config={"pretrained": 3}, config_source="command line")


def test_config_file_errors(tmp_path):
    with pytest.raises(KudaInputError, match="does not exist") as e:
        get_config_regression("kuda", "sims", str(tmp_path / "none.yaml"))
    one_paragraph(str(e.value))
    bad = tmp_path / "bad.yaml"
    bad.write_text("common: [unclosed\n")
    with pytest.raises(KudaInputError, match="could not be parsed"):
        get_config_regression("kuda", "sims", str(bad))
    lst = _write(tmp_path, [1, 2], "l.yaml")
    with pytest.raises(KudaInputError, match="holds a list"):
        get_config_regression("kuda", "sims", str(lst))
    with pytest.raises(KudaInputError, match="Unknown model 'nope'.*kuda"):
        get_config_regression("nope", "sims")
    import MMSA   # '' and MMSA's own default file mean "no user file"

    default = os.path.join(os.path.dirname(MMSA.__file__), "config", "config_regression.json")
    assert get_config_regression("kuda", "sims", default).fusion_layers == 3
    assert get_config_regression("kuda", "sims", "").fusion_layers == 3


def test_tune_draws_from_the_lists(kuda_cache):
    a, eff = build_args("kuda", "demo", tune=True, rng=random.Random(0))
    assert eff.tune["d_paras"] and all(k in a for k in eff.tune["d_paras"])
    for k in eff.tune["d_paras"]:
        assert a[k] in eff.tune[k] and eff.sources[k] == "tune draw"
    assert eff.tune["learning_rate"] == [2e-4, 5e-4, 1e-3]          # tune.demo overrides tune
    b = get_config_tune("kuda", "demo", random_choice=False)
    assert isinstance(b[b.d_paras[0]], list)


def test_stock_models_on_new_datasets_and_their_overrides(kuda_cache, tmp_path):
    s = get_config_regression("self_mm", "demo")
    assert os.path.isdir(s.pretrained) and s.text_out == 64 and s.feature_dims[0] == 64
    assert s.train_samples == 600 and s.batch_size == 32       # MMSA's 'sims' params
    l2 = get_config_regression("lf_dnn", "sims2")
    assert l2.dataset_name == "simsv2" and l2.need_normalized is True
    assert l2.feature_dims == [768, 25, 177]
    m = get_config_regression("tfn", "mosi")                   # stock dataset, our root
    assert m.featurePath.endswith("MOSI/Processed/unaligned_50.pkl")
    assert not m.featurePath.startswith("/home/sharing")
    t = get_config_tune("lf_dnn", "demo")
    assert "d_paras" in t and not isinstance(t.batch_size, list)
    a, _ = build_args("lf_dnn", "sims", config={"batch_size": 5, "data_root": str(tmp_path)})
    assert a.batch_size == 5 and a.featurePath.startswith(str(tmp_path))
    with pytest.raises(KudaInputError) as e:
        build_args("lf_dnn", "sims", config={"batch_sise": 5})
    for words in ("'batch_sise'", "Did you mean 'batch_size'", "MMSA model 'lf_dnn'"):
        assert words in str(e.value)


def test_stock_model_with_mmsa_layout_config_file(tmp_path, kuda_cache):
    import MMSA

    with open(os.path.join(os.path.dirname(MMSA.__file__), "config", "config_regression.json")) as f:
        full = json.load(f)
    full["lf_dnn"]["datasetParams"]["sims"]["batch_size"] = 7
    p = tmp_path / "mmsa_layout.json"
    p.write_text(json.dumps(full))
    assert get_config_regression("lf_dnn", "sims", str(p)).batch_size == 7
    assert get_config_regression("lf_dnn", "demo", str(p)).batch_size == 7   # 'sims' params
    flat = tmp_path / "flat.yaml"
    flat.write_text("batch_size: 5\n")
    assert get_config_regression("lf_dnn", "sims", str(flat)).batch_size == 5
    with pytest.raises(KudaInputError, match="MMSA's own layout"):
        get_config_regression("kuda", "sims", str(p))


def test_config_commands(capsys, tmp_path):
    from kuda_mmsa.cli.main import main

    p = _write(tmp_path, {"sims": {"ratio_k": 2.0}})
    assert main(["config", "show", "-d", "sims", "-c", str(p), "--pretrained", "/models/bert"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines() if len(line.split()) >= 4}
    assert rows["ratio_k"].split()[2] == "2.0" and rows["ratio_k"].endswith(f"{p} [sims]")
    assert rows["pretrained"].endswith("command line") and rows["epochs"].endswith("default")
    assert main(["config", "keys"]) == 0
    keys = capsys.readouterr().out
    for k in SCHEMA:
        assert f"  {k} = " in keys
    # each key's line shows its default and range, the next line its help (read from the
    # README's table of the keys most often changed, not from the code that prints them)
    lines = keys.splitlines()
    for name, default, help_words in (("learning_rate", "3e-05", "Stage-2"), ("batch_size", "32", ""),
                                      ("fusion_mode", "dynamic", "reference"), ("ratio_agreement", "3", ""),
                                      ("modality_dropout", "0", "missing")):
        i = next(i for i, line in enumerate(lines) if line.startswith(f"  {name} = "))
        assert lines[i].split(" = ")[1].split()[0] in (default, default + ".0"), lines[i]
        assert lines[i + 1].startswith("      ") and help_words in lines[i + 1], lines[i + 1]
    sections = [line for line in lines if line.startswith("[")]
    # and a registered choice (the ratio rules) one line each under its key, with its help
    from kuda_mmsa.registry import FUSIONS, RATIO_RULES

    for key, registry in (("ratio_source", RATIO_RULES), ("fusion", FUSIONS)):
        i = next(i for i, line in enumerate(lines) if line.startswith(f"  {key} = "))
        assert [line.split(":")[0].strip() for line in lines[i + 2:i + 2 + len(registry)]] == list(registry)
    assert len(sections) >= 3 and len(lines) == len(sections) + 2 * len(SCHEMA) + len(RATIO_RULES) + len(FUSIONS)
    assert main(["config", "show", "-d", "sims", "-c", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


@pytest.mark.parametrize("name,text", [("d.yaml", "learning_rate: 1.0e-4\nepochs: 3\nlearning_rate: 1.0e-3\n"),
                                       ("d.json", '{"common": {"epochs": 3, "epochs": 4}}')])
def test_a_key_set_twice_is_refused(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(KudaInputError, match="sets the key '(learning_rate|epochs)' twice") as e:
        build_args("kuda", "sims", str(p))
    one_paragraph(str(e.value))
    assert str(p) in str(e.value)


def test_bad_seeds_and_workers_are_refused(capsys):
    from kuda_mmsa.cli.main import main
    from kuda_mmsa.mmsa.run import MMSA_run

    for argv in (["-s", "-5"], ["-s", str(2 ** 32)], ["-n", "-1"]):
        with pytest.raises(SystemExit) as e:
            main(["-m", "kuda", "-d", "demo"] + argv)
        assert e.value.code == 2
        assert "outside" in capsys.readouterr().err
    with pytest.raises(KudaInputError, match=r"Seeds must be integers in \[0, 2\*\*32 - 1\]"):
        MMSA_run("kuda", "demo", seeds=[-1])


def test_the_written_model_config_has_exactly_the_schema_model_keys_with_their_defaults():
    # KuDAConfig is written out so model/ shows its fields; the schema stays the one source of
    # defaults: a key in one and not the other, or a default restated differently, fails here.
    import dataclasses

    from kuda_mmsa.config.schema import keys_of
    from kuda_mmsa.model import KuDAConfig

    data_facts = {"feature_dims", "seq_lens"}
    written = {f.name: f for f in dataclasses.fields(KuDAConfig)}
    schema = {k.name: k for k in keys_of("model")}
    assert set(written) - data_facts == set(schema)
    config = KuDAConfig(feature_dims=[8, 4, 6], seq_lens=[5, 7, 9])
    for name, key in schema.items():
        assert getattr(config, name) == key.default, name


def test_setting_reads_the_run_value_else_the_schema_default():
    from kuda_mmsa.config.schema import setting

    assert setting({"ce_weight": 0.5}, "ce_weight") == 0.5
    assert setting({}, "ce_weight") == SCHEMA["ce_weight"].default
    assert setting({"pretrain": {"seed": 7}}, "pretrain.seed") == 7
    assert setting({"pretrain": {}}, "pretrain.early_stop") == SCHEMA["pretrain.early_stop"].default
    assert setting({"KeyEval": None}, "KeyEval") is None     # an optional key's None is a value


def test_no_code_below_the_glue_restates_a_schema_default():
    # `args.get("grad_clip", 1.0)`-style reads drift from the schema when a default changes;
    # code below mmsa/ and cli/ reads keys with config.schema.setting instead
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "kuda_mmsa"
    found = []
    for path in [*root.glob("training/*.py"), *root.glob("model/*.py"), *root.glob("data/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                    and len(node.args) == 2 and isinstance(node.args[0], ast.Constant)
                    and (node.args[0].value in SCHEMA or f"pretrain.{node.args[0].value}" in SCHEMA)):
                found.append(f"{path.name}:{node.lineno} {node.args[0].value}")
    assert not found, found
