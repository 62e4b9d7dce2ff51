"""The paper's protocol and its open questions as commands (issue 10), on generated data:
knowledge from another dataset with other dims, the fusion and knowledge ablations, every text
encoder family, evaluate on other data, and the one-command reproduction."""
import csv
import re

import numpy as np
import pytest
import torch
from tiny_kuda import write_tiny_config  # tests/ is on sys.path

from kuda_mmsa.errors import KudaCheckpointError, KudaInputError
from tests.conftest import TINY_DEMO

# a second generated "dataset": other feature dims and padded lengths than the tiny demo
OTHER_DIMS = dict(TINY_DEMO, vision_dim=9, audio_dim=4, vision_len=7, audio_len=12, text_len=10, seed=5)


@pytest.fixture(scope="module")
def other_pickle(kuda_cache):
    from kuda_mmsa.data import ensure_demo_data

    return ensure_demo_data(kuda_cache, **OTHER_DIMS)


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("protocol")


@pytest.fixture(scope="module")
def cfg_file(module_dir):
    return write_tiny_config(module_dir / "tiny.yaml", epochs=1)


def kuda_args(dataset, feature_file, cfg_file, knowledge_dir, **over):
    """Full KuDA args for a feature file, with the shapes read from the data (as MMSA_run does),
    and the loaders' datasets."""
    from kuda_mmsa.mmsa.args import build_args
    from kuda_mmsa.mmsa.loader import MMDataLoader

    args, _ = build_args("kuda", dataset, str(cfg_file), dict({"knowledge_dir": str(knowledge_dir),
                                                                "progress": False, "plots": False}, **over),
                         custom_feature=str(feature_file))
    args.custom_feature = str(feature_file)
    args.device = torch.device("cpu")
    torch.manual_seed(0)
    loaders = MMDataLoader(args, 0)
    return args, loaders


def _datasets(loaders):
    return {s: dl.dataset for s, dl in loaders.items()}


# ---------------------------------------------------------------------- 1. knowledge from another dataset
def test_knowledge_from_a_dataset_with_other_dims_loads_adapters_and_trains_projections(
        tiny_demo_pickle, other_pickle, tiny_bert_dir, cfg_file, module_dir):
    from kuda_mmsa.model import build_kuda
    from kuda_mmsa.training.run_config import RunConfig
    from kuda_mmsa.training.transfer import load_cross_dataset_knowledge
    from kuda_mmsa.training.trainer import KuDATrainer

    args, loaders = kuda_args("mosi", other_pickle, cfg_file, module_dir / "knowledge", knowledge_from="sims",
                              knowledge_feature_file=str(tiny_demo_pickle), pretrained=str(tiny_bert_dir))
    assert args.knowledge_source["feature_file"] == str(tiny_demo_pickle)
    torch.manual_seed(0)
    model = build_kuda(args)
    init = {m: {k: v.clone() for k, v in model.branches[m].state_dict().items()} for m in "TVA"}
    folder, uids, report = load_cross_dataset_knowledge(model, RunConfig.from_args(args), _datasets(loaders))
    assert "/sims/" in folder and set(uids) == {"T", "V", "A"}       # stage 1 ran on the source
    for m, (src_dim, dim) in {"V": (6, 9), "A": (5, 4)}.items():
        r = report[m]
        assert r["source"] == "sims" and r["rescaled"]
        assert set(r["fresh"]) == {"proj.weight", "proj.bias", "pos"}
        ckpt = torch.load(r["path"], map_location="cpu", weights_only=True)
        assert ckpt["meta"]["feature_dim"] == src_dim and model.branches[m].in_dim == dim
        state = model.branches[m].state_dict()
        for name in r["fresh"]:                                       # the model's own initialisation
            torch.testing.assert_close(state[name], init[m][name])
        last = [k for k in state if k.startswith("decoder.")][-2:]      # the rescaled last linear layer
        for name in r["loaded"]:
            if name in last:
                continue
            torch.testing.assert_close(state[name], ckpt["state_dict"][name])
        assert any(n.startswith("adapters.") for n in r["loaded"]) and any(n.startswith("encoder.") for n in r["loaded"])
        w, b = (ckpt["state_dict"][k] for k in sorted(last, key=lambda k: not k.endswith("weight")))
        torch.testing.assert_close(state[[k for k in last if k.endswith("weight")][0]], w * 3)   # [-1,1] -> [-3,3]
        torch.testing.assert_close(state[[k for k in last if k.endswith("bias")][0]], b * 3)
    assert report["T"]["fresh"] == [] and any(n.startswith("bert.") for n in report["T"]["loaded"])

    # what trains: through the trainer, by parameter name
    torch.manual_seed(0)
    model = build_kuda(args)
    KuDATrainer(args).load_knowledge(model, _datasets(loaders))
    for m in "VA":
        named = dict(model.branches[m].named_parameters())
        assert named["proj.weight"].requires_grad and named["pos"].requires_grad
        assert all(p.requires_grad for n, p in named.items() if n.startswith("encoder."))
        assert not any(p.requires_grad for n, p in named.items() if n.startswith(("adapters.", "decoder.")))
    assert not any(p.requires_grad for p in model.branches["T"].adapters.parameters())


