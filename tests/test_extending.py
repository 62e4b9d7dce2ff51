"""README "Extending": a new ratio rule or fusion is one class and one registry entry. The toy
entries here are registered the way the README shows, then reach validation, `config keys`,
the model (their own modules, trained and saved) and a whole MMSA run on the demo data."""
import csv

import pytest
import torch
from torch import nn
from tiny_kuda import write_tiny_config  # tests/ is on sys.path

from kuda_mmsa.model import RatioResult, RatioRule
from kuda_mmsa.model.fusions import Fusion
from kuda_mmsa.model.layers import masked_mean
from kuda_mmsa.model.ratio import masked_softmax
from kuda_mmsa.registry import FUSIONS, RATIO_RULES

CALLS = {"train": 0, "eval": 0}
INIT = {}


@pytest.fixture
def gate_rule():
    # --- what a newcomer writes (README "Extending") -------------------------------------
    @RATIO_RULES.register()
    class Gate(RatioRule):
        name = "gate"
        help = "a learned linear gate over the unimodal scores"

        def heads(self, widths):
            gate = nn.Linear(len(widths), len(widths))
            INIT["gate"] = gate.weight.detach().clone()
            return {"gate": gate}

        def __call__(self, model, x):
            CALLS["train" if x.training else "eval"] += 1
            return RatioResult(masked_softmax(model.gate(x.detached), x.present))
    # ----------------------------------------------------------------------------------------
    yield Gate
    RATIO_RULES._entries.pop("gate"), RATIO_RULES._help.pop("gate")


def test_a_registered_ratio_rule_is_a_valid_choice_listed_with_its_help(gate_rule, capsys):
    from kuda_mmsa.cli.main import main
    from kuda_mmsa.model import KuDAConfig

    assert KuDAConfig(feature_dims=[8, 4, 6], seq_lens=[5, 7, 9], ratio_source="gate").ratio_source == "gate"
    assert main(["config", "keys"]) == 0
    assert "        gate: a learned linear gate over the unimodal scores" in capsys.readouterr().out.splitlines()


def test_a_registered_ratio_rule_trains_end_to_end_on_the_demo(gate_rule, tiny_demo_pickle, tmp_path):
    from kuda_mmsa.mmsa.register import register

    cfg = write_tiny_config(tmp_path / "tiny.yaml", ratio_source="gate", epochs=2)
    register()
    import MMSA.run

    CALLS.update(train=0, eval=0)
    MMSA.run.MMSA_run("kuda", "demo", config_file=str(cfg), config={"knowledge_dir": str(tmp_path / "knowledge")},
                      seeds=[5], custom_feature=str(tiny_demo_pickle), gpu_ids=[], num_workers=0, verbose_level=0,
                      model_save_dir=str(tmp_path / "models"), res_save_dir=str(tmp_path / "results"),
                      log_dir=str(tmp_path / "logs"))
    assert CALLS["train"] > 0 and CALLS["eval"] > 0          # the rule ran in training and evaluation
    state = torch.load(tmp_path / "models" / "kuda-demo.pth", weights_only=True)
    weight = [k for k in state if k.endswith("gate.weight")]
    assert len(weight) == 1                                        # its head is in the saved model,
    assert not torch.equal(state[weight[0]], INIT["gate"])        # trained in stage 2,
    assert not any("reliability." in k for k in state)             # and the default rule's heads are not
    with open(tmp_path / "results" / "normal" / "demo.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and rows[-1]["Model"].lower() == "kuda"


@pytest.fixture
def pooled_fusion():
    # --- what a newcomer writes (README "Extending") -------------------------------------
    @FUSIONS.register()
    class Pooled(Fusion):
        name = "pooled"
        help = "the ratio-weighted mean of the pooled sequences, one linear layer"

        def modules(self):
            return {"pool_mix": nn.Linear(self.config.hidden_size, self.config.hidden_size)}

        def __call__(self, model, sources, weight, text_pad, reference_ratio, present):
            w = weight.to(sources[0].dtype)
            pooled = sum(masked_mean(h, text_pad) * w[:, i, None] for i, h in enumerate(sources)) / len(sources)
            fused = model.pool_mix(pooled)
            return model.head(fused), fused
    # ----------------------------------------------------------------------------------------
    yield Pooled
    FUSIONS._entries.pop("pooled"), FUSIONS._help.pop("pooled")


def test_a_registered_fusion_trains_end_to_end_on_the_demo(pooled_fusion, tiny_demo_pickle, tmp_path, capsys):
    from kuda_mmsa.cli.main import main
    from kuda_mmsa.mmsa.register import register

    assert main(["config", "keys"]) == 0
    assert "        pooled: the ratio-weighted mean of the pooled sequences, one linear layer" in capsys.readouterr().out
    cfg = write_tiny_config(tmp_path / "tiny.yaml", fusion="pooled", epochs=1)
    register()
    import MMSA.run

    MMSA.run.MMSA_run("kuda", "demo", config_file=str(cfg), config={"knowledge_dir": str(tmp_path / "knowledge")},
                      seeds=[5], custom_feature=str(tiny_demo_pickle), gpu_ids=[], num_workers=0, verbose_level=0,
                      model_save_dir=str(tmp_path / "models"), res_save_dir=str(tmp_path / "results"),
                      log_dir=str(tmp_path / "logs"))
    state = torch.load(tmp_path / "models" / "kuda-demo.pth", weights_only=True)
    assert any(k.endswith("pool_mix.weight") for k in state)          # its module is in the saved model
    assert not any(".blocks." in k or k.startswith("blocks.") for k in state)   # and no DAF block
    with open(tmp_path / "results" / "normal" / "demo.csv") as f:
        assert list(csv.DictReader(f))
