"""Every KuDA configuration key, in one place: type, range, default (the paper's value unless
the help says "ours") and a one-line help.

The schema builds the model config (kuda_mmsa.model.KuDAConfig is made from the ``model``
section), checks user configs (unknown keys, types, ranges) and writes the help text of
``python -m kuda_mmsa config keys``. configs/kuda.yaml holds only the per-dataset values
that differ from these defaults. Dataset facts (file names, shapes, label ranges) are not
keys: they come from the dataset table and the data.

Sections: ``model`` (the network), ``train`` (stage 2), ``pretrain`` (stage 1, written
nested as ``pretrain: {learning_rate: ...}``), ``run`` (where things are and what is
shown; they never change a result).
"""
from __future__ import annotations

from typing import Dict, List

from ..registry import FUSIONS, RATIO_RULES
from .keys import Key

FUSION_MODES = ("dynamic", "reference")
KNOWLEDGE_TEXT = ("source", "own", "scratch")
PRECISIONS = ("auto", "fp32", "bf16")
CHECKPOINTING = ("auto", "none", "sequences", "all")
GRAPH_MODES = ("auto", "off")
KEY_EVALS = ("Loss", "MAE", "Corr", "Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "Mult_acc_7",
             "F1_score", "Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score")

_UNIT = dict(low=0.0, high=1.0, high_open=True)      # dropout-like: [0, 1)
_POS = dict(low=0.0, low_open=True)                  # > 0
_NONNEG = dict(low=0.0)                              # >= 0


def _model(name, kind, default, help, **kw):
    return Key(name, kind, default, help, "model", **kw)


def _train(name, kind, default, help, **kw):
    return Key(name, kind, default, help, "train", **kw)


def _pretrain(name, kind, default, help, **kw):
    return Key(f"pretrain.{name}", kind, default, help, "pretrain", **kw)


def _run(name, kind, default, help, **kw):
    return Key(name, kind, default, help, "run", tunable=False, **kw)