def test_text_knowledge_scratch_trains_text_adapters_and_own_uses_the_runs_data(
        tiny_demo_pickle, other_pickle, tiny_bert_dir, cfg_file, module_dir):
    from kuda_mmsa.model import build_kuda
    from kuda_mmsa.training.run_config import RunConfig
    from kuda_mmsa.training.transfer import load_cross_dataset_knowledge
    from kuda_mmsa.training.trainer import KuDATrainer

    common = dict(knowledge_from="sims", knowledge_feature_file=str(tiny_demo_pickle), pretrained=str(tiny_bert_dir))
    args, loaders = kuda_args("mosi", other_pickle, cfg_file, module_dir / "knowledge", knowledge_text="scratch",
                              **common)
    model = build_kuda(args)
    KuDATrainer(args).load_knowledge(model, _datasets(loaders))
    assert all(p.requires_grad for p in model.branches["T"].adapters.parameters())
    assert all(p.requires_grad for p in model.branches["T"].decoder.parameters())
    assert not any(p.requires_grad for p in model.branches["V"].adapters.parameters())

    args, loaders = kuda_args("mosi", other_pickle, cfg_file, module_dir / "knowledge", knowledge_text="own", **common)
    _, uids, report = load_cross_dataset_knowledge(build_kuda(args), RunConfig.from_args(args), _datasets(loaders))
    assert report["T"]["source"] == "mosi" and "/mosi/" in report["T"]["path"]
    assert report["V"]["source"] == "sims" and uids["T"] != uids["V"]


def test_a_transfer_that_cannot_work_names_the_dims_on_both_sides():
    from transformers import BertConfig

    from kuda_mmsa.model import KuDAConfig, build_branch
    from kuda_mmsa.training.transfer import transfer_state

    def config(av):
        bert = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=32)
        return KuDAConfig(feature_dims=[16, 5, 6], seq_lens=[8, 10, 8], pretrained=bert, av_hidden_size=av,
                          av_heads=2, adapter_heads=2, hidden_size=16, fusion_heads=2)

    theirs = build_branch(config(16), "V").state_dict()
    with pytest.raises(KudaCheckpointError) as e:
        transfer_state(build_branch(config(8), "V"), theirs, "V", "/k/sims/vision.pth",
                       {"dataset": "sims", "feature_dim": 709, "seq_len": 55},
                       {"dataset": "mosi", "feature_dim": 20, "seq_len": 500})
    msg = str(e.value)
    assert "feature dim 709, padded length 55" in msg and "feature dim 20, padded length 500" in msg
    assert "there and" in msg and "'sims'" in msg and "'mosi'" in msg


