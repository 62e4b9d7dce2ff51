"""README "Extending": a new ratio rule is one class and one registry entry. The toy rule here
is registered the way the README shows, then reaches validation, `config keys`, the model
(its own head, trained and saved) and a whole MMSA run on the demo data."""
import csv

import pytest
import torch
from torch import nn
from tiny_kuda import write_tiny_config  # tests/ is on sys.path

from kuda_mmsa.model import RatioResult, RatioRule
from kuda_mmsa.model.ratio import masked_softmax
from kuda_mmsa.registry import RATIO_RULES

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
    RATIO_RULES._entries.pop("gate")


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
