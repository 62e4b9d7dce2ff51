"""The whole KuDA network and its MMSA forward contract.

forward(text, audio, vision, audio_lengths=None, vision_lengths=None, labels=None) returns a
KuDAOutput (model/outputs.py: the prediction M, the unimodal scores, the ratio, presence, the
CE loss, and what the ratio rule reports), readable as a dict as MMSA's models are.

A missing modality is one with no valid step: vision/audio length 0, or a text whose attention
mask is all zero (``present`` false). In dynamic mode it gets ratio 0 (its message is not
added), it does not enter the first fused sequence F0, and the correlation-estimation loss
skips it. ``modality_dropout`` makes modalities missing at random in training so the model
learns that case; static fusion and reference mode weigh every modality 1 as the paper does.
"""
from typing import Any, List, Mapping, Optional

import torch
from torch import nn

from ..registry import FUSIONS, RATIO_RULES
from .config import MODALITIES, KuDAConfig
from .encoders import build_branch
from .fusion import LengthAlignment
from .layers import TransformerStack, masked_mean
from .losses import correlation_estimation_loss
from .outputs import KuDAOutput
from .ratio import RatioInputs, sentiment_ratio


class OutputHead(nn.Module):
    def __init__(self, width: int, sizes):
        super().__init__()
        layers, prev = [], width
        for s in sizes:
            layers += [nn.Linear(prev, s), nn.GELU()]
            prev = s
        layers.append(nn.Linear(prev, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class KuDA(nn.Module):
    def __init__(self, config: KuDAConfig, text_encoder: Optional[nn.Module] = None):
        super().__init__()
        self.config = config
        self.branches = nn.ModuleDict(
            {m: build_branch(config, m, text_encoder if m == "T" else None) for m in MODALITIES}
        )
        text_len = config.seq_len("T")
        self.align = nn.ModuleDict({
            m: LengthAlignment(self.branches[m].out_width, config.seq_len(m), config.hidden_size, text_len)
            for m in MODALITIES
        })
        # the fusion (model/fusions.py) registers its modules here: 'blocks' (daf) or
        # 'fusion_variant' (the ablations; same encoders, alignment, head, loss and ratio)
        self.fuser = FUSIONS[config.fusion](config, len(MODALITIES))
        self.blocks, self.fusion_variant = nn.ModuleList(), None
        for name, module in self.fuser.modules().items():
            setattr(self, name, module)
        self.head = OutputHead(config.hidden_size, config.head_sizes)
        # the ratio rule of dynamic mode builds only its own heads; static fusion and reference
        # mode (whose ratio comes from the label) have none
        self.ratio_estimator = self.reliability = None
        self.ratio_rule = RATIO_RULES[config.ratio_source](config) if self.dynamic and config.use_ratio else None
        if self.ratio_rule is not None:
            for name, module in self.ratio_rule.heads([self.branches[m].out_width for m in MODALITIES]).items():
                setattr(self, name, module)
        self._register_load_state_dict_pre_hook(self._drop_unused_heads)
        self._configure_checkpointing(config.gradient_checkpointing)

    def _configure_checkpointing(self, mode: str) -> None:
        """none | sequences | all | auto (the ``gradient_checkpointing`` key): which stacks
        recompute their activations in backward instead of keeping them."""
        sequences = {"none": "never", "sequences": "always", "all": "always", "auto": "cpu"}[mode]
        for name, module in self.named_modules():
            if isinstance(module, TransformerStack):
                long = name.startswith(("branches.V.", "branches.A."))
                module.checkpointing = sequences if long else ("always" if mode == "all" else "never")
        bert = self.branches["T"].bert
        if mode == "all" and getattr(bert, "supports_gradient_checkpointing", False):
            kwargs = {"use_reentrant": False}
            if hasattr(bert, "activation_checkpointing_enable"):  # transformers >= 5 name
                bert.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                bert.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    @property
    def dynamic(self) -> bool:
        return self.config.fusion_mode == "dynamic"

    _RULE_HEADS = ("reliability.", "ratio_estimator.")

    def _drop_unused_heads(self, state_dict, prefix, *_):
        """Weights saved by versions that built every ratio head whatever the rule (reference
        mode, static fusion) still load: the heads this model does not build are skipped."""
        for key in [k for k in state_dict if k.startswith(prefix)]:
            name = key[len(prefix):]
            if name.startswith(self._RULE_HEADS) and getattr(self, name.split(".")[0]) is None:
                del state_dict[key]

    # ------------------------------------------------------------------ knowledge
    def knowledge_parameters(self, modalities=MODALITIES):
        """Adapters and decoders of the branches in ``modalities``: pre-trained in stage 1,
        frozen in stage 2."""
        for m in modalities:
            branch = self.branches[m]
            if branch.adapters is not None:
                yield from branch.adapters.parameters()
            yield from branch.decoder.parameters()

    def freeze_knowledge(self, modalities=MODALITIES) -> None:
        """Stage 2 (the trainer, through training.transfer.freeze_knowledge): the knowledge of
        ``modalities`` stops training; their encoders and everything else keep training."""
        for p in self.knowledge_parameters(modalities):
            p.requires_grad_(False)

    # ------------------------------------------------------------------ captured steps
    def check_inputs(self, text: torch.Tensor, **_) -> None:
        """The input checks forward makes on the host (token and segment ids), for a step
        replayed from a CUDA graph, which cannot make them: given the CPU batch, they cost the
        GPU nothing."""
        self.branches["T"].check_text(text)

    def capture_blockers(self) -> List[str]:
        """Why a training step of this model cannot be captured in a CUDA graph (none: it can)."""
        why = []
        if self.config.modality_dropout > 0:
            why.append("modality_dropout > 0 decides on the host which modalities to drop")
        if self.config.gradient_checkpointing in ("sequences", "all"):
            why.append(f"gradient_checkpointing: {self.config.gradient_checkpointing} saves and restores the "
                       "random state on the host to recompute dropout")
        return why

    # ------------------------------------------------------------------ ratio
    def _ratio(self, x: RatioInputs):
        """(weight for the attention op [B, M], the ratio for the authors' combine or None,
        ratio to report, the rule's result or None)."""
        scores, labels, present = x.scores, x.labels, x.present
        b, m = scores.shape
        ones = scores.new_ones(b, m)
        uniform = ones / m
        cfg = self.config
        # the authors' training-time combine, sum_m LN_m((1 + R_m) y_m), needs the ratio
        combine = cfg.authors_combine and self.dynamic and self.training
        if not cfg.use_ratio:
            return ones, (uniform if combine else None), uniform, None
        if not self.dynamic:
            # Authors: ratio from the label in training; no ratio at all in evaluation.
            if self.training and labels is not None:
                r = sentiment_ratio(x.detached, labels.reshape(-1, 1).to(x.detached.dtype), cfg.ratio_k)
                return ones, r, r, None
            return ones, None, uniform, None
        result = self.ratio_rule(self, x)
        r = result.ratio
        # The present modalities share the weight they would have with all present: a missing
        # modality's absence must not amplify the others' messages.
        n_present = present.sum(-1, keepdim=True).clamp(min=1).to(r.dtype)
        return n_present * r, (r if combine else None), r, result

    # ------------------------------------------------------------------ missing modalities
    @staticmethod
    def presence(text: torch.Tensor, audio_lengths: Optional[torch.Tensor],
                 vision_lengths: Optional[torch.Tensor]) -> torch.Tensor:
        """[B, 3] bool (T, V, A): the modality has at least one valid step."""
        b = text.shape[0]
        t = text[:, 1].sum(dim=1) > 0
        v = vision_lengths.to(t.device) > 0 if vision_lengths is not None else torch.ones(b, dtype=torch.bool,
                                                                                          device=t.device)
        a = audio_lengths.to(t.device) > 0 if audio_lengths is not None else torch.ones(b, dtype=torch.bool,
                                                                                        device=t.device)
        return torch.stack([t, v, a], dim=-1)

    def _drop_modalities(self, text, audio, vision, audio_lengths, vision_lengths, present):
        """modality_dropout: each present modality of a training sample goes missing with
        probability p, never all of a sample's modalities."""
        p = self.config.modality_dropout
        drop = (torch.rand(present.shape, device=present.device) < p) & present
        keep_one = present.any(dim=-1) & ~(present & ~drop).any(dim=-1)
        if keep_one.any():   # restore one modality at random where all present ones would go
            pick = torch.multinomial(present[keep_one].float(), 1).squeeze(-1)
            drop[keep_one] = drop[keep_one].scatter(-1, pick[:, None], False)
        if not drop.any():
            return text, audio, vision, audio_lengths, vision_lengths, present
        b = text.shape[0]
        if audio_lengths is None:
            audio_lengths = torch.full((b,), audio.shape[1], device=audio.device)
        if vision_lengths is None:
            vision_lengths = torch.full((b,), vision.shape[1], device=vision.device)
        d_t, d_v, d_a = (drop[:, i] for i in range(3))
        text = text.masked_fill(d_t[:, None, None], 0)
        vision = vision.masked_fill(d_v[:, None, None], 0)
        audio = audio.masked_fill(d_a[:, None, None], 0)
        vision_lengths = vision_lengths.masked_fill(d_v.to(vision_lengths.device), 0)
        audio_lengths = audio_lengths.masked_fill(d_a.to(audio_lengths.device), 0)
        return text, audio, vision, audio_lengths, vision_lengths, present & ~drop

    def _predict(self, sources, weight, text_pad, reference_ratio, present=None):
        """(prediction [B, 1], pooled fused representation [B, D]) by the configured fusion."""
        return self.fuser(self, sources, weight, text_pad, reference_ratio, present)

    # ------------------------------------------------------------------ forward
    def forward(self, text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor,
                audio_lengths: Optional[torch.Tensor] = None, vision_lengths: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None) -> KuDAOutput:
        cfg = self.config
        masked = not cfg.authors("padding")
        present = self.presence(text, audio_lengths, vision_lengths)
        if self.training and cfg.modality_dropout > 0:
            text, audio, vision, audio_lengths, vision_lengths, present = self._drop_modalities(
                text, audio, vision, audio_lengths, vision_lengths, present)
        # a missing modality's content is ignored: it has no valid step, yet its encoder keeps
        # one position so that attention always has a key
        vision = vision.masked_fill(~present[:, 1, None, None].to(vision.device), 0)
        audio = audio.masked_fill(~present[:, 2, None, None].to(audio.device), 0)
        inputs = {"T": (text,), "V": (vision, vision_lengths), "A": (audio, audio_lengths)}
        units, scores, pads = {}, {}, {}
        for m in MODALITIES:
            units[m], scores[m], pads[m] = self.branches[m](*inputs[m], masked=masked)

        text_pad = pads["T"] if masked else None
        sources = [self.align[m](units[m], pads[m] if masked else None) for m in MODALITIES]
        present_or_none = present if masked else None

        unimodal = torch.cat([scores[m] for m in MODALITIES], dim=-1)
        ratio_inputs = RatioInputs(
            scores=unimodal, present=present, labels=labels, training=self.training,
            pooled=lambda: [masked_mean(units[m], pads[m] if masked else None) for m in MODALITIES],
            # every present modality weighted 1 and a missing one 0 (as in the main pass: a
            # missing modality must not steer the others' ratios through this target)
            static_prediction=lambda: self._predict(sources, present.to(unimodal.dtype), text_pad, None,
                                                    present_or_none)[0])
        weight, reference_ratio, ratio, rule = self._ratio(ratio_inputs)
        prediction, fused = self._predict(sources, weight, text_pad, reference_ratio, present_or_none)
        ce = correlation_estimation_loss([masked_mean(h, text_pad) for h in sources], fused, present_or_none)
        out = KuDAOutput(M=prediction, T=scores["T"], V=scores["V"], A=scores["A"], ratio=ratio,
                         present=present, ce=ce)
        if rule is not None:
            out.with_report(rule.report)
            out.aux = rule.aux
        return out


def build_kuda(args: Mapping[str, Any], text_encoder: Optional[nn.Module] = None) -> KuDA:
    """KuDA from an MMSA args dict (dataset facts + configs/kuda.yaml)."""
    return KuDA(KuDAConfig.from_dict(args), text_encoder=text_encoder)