def test_source_text_of_another_tokenizer_is_a_clear_error(tiny_bert_dir, other_pickle, cfg_file, module_dir,
                                                           kuda_cache):
    from kuda_mmsa.cli.retokenize import retokenize_file
    from kuda_mmsa.data import ensure_demo_data
    from kuda_mmsa.data.tiny_encoders import ensure_tiny_encoder
    from kuda_mmsa.model import build_kuda
    from kuda_mmsa.training.run_config import RunConfig
    from kuda_mmsa.training.transfer import load_cross_dataset_knowledge

    source = ensure_demo_data(kuda_cache, **dict(TINY_DEMO, seed=8))
    roberta_ids = retokenize_file(source, ensure_tiny_encoder("roberta", kuda_cache), module_dir / "src-roberta.pkl")
    args, loaders = kuda_args("mosi", other_pickle, cfg_file, module_dir / "knowledge", knowledge_from="sims",
                              knowledge_feature_file=str(roberta_ids), pretrained=str(tiny_bert_dir))
    with pytest.raises(KudaInputError, match=r"knowledge_text: own") as e:
        load_cross_dataset_knowledge(build_kuda(args), RunConfig.from_args(args), _datasets(loaders))
    assert str(roberta_ids) in str(e.value) and "retokenize" in str(e.value)


def test_knowledge_feature_file_without_knowledge_from_is_refused(tiny_demo_pickle, cfg_file):
    from kuda_mmsa.mmsa.args import build_args

    with pytest.raises(KudaInputError, match="knowledge_from is not set"):
        build_args("kuda", "sims", str(cfg_file), {"knowledge_feature_file": str(tiny_demo_pickle)},
                   custom_feature=str(tiny_demo_pickle))


# ---------------------------------------------------------------------- 2. fusion and knowledge ablations
def _tiny_model(**over):
    from transformers import BertConfig

    from kuda_mmsa.model import KuDA, KuDAConfig

    bert = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg = KuDAConfig(feature_dims=[16, 5, 7], seq_lens=[8, 10, 9], pretrained=bert, hidden_size=16, fusion_heads=2,
                     fusion_head_dim=8, fusion_ff_size=32, av_hidden_size=8, av_heads=2, av_ff_size=8, av_layers=2,
                     adapter_heads=2, fusion_dropout=0.0, av_dropout=0.0, adapter_dropout=0.0, **over)
    torch.manual_seed(0)
    return KuDA(cfg)


def _batch(b=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (b, 8), generator=g)
    mask = (torch.arange(8)[None] < torch.randint(3, 9, (b,), generator=g)[:, None]).float()
    text = torch.stack([ids * mask, mask, torch.zeros(b, 8)], 1)
    inputs = dict(text=text, audio=torch.randn(b, 10, 5, generator=g), vision=torch.randn(b, 9, 7, generator=g),
                  audio_lengths=torch.randint(1, 11, (b,), generator=g), vision_lengths=torch.randint(1, 10, (b,),
                                                                                               generator=g))
    return inputs, torch.rand(b, 1, generator=g) * 2 - 1


@pytest.mark.parametrize("fusion", ["concat", "add", "late"])
def test_fusion_variants_train_and_their_output_follows_every_input(fusion):
    model = _tiny_model(fusion=fusion)
    assert len(model.blocks) == 0 and model.fusion_variant is not None
    inputs, labels = _batch()
    model.eval()
    with torch.no_grad():
        base = model(**inputs)["M"]
        for key in ("vision", "audio"):
            changed = dict(inputs, **{key: inputs[key] + torch.randn_like(inputs[key])})
            assert not torch.allclose(model(**changed)["M"], base), key
        text = inputs["text"].clone()
        text[:, 0, 1] = (text[:, 0, 1] - 5 + 7) % 55 + 5          # another word at a valid position
        assert not torch.allclose(model(**dict(inputs, text=text))["M"], base)
    out = model(**inputs, labels=labels)
    assert set(out) >= {"M", "T", "V", "A", "ratio", "present", "ce"} and out["M"].shape == (6, 1)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(25):
        out = model(**inputs, labels=labels)
        loss = torch.nn.functional.mse_loss(out["M"], labels) + 0.1 * out["ce"]
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.fusion_variant.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_fusion_variants_ignore_a_missing_modality():
    for fusion in ("concat", "add", "late"):
        model = _tiny_model(fusion=fusion).eval()
        inputs, _ = _batch()
        inputs["vision_lengths"] = torch.zeros_like(inputs["vision_lengths"])
        with torch.no_grad():
            a = model(**inputs)["M"]
            b = model(**dict(inputs, vision=torch.randn_like(inputs["vision"]) * 5))["M"]
        torch.testing.assert_close(a, b)


