"""RunConfig: one KuDA run, typed, built once from MMSA's args where MMSA hands them over.

MMSA passes a run around as an EasyDict of string keys. Below the glue (training/, the
stage-1 job, knowledge transfer) a run is this frozen object instead: the schema's sections
as written dataclasses (``model`` is the network's KuDAConfig; ``train``, ``pretrain``,
``places``) plus the facts MMSA and the glue add (dataset, seed, device, where the weights
go, the data's fingerprint). Every field default is the schema's, read through
``config.schema`` (a test checks each section's fields against the schema's keys), so no
default is restated here or in the code that reads it.

``RunConfig.from_args(args)`` is the one place a run's string keys are read. Partial args
(tests, tools) get the schema's defaults for what they leave out.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, List, Mapping, Optional

from ..config.schema import SCHEMA, setting
from ..model import KuDAConfig
from ..model.config import default     # a field whose default is the schema's


@dataclass(frozen=True)
class TrainConfig:
    """The schema's ``train`` section: stage 2 (see each key's help in the schema)."""
    batch_size: int = default("batch_size")
    learning_rate: float = default("learning_rate")
    weight_decay: float = default("weight_decay")
    epochs: int = default("epochs")
    warmup_ratio: float = default("warmup_ratio")
    grad_clip: float = default("grad_clip")
    early_stop: int = default("early_stop")
    ce_weight: float = default("ce_weight")
    freeze_knowledge: bool = default("freeze_knowledge")
    per_rank_batch: bool = default("per_rank_batch")
    precision: str = default("precision")
    cuda_graphs: str = default("cuda_graphs")
    KeyEval: Optional[str] = default("KeyEval")
    auto_pretrain: bool = default("auto_pretrain")
    knowledge_from: Optional[str] = default("knowledge_from")
    knowledge_text: str = default("knowledge_text")


@dataclass(frozen=True)
class PretrainConfig:
    """The schema's ``pretrain`` section: stage 1."""
    learning_rate: float = default("pretrain.learning_rate")
    weight_decay: float = default("pretrain.weight_decay")
    batch_size: int = default("pretrain.batch_size")
    epochs: Dict[str, int] = default("pretrain.epochs")
    early_stop: int = default("pretrain.early_stop")
    seed: int = default("pretrain.seed")


@dataclass(frozen=True)
class PlacesConfig:
    """The schema's ``run`` section: where things are and what is shown (never a result)."""
    data_root: Optional[str] = default("data_root")
    knowledge_feature_file: Optional[str] = default("knowledge_feature_file")
    knowledge_dir: Optional[str] = default("knowledge_dir")
    plots: bool = default("plots")
    progress: bool = default("progress")


SECTION_CLASSES = {"train": TrainConfig, "pretrain": PretrainConfig, "run": PlacesConfig}


@dataclass(frozen=True)
class RunConfig:
    """One KuDA run: its configuration by section, and the facts MMSA and the glue set."""
    model: KuDAConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    places: PlacesConfig = field(default_factory=PlacesConfig)
    # --- facts of this run (MMSA's run loop and kuda_mmsa.mmsa.args set them)
    model_name: str = "kuda"
    dataset_name: Optional[str] = None
    seed: Optional[int] = None
    cur_seed: int = 1                    # MMSA's 1-based index of the seed, for its log lines
    device: Any = "cpu"
    model_save_path: Optional[str] = None
    log_dir: Optional[str] = None
    metrics_name: Optional[str] = None   # MMSA's metric family (SIMS, MOSI, MOSEI)
    is_tune: bool = False                # a tuning trial: a stale resume state is replaced, not refused
    world_size: int = 1
    custom_feature: Optional[str] = None     # the feature file the user named
    feature_path: Optional[str] = None       # the feature file the run reads (MMSA's featurePath)
    data_fingerprint: Optional[Dict[str, Any]] = None
    has_unimodal_labels: bool = True
    language: Optional[str] = None
    label_range: Optional[List[float]] = None
    pretrained_arg: Optional[str] = None     # the text encoder as the user named it (for commands)
    knowledge_source: Optional[Dict[str, Any]] = None   # knowledge_from's dataset: its file, labels, language

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> "RunConfig":
        """The run from MMSA's args (a RunConfig is returned as it is)."""
        if isinstance(args, RunConfig):
            return args
        sections = {name: klass(**{f.name: setting(args, f.name if name != "pretrain" else f"pretrain.{f.name}")
                                   for f in fields(klass)})
                    for name, klass in SECTION_CLASSES.items()}
        facts = {f.name: args[f.name] for f in fields(cls)
                 if f.name not in ("model", "train", "pretrain", "places", "feature_path") and f.name in args}
        return cls(model=KuDAConfig.from_dict(args), train=sections["train"], pretrain=sections["pretrain"],
                   places=sections["run"], feature_path=args.get("featurePath"), **facts)

    def with_(self, **changes) -> "RunConfig":
        """A copy with facts or keys of any section changed (a key goes to its section)."""
        by_section: Dict[str, Dict[str, Any]] = {}
        own = {f.name for f in fields(self)}
        for key, value in changes.items():
            if key in own:
                continue
            section = next((s for s, klass in (("model", KuDAConfig), ("train", TrainConfig),
                                               ("places", PlacesConfig))
                            if key in {f.name for f in fields(klass)}), None)
            if section is None:
                raise KeyError(f"RunConfig has no field or key {key!r}")
            by_section.setdefault(section, {})[key] = value
        new = {k: v for k, v in changes.items() if k in own}
        for section, values in by_section.items():
            new[section] = replace(new.get(section, getattr(self, section)), **values)
        return replace(self, **new)

    # --- what the code below reads, said once
    @property
    def feature_file(self) -> Optional[str]:
        """The feature file the run reads (the user's, else MMSA's)."""
        return self.custom_feature or self.feature_path

    @property
    def knowledge_dataset(self) -> Optional[str]:
        """The dataset whose stage-1 knowledge the run uses."""
        return self.train.knowledge_from or self.dataset_name

    @property
    def cross_dataset(self) -> bool:
        """Knowledge from another dataset than the run's (training.transfer)."""
        source = self.train.knowledge_from
        return bool(source) and source != self.dataset_name

    def result_config(self) -> Dict[str, Any]:
        """The keys that define a result (the model and train sections), by their schema names."""
        out = {k.name: getattr(self.model, k.name) for k in SCHEMA.values() if k.section == "model"}
        out.update({f.name: getattr(self.train, f.name) for f in fields(TrainConfig)})
        return {k.name: out[k.name] for k in SCHEMA.values() if k.name in out}

    def pretrain_settings(self) -> Dict[str, Any]:
        return {f.name: copy.deepcopy(getattr(self.pretrain, f.name)) for f in fields(PretrainConfig)}


__all__ = ["RunConfig", "TrainConfig", "PretrainConfig", "PlacesConfig", "SECTION_CLASSES"]