KEYS: List[Key] = [
    # ---- model: fusion ---------------------------------------------------------------
    _model("fusion_mode", "str", "dynamic",
           "dynamic: ours (masked, the ratio weights each modality's message, same computation "
           "in training and evaluation); reference: the authors' computation and training.",
           choices=FUSION_MODES),
    _model("fusion", "str", "daf",
           "How the aligned modalities are fused (`config keys` lists each with its help): daf, "
           "the paper's dynamic attention fusion blocks; the others are ablations.",
           choices=FUSIONS),
    _model("ratio_source", "str", "reliability",
           "Where the sentiment ratio comes from in dynamic mode: a ratio rule (`config keys` lists "
           "each with its help). reliability is ours; the others are ablations.", choices=RATIO_RULES),
    _model("ratio_k", "float", 0.1,
           "k in r_m = exp(-k (s_m - s)^2) for the agreement sources (consensus, estimate, "
           "prediction, label); not used by reliability, which is scale-free.",
           **_POS),
    _model("ratio_agreement", "float", 3.0,
           "a in the reliability rule: how much a modality that disagrees with the others' median "
           "(in units of their typical error) is lowered; 0 = inverse-variance weighting alone.", **_NONNEG),
    _model("use_ratio", "bool", True, "false = static fusion: every modality weighted 1."),
    _model("use_knowledge", "bool", True,
           "false = no stage-1 knowledge: adapters and decoders start from random weights and "
           "train in stage 2 (an ablation)."),
    _model("use_adapters", "bool", True,
           "false = no knowledge adapters at all: each encoder's own output only (an ablation)."),
    _model("modality_dropout", "float", 0.0,
           "Ours: probability, per training sample and modality, that the modality is dropped "
           "(treated as missing), so the model learns what a missing modality looks like. "
           "At most two of the three are dropped for a sample.", **_UNIT),
    # ablation switches: one difference between dynamic and reference mode each
    _model("mask_padding", "bool", True,
           "Dynamic mode: padding is masked in attention, length alignment and every mean (stage 1 "
           "included). false = averaged over like real steps, as the authors do.", tunable=False),
    _model("zero_padding", "bool", False,
           "Dynamic mode with mask_padding false: padded vision and audio frames are set to 0 before "
           "the encoders, so what padding holds cannot change a prediction, while the means still run "
           "over the padded length (their share of padding tells a sample's length). No effect when "
           "padding is masked or in reference mode.", tunable=False),
    _model("authors_dropout", "bool", False,
           "Dynamic mode with the authors' dropout: after the cross-attention's output projection, none "
           "in the DAF feed-forward, and on the attention probabilities of the encoders and adapters "
           "(reference mode always).", tunable=False),
    _model("authors_combine", "bool", False,
           "Dynamic mode with the authors' combine in training: sum_m LN_m((1 + R_m) y_m), and the plain "
           "sum in evaluation (reference mode always).", tunable=False),
    _model("fusion_layers", "int", 3, "Number of DAF blocks.", low=1),
    _model("hidden_size", "int", 256, "D, the width of the aligned sequences and the fusion.", low=1),
    _model("fusion_heads", "int", 8, "Attention heads in the DAF blocks.", low=1),
    _model("fusion_head_dim", "int", 64, "Width of one DAF attention head.", low=1),
    _model("fusion_ff_size", "int", 512, "Feed-forward width in the DAF blocks.", low=1),
    _model("fusion_dropout", "float", 0.3, "Dropout in the DAF cross-attention and its feed-forward.",
           **_UNIT),
    _model("head_sizes", "int_list", [64, 32], "Hidden widths of the output MLP (256 -> 64 -> 32 -> 1).",
           low=1, tunable=False),
    # ---- model: unimodal encoders ------------------------------------------------------
    _model("pretrained", "str", None,
           "Text encoder: a local folder or a Hugging Face name in the local cache; null = the "
           "dataset's (bert-base-chinese for the SIMS sets, bert-base-uncased for MOSI/MOSEI, a "
           "tiny local BERT for demo).", optional=True, tunable=False),
    _model("av_hidden_size", "int", 128, "Width of the vision and audio Transformer encoders.", low=2),
    _model("av_layers", "int", 4, "Layers of the vision and audio encoders (their adapters tap "
           "layers 1 .. av_layers-1).", low=2),
    _model("av_heads", "int", 8, "Attention heads of the vision and audio encoders.", low=1),
    _model("av_ff_size", "int", 64, "Feed-forward width of the vision and audio encoders.", low=1),
    _model("av_dropout", "float", 0.2, "Dropout of the vision and audio encoders.", **_UNIT),
    _model("text_adapter_layers", "int_list", [3, 6, 9, 11],
           "Text-encoder hidden states feeding the text adapters, given for a 12-layer encoder "
           "and scaled to the encoder's depth.", low=1, tunable=False),
    _model("adapter_layers", "int", 2, "Transformer layers inside each knowledge adapter.", low=1),
    _model("adapter_heads", "int", 4, "Attention heads inside each knowledge adapter.", low=1),
    _model("adapter_dropout", "float", 0.1, "Dropout inside the knowledge adapters.", **_UNIT),
    _model("decoder_dropout", "float", 0.0,
           "Dropout before each unimodal decoder (the authors' code uses 0).", **_UNIT),
    _model("gradient_checkpointing", "str", "auto",
           "Recompute activations in backward instead of keeping them (same results, less "
           "memory, more time). sequences: the vision and audio encoders and adapters (long "
           "sequences: much memory, little compute; at CH-SIMS v2 sizes on CPU 0.4 GiB less "
           "peak memory for ~15% more time); all: also the text encoder and its adapters; "
           "none; auto: sequences when the model runs on a CPU, none on a GPU. true / false "
           "(earlier versions) mean all / none.",
           choices=CHECKPOINTING, tunable=False, aliases=((True, "all"), (False, "none"))),
    # ---- train: stage 2 ----------------------------------------------------------------
    _train("batch_size", "int", 32, "Stage-2 batch size.", low=1),
    _train("learning_rate", "float", 3e-5, "Stage-2 AdamW learning rate.", **_POS),
    _train("weight_decay", "float", 1e-5, "Stage-2 AdamW weight decay.", **_NONNEG),
    _train("epochs", "int", 50, "Stage-2 epochs (at most; see early_stop).", low=1),
    _train("warmup_ratio", "float", 0.1, "Share of the steps with a linear warm-up; cosine decay after.",
           **_UNIT),
    _train("grad_clip", "float", 1.0, "Ours: maximum global gradient norm; 0 = no clipping.", **_NONNEG),
    _train("early_stop", "int", 10,
           "Ours (MMSA's convention): stop after this many epochs without a better validation KeyEval.",
           low=1),
    _train("ce_weight", "float", 0.1, "alpha in loss = MSE + alpha * CE (correlation-estimation loss).",
           **_NONNEG),
    _train("freeze_knowledge", "bool", True, "Freeze adapters and decoders in stage 2."),
    _train("per_rank_batch", "bool", False,
           "Ours, data-parallel runs only (torchrun): false = batch_size is the global batch, split "
           "equally over the processes (the same steps as one process); true = each process takes "
           "batch_size samples (global batch = batch_size x processes, fewer steps per epoch).",
           tunable=False),
    _train("precision", "str", "auto",
           "auto: bfloat16 autocast only where the hardware computes it natively (a GPU with "
           "bf16, or a CPU with AVX512-BF16 or AMX), fp32 otherwise; fp32; bf16 (forced).",
           choices=PRECISIONS, tunable=False),
    _train("cuda_graphs", "str", "auto",
           "Ours: auto = on a CUDA GPU, capture the training step (forward, backward, clipping, "
           "AdamW) and the evaluation forward in CUDA graphs after a few eager steps and replay them "
           "for every full batch (the host no longer launches thousands of kernels per step; the "
           "padded vision/audio length is kept instead of trimmed per batch); eager on CPUs and in "
           "data-parallel runs, and where capture is impossible (logged); off = always eager.",
           choices=GRAPH_MODES, tunable=False),
    _train("KeyEval", "str", None,
           "Validation metric that selects the epoch; null = the dataset's (MMSA's choice).",
           choices=KEY_EVALS, optional=True, tunable=False),
    _train("auto_pretrain", "bool", True,
           "Run stage 1 first (announced) when its checkpoints are missing; false = stop with "
           "the command to run.", tunable=False),
    _train("knowledge_from", "str", None,
           "Use the stage-1 knowledge trained on this dataset (e.g. sims2 for MOSI/MOSEI, the "
           "paper's protocol); null = the run's own dataset.", optional=True, tunable=False),
    _train("knowledge_text", "str", "source",
           "With knowledge_from: where the text branch's knowledge comes from. source: stage 1 on the "
           "source dataset's text with this run's text encoder (its text must be tokenised for that "
           "encoder, e.g. sims -> simsv2); own: stage 1 on this run's own data (the multimodal label "
           "where it has no unimodal labels); scratch: text adapters and decoder start random and "
           "train in stage 2.", choices=KNOWLEDGE_TEXT, tunable=False),
    # ---- pretrain: stage 1 -------------------------------------------------------------
    _pretrain("learning_rate", "float", 1e-4, "Stage-1 AdamW learning rate.", **_POS),
    _pretrain("weight_decay", "float", 1e-3, "Stage-1 AdamW weight decay.", **_NONNEG),
    _pretrain("batch_size", "int", 32, "Stage-1 batch size.", low=1),
    _pretrain("epochs", "per_modality_int", {"T": 100, "V": 100, "A": 50},
              "Stage-1 epochs per modality ({T, V, A}) or one number for all.", low=1),
    _pretrain("early_stop", "int", 10,
              "Ours: stop a modality after this many epochs without a better validation MSE.", low=1),
    _pretrain("seed", "int", 1111,
              "Seed of stage 1 (one knowledge for every stage-2 seed, as the paper's protocol).", low=0,
              tunable=False),
    # ---- run: where things are (never changes a result) ---------------------------------
    _run("data_root", "str", None,
         "Folder of MMSA's datasets (MMSA's relative file names); null = $MMSA_DATA_ROOT, else "
         "~/MMSA/datasets.", optional=True),
    _run("knowledge_feature_file", "str", None,
         "With knowledge_from: the source dataset's MMSA-format feature pickle; null = that "
         "dataset's file under the data root.", optional=True),
    _run("knowledge_dir", "str", None,
         "Folder of the stage-1 checkpoints; null = $KUDA_MMSA_KNOWLEDGE_DIR, else ~/MMSA/knowledge.",
         optional=True),
    _run("plots", "bool", True, "Write a training-curve PNG next to the log of every KuDA run."),
    _run("progress", "bool", True, "Show progress bars."),
]

SCHEMA: Dict[str, Key] = {k.name: k for k in KEYS}
SECTIONS = ("model", "train", "pretrain", "run")
NESTED = ("pretrain",)          # sections written as a nested mapping in config files


def keys_of(section: str) -> List[Key]:
    return [k for k in KEYS if k.section == section]


def defaults() -> Dict[str, object]:
    """{dotted key: default} (a fresh copy: lists and mappings may be changed)."""
    import copy

    return {k.name: copy.deepcopy(k.default) for k in KEYS}


def setting(args, name: str):
    """The value of key ``name`` (dotted for nested sections: ``pretrain.seed``) in a run's
    args, else the schema's default: code below the glue reads keys through this, so no
    default is restated as a literal (the glue fills every key; partial args come from tests
    and tools)."""
    import copy

    if "." in name:
        section, sub = name.split(".", 1)
        mapping = args.get(section) or {}
        if sub in mapping:
            return mapping[sub]
    elif name in args:
        return args[name]
    return copy.deepcopy(SCHEMA[name].default)