def test_new_variants_are_registered_and_run_through_the_ablation_runner(tiny_demo_pickle, cfg_file, module_dir):
    from kuda_mmsa.experiments import ablation as ablate
    from kuda_mmsa.experiments.variants import VARIANTS

    assert VARIANTS["kuda_concat"].config == {"fusion": "concat"}
    assert VARIANTS["kuda_add"].config == {"fusion": "add"}
    assert VARIANTS["kuda_late"].config == {"fusion": "late"}
    assert VARIANTS["kuda_no_adapters"].config == {"use_adapters": False}
    assert VARIANTS["kuda_no_knowledge"].config == {"use_knowledge": False}
    out = module_dir / "abl"
    res = ablate.run_ablation("demo", [3], ["kuda_no_adapters", "kuda_late"], out, feature_file=str(tiny_demo_pickle),
                              config_file=str(cfg_file), verbose_level=0, echo=lambda *a: None,
                              config={"knowledge_dir": str(module_dir / "knowledge"), "plots": False})
    assert res["ran"] == [("kuda_no_adapters", 3), ("kuda_late", 3)] and not res["failed"]
    assert "'use_adapters': False" in (out / "runs" / "kuda_no_adapters" / "seed3" / "kuda-demo.log").read_text()
    assert "'fusion': 'late'" in (out / "runs" / "kuda_late" / "seed3" / "kuda-demo.log").read_text()


# ---------------------------------------------------------------------- 3. every text encoder family
FAMILIES = ("bert", "roberta", "xlm-roberta", "deberta-v2", "electra")
# a family whose start token ([CLS], <s>) has another id, to make a mismatching file
OTHER_LAYOUT = {"bert": "roberta", "electra": "deberta-v2", "roberta": "bert", "xlm-roberta": "deberta-v2",
                "deberta-v2": "bert"}


@pytest.fixture(scope="module")
def family_files(kuda_cache, tiny_demo_pickle, module_dir):
    from kuda_mmsa.cli.retokenize import retokenize_file
    from kuda_mmsa.data.tiny_encoders import ensure_tiny_encoder

    out = {}
    for f in FAMILIES:
        folder = ensure_tiny_encoder(f, kuda_cache)
        out[f] = (folder, retokenize_file(tiny_demo_pickle, folder, module_dir / f"demo-{f}.pkl"))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_each_encoder_family_runs_a_stage2_step(family, family_files, cfg_file, module_dir):
    from kuda_mmsa.model import build_kuda
    from kuda_mmsa.training.trainer import KuDATrainer

    folder, data = family_files[family]
    args, loaders = kuda_args("demo", data, cfg_file, module_dir / "knowledge", pretrained=str(folder),
                              use_knowledge=False, epochs=1)
    args.model_save_path = module_dir / f"kuda-{family}.pth"
    args.cur_seed, args.seed = 1, 1
    model = build_kuda(args)
    assert model.branches["T"].bert.config.model_type == family
    bert_before = {k: v.clone() for k, v in model.branches["T"].bert.state_dict().items()}
    KuDATrainer(args).do_train(model, loaders)
    assert args.model_save_path.is_file()
    moved = [k for k, v in model.branches["T"].bert.state_dict().items()
             if v.dtype.is_floating_point and not torch.equal(v, bert_before[k])]
    assert moved                                                   # the encoder trained in stage 2


def test_encoder_inputs_follow_the_model_type(family_files):
    from kuda_mmsa.model.encoders import TextBranch, load_text_encoder

    from kuda_mmsa.model import KuDAConfig

    text = torch.tensor([[[0, 6, 7, 2, 0, 0], [1, 1, 1, 1, 0, 0], [0, 0, 0, 1, 0, 0]]], dtype=torch.float)
    seen = {}
    for family in FAMILIES:
        folder = family_files[family][0]
        cfg = KuDAConfig(feature_dims=[32, 5, 6], seq_lens=[6, 10, 8], pretrained=load_text_encoder(str(folder)),
                         av_hidden_size=8, av_heads=2, adapter_heads=2, hidden_size=16, fusion_heads=2)
        seen[family] = TextBranch(cfg).encoder_inputs(text)
    assert seen["roberta"]["input_ids"][0, 4:].tolist() == [1, 1]          # RoBERTa's pad id on padding
    assert seen["roberta"]["token_type_ids"].abs().sum() == 0              # one token type: zeros
    assert seen["bert"]["token_type_ids"][0].tolist() == [0, 0, 0, 1, 0, 0]   # segments kept
    assert "token_type_ids" not in seen["deberta-v2"]                      # v3 layout: no token types


@pytest.mark.parametrize("family", FAMILIES)
def test_a_file_tokenised_for_another_vocabulary_is_a_clear_error(family, family_files, cfg_file, module_dir):
    from kuda_mmsa.model import build_kuda
    from kuda_mmsa.training.trainer import KuDATrainer

    folder = family_files[family][0]
    wrong = family_files[OTHER_LAYOUT[family]][1]
    args, loaders = kuda_args("demo", wrong, cfg_file, module_dir / "knowledge", pretrained=str(folder),
                              use_knowledge=False)
    with pytest.raises(KudaInputError) as e:
        KuDATrainer(args).load_knowledge(build_kuda(args), _datasets(loaders))
    msg = str(e.value)
    assert "do not come from the tokenizer" in msg and str(wrong) in msg and "retokenize" in msg


def test_ids_of_another_vocabulary_with_the_right_start_token_are_caught_from_the_raw_text(
        write_variant, tiny_bert_dir, cfg_file, module_dir):
    from kuda_mmsa.model import build_kuda
    from kuda_mmsa.training.trainer import KuDATrainer

    def shuffle_words(data):                      # same size and specials, other word ids
        perm = np.random.default_rng(0).permutation(np.arange(5, 517))
        for split in data.values():
            ids = split["text_bert"][:, 0].astype(int)
            words = ids >= 5
            ids[words] = perm[ids[words] - 5]
            split["text_bert"][:, 0] = ids

    path = write_variant(shuffle_words)
    args, loaders = kuda_args("demo", path, cfg_file, module_dir / "knowledge", pretrained=str(tiny_bert_dir),
                              use_knowledge=False)
    with pytest.raises(KudaInputError, match=r"gives the same id at only \d+%"):
        KuDATrainer(args).load_knowledge(build_kuda(args), _datasets(loaders))


def test_retokenize_needs_raw_text_for_every_text(write_variant, family_files, capsys, module_dir):
    from kuda_mmsa.cli.main import main

    def drop_raw(data):
        data["train"]["raw_text"][0] = ""
    path = write_variant(drop_raw)
    rc = main(["retokenize", "--feature-file", str(path), "--pretrained", str(family_files["roberta"][0]),
               "--out", str(module_dir / "x.pkl")])
    err = capsys.readouterr().err
    assert rc == 2 and "no raw text" in err and "Traceback" not in err


# ---------------------------------------------------------------------- 4. reproduce and evaluate
def _repro_argv(tiny_demo_pickle, other_pickle, tiny_bert_dir, cfg_file, module_dir, *extra):
    return ["reproduce", "-d", "sims", "mosi", "--feature-file-for", f"sims={tiny_demo_pickle}",
            "--feature-file-for", f"mosi={other_pickle}", "--pretrained-zh", str(tiny_bert_dir),
            "--pretrained-en", str(tiny_bert_dir), "--knowledge-from", "sims", "-s", "1", "--variants", "kuda",
            "lf_dnn", "-c", str(cfg_file), "--knowledge-dir", str(module_dir / "repro-knowledge"),
            "--out", str(module_dir / "repro"), "-n", "0", "-v", "0", "--no-plots", *extra]


def test_reproduce_dry_run_prints_the_plan_and_runs_nothing(tiny_demo_pickle, other_pickle, tiny_bert_dir, cfg_file,
                                                            module_dir, capsys):
    from kuda_mmsa.cli.main import main

    assert main(_repro_argv(tiny_demo_pickle, other_pickle, tiny_bert_dir, cfg_file, module_dir, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "[sims]" in out and "[mosi]" in out and "Runs to do: 4" in out
    assert "knowledge: V, A from 'sims'" in out and "text: source" in out
    assert re.search(r"estimated time per KuDA run: \d+ s", out)
    assert not (module_dir / "repro").exists() and not (module_dir / "repro-knowledge").exists()


@pytest.fixture(scope="module")
def reproduced(tiny_demo_pickle, other_pickle, tiny_bert_dir, cfg_file, module_dir):
    from kuda_mmsa.cli.main import main

    rc = main(_repro_argv(tiny_demo_pickle, other_pickle, tiny_bert_dir, cfg_file, module_dir))
    return rc, module_dir / "repro"


def test_reproduce_on_two_datasets_writes_reproduction_md_with_sources(reproduced):
    rc, out = reproduced
    assert rc == 0
    md = (out / "reproduction.md").read_text()
    assert "## sims" in md and "## mosi" in md and "knowledge from sims" in md
    rows = [line.split("|")[1:-1] for line in md.splitlines() if line.startswith("| kuda") or
            line.startswith("| lf_dnn")]
    rows = [[c.strip() for c in r] for r in rows]
    assert {r[0] for r in rows} == {"kuda", "lf_dnn"}
    for variant, metric, ours, seeds, pub, delta, source in rows:
        assert re.fullmatch(r"-?\d\.\d{4} ± \d\.\d{4}", ours) and seeds == "1"
        assert bool(pub) == bool(source) == bool(delta)                # never a number without its source
        if variant == "kuda":
            assert not pub                                              # no source for the paper's numbers here
        if pub:
            assert source == "[MMSA]"
            assert float(delta) == pytest.approx(float(ours.split(" ")[0]) - float(pub), abs=1.5e-4)
    lf_mae = [r for r in rows if r[0] == "lf_dnn" and r[1] == "MAE"]
    assert [r[4] for r in lf_mae] == ["0.4463", "0.9548"]               # sims, mosi as MMSA published them
    assert "results/result-stat.md" in md
    with open(out / "reproduction.csv") as f:
        assert len(list(csv.DictReader(f))) == 4


def test_reproduce_again_runs_nothing(reproduced, tiny_demo_pickle, other_pickle, tiny_bert_dir, cfg_file, module_dir,
                                      monkeypatch, capsys):
    from kuda_mmsa.cli.main import main
    from kuda_mmsa.mmsa import run as run_mod

    monkeypatch.setattr(run_mod, "run_seed", lambda *a, **k: pytest.fail("a finished cell ran again"))
    assert main(_repro_argv(tiny_demo_pickle, other_pickle, tiny_bert_dir, cfg_file, module_dir)) == 0
    assert "ran now: 0 cell(s)" in capsys.readouterr().out


def test_evaluate_on_other_data(reproduced, tiny_demo_pickle, other_pickle, kuda_cache, capsys):
    from kuda_mmsa.cli.main import main
    from kuda_mmsa.data import ensure_demo_data

    _, out = reproduced
    weights = out / "sims" / "runs" / "kuda" / "seed1" / "kuda-sims.pth"
    same_dims = ensure_demo_data(kuda_cache, **dict(TINY_DEMO, seed=21))       # other data, the same dims
    assert main(["evaluate", "--weights", str(weights), "--feature-file", str(same_dims), "-d", "mosi",
                 "--out", str(out / "eval")]) == 0
    text = capsys.readouterr().out
    assert "12 test samples of mosi" in text and "MAE" in text and "mapped from [-1.0, 1.0] to [-3.0, 3.0]" in text
    assert (out / "eval" / "evaluate.json").is_file()

    rc = main(["evaluate", "--weights", str(weights), "--feature-file", str(other_pickle), "-d", "mosi"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "vision length 8 x dim 6, audio length 10 x dim 5" in err        # the model's
    assert "vision length 7 x dim 9, audio length 12 x dim 4" in err        # the data's
