"""Unimodal branches (KuDA paper, method section: unimodal encoders and knowledge injection):
an encoder, its knowledge adapters and a decoder that predicts the modality's own sentiment
score. Stage 1 trains one branch alone; stage 2 loads all three and freezes adapters and
decoder.

In reference mode (or with ``authors_dropout``) the encoders train as the authors' do: dropout
on the attention probabilities of the vision/audio encoders and the adapters (torch's
TransformerEncoderLayer); reference mode also starts the position embeddings at zero. Without adapters (``use_adapters: false``) a
branch's output is its encoder's last state only.

Text encoders: any Hugging Face encoder whose model returns every hidden state; tested with the
families BERT, RoBERTa, XLM-R, DeBERTa-v2/v3 and ELECTRA (ENCODER_FAMILIES). Per model type:
padded positions (attention mask 0) get the encoder's own pad id (RoBERTa/XLM-R count positions
from it), segment ids are passed only to encoders with two or more token types (RoBERTa/XLM-R
have one, DeBERTa-v3 none: zeros), and the adapter taps scale with the encoder's depth. That
the token ids come from the encoder's own tokenizer is checked with the data
(kuda_mmsa.data.tokenization)."""
import inspect
import os
from typing import Any, Optional, Tuple

import torch
from torch import nn

from ..errors import KudaInputError
from .adapters import AdapterChain, UnimodalDecoder
from .config import KuDAConfig, scaled_layer_indices
from .layers import TransformerStack, capturing, padding_mask, use_mask_dropout

ENCODER_FAMILIES = ("bert", "roberta", "xlm-roberta", "deberta-v2", "electra")


def load_text_encoder(pretrained: Any) -> nn.Module:
    """A BERT-like encoder from a local folder, a hub name already in the local cache, a
    transformers config (random weights), or a ready module."""
    from transformers import AutoModel, PretrainedConfig

    if isinstance(pretrained, nn.Module):
        return pretrained
    if isinstance(pretrained, PretrainedConfig):
        return AutoModel.from_config(pretrained)
    from transformers.utils import logging as hf_logging

    local = os.path.isdir(str(pretrained))
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()     # one bar per weight file would clutter MMSA's log
    try:
        return AutoModel.from_pretrained(str(pretrained), local_files_only=local or None)
    except Exception as exc:  # transformers raises many types for "not found"
        raise KudaInputError(
            f"Could not load the text encoder {str(pretrained)!r} (config key 'pretrained' or "
            f"--pretrained): {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "Expected a local folder holding a Hugging Face text encoder (config.json + weights; "
            "BERT, RoBERTa, XLM-R, DeBERTa-v2/v3 or ELECTRA) or a hub name present "
            "in the local Hugging Face cache; this machine may have no hub access. Download the "
            "model once (e.g. `huggingface-cli download bert-base-chinese --local-dir DIR`) and "
            "pass --pretrained DIR."
        ) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def local_encoder_config(pretrained: Any):
    """A text encoder's transformers config from local files only (a config object or a
    module gives its own), or None when it cannot be found offline."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(pretrained, nn.Module):
        return pretrained.config
    if isinstance(pretrained, PretrainedConfig):
        return pretrained
    if not pretrained:
        return None
    try:
        return AutoConfig.from_pretrained(str(pretrained), local_files_only=True)
    except Exception:  # not resolvable offline: checked again when the model is built
        return None


def text_encoder_info(pretrained: Any) -> dict:
    """What identifies a text encoder for the knowledge trained on it: its name and its
    vocabulary and sizes (read offline from its config; name only when none is found)."""
    cfg = local_encoder_config(pretrained)
    if cfg is None:   # the name is all we know
        return {"name": os.path.basename(str(pretrained).rstrip("/\\"))}
    return {"name": os.path.basename(str(getattr(cfg, "name_or_path", "") or pretrained).rstrip("/\\")),
            "model_type": getattr(cfg, "model_type", ""), "vocab_size": int(cfg.vocab_size),
            "hidden_size": int(cfg.hidden_size), "layers": int(cfg.num_hidden_layers)}


class TextBranch(nn.Module):
    """BERT on pre-tokenised text [B, 3, L] (ids, attention mask, segment ids)."""

    modality = "T"

    def __init__(self, config: KuDAConfig, text_encoder: Optional[nn.Module] = None):
        super().__init__()
        self.bert = use_mask_dropout(load_text_encoder(text_encoder if text_encoder is not None else config.pretrained))
        bert_cfg = self.bert.config
        if getattr(bert_cfg, "is_encoder_decoder", False) or not hasattr(bert_cfg, "num_hidden_layers"):
            raise KudaInputError(
                f"The text encoder {getattr(bert_cfg, 'name_or_path', '')!r} (model type "
                f"{getattr(bert_cfg, 'model_type', '?')!r}) is not an encoder with hidden states per layer; "
                f"use an encoder such as {', '.join(ENCODER_FAMILIES)}.")
        self.width = bert_cfg.hidden_size
        self.vocab_size = bert_cfg.vocab_size
        self.pad_id = getattr(bert_cfg, "pad_token_id", None)
        self.type_vocab_size = int(getattr(bert_cfg, "type_vocab_size", 0) or 0)
        self.takes_token_types = "token_type_ids" in inspect.signature(self.bert.forward).parameters
        depth = bert_cfg.num_hidden_layers
        self.taps = scaled_layer_indices(list(config.text_adapter_layers), depth)
        self.norm = nn.LayerNorm(self.width)
        authors = config.authors("dropout")
        self.adapters = AdapterChain(
            self.width, len(self.taps), config.adapter_layers, config.adapter_heads,
            config.adapter_dropout, self.norm, attn_dropout=config.adapter_dropout if authors else 0.0,
        ) if config.use_adapters else None
        self.out_width = (2 if config.use_adapters else 1) * self.width
        self.decoder = UnimodalDecoder(self.out_width, config.decoder_dropout, self.width)

    def check_ids(self, ids: torch.Tensor) -> None:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.vocab_size:
            raise KudaInputError(
                f"Token ids in 'text_bert' range over [{lo}, {hi}] but the text encoder "
                f"{self.bert.config.name_or_path!r} ({self.bert.config.model_type}) has a vocabulary of "
                f"{self.vocab_size} tokens (expected ids in [0, vocab_size)). The feature file was "
                "tokenised with another vocabulary (e.g. Chinese ids on an English BERT): set 'pretrained' "
                "to the encoder the features were made with (bert-base-chinese for SIMS sets, "
                "bert-base-uncased for MOSI/MOSEI), or rebuild the ids from the raw text with "
                "`python -m kuda_mmsa retokenize`."
            )

    def encoder_inputs(self, text: torch.Tensor) -> dict:
        """The encoder's keyword inputs for text [B, 3, L] (ids, attention mask, segment ids),
        per model type: padding gets the encoder's pad id, segment ids go only to encoders
        with two or more token types (checked against their number), zeros otherwise."""
        ids = text[:, 0].long()
        attn = text[:, 1].long()
        seg = text[:, 2].long()
        if not capturing():     # a captured step checks its batch on the host (check_text)
            self.check_text(text)
        if self.pad_id is not None:
            ids = ids.masked_fill(attn == 0, int(self.pad_id))
        out = {"input_ids": ids, "attention_mask": attn}
        if self.takes_token_types:
            if self.type_vocab_size >= 2:
                out["token_type_ids"] = seg
            elif self.type_vocab_size == 1:
                out["token_type_ids"] = torch.zeros_like(seg)
        return out

    def check_text(self, text: torch.Tensor) -> None:
        """Refuse token or segment ids this encoder does not have (KudaInputError). Reads the
        values on the host: given a CPU batch, it costs the GPU nothing."""
        self.check_ids(text[:, 0].long())
        if self.takes_token_types and self.type_vocab_size >= 2:
            seg = text[:, 2].long()
            lo, hi = int(seg.min()), int(seg.max())
            if lo < 0 or hi >= self.type_vocab_size:
                raise KudaInputError(
                    f"Segment ids in 'text_bert' (its third row) range over [{lo}, {hi}] but the text "
                    f"encoder {self.bert.config.name_or_path!r} has {self.type_vocab_size} token types. "
                    "The feature file was made for another encoder: rebuild the ids with "
                    "`python -m kuda_mmsa retokenize`.")

    def forward(self, text: torch.Tensor, masked: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs = self.encoder_inputs(text)
        attn = inputs["attention_mask"]
        out = self.bert(**inputs, output_hidden_states=True)
        hs = out.hidden_states
        pad = attn == 0
        pad = pad & ~pad.all(dim=1, keepdim=True)  # an empty text keeps its positions valid
        if self.adapters is not None:
            domain = self.adapters(hs[0], [hs[i] for i in self.taps], pad)
            u = torch.cat([hs[-1], domain], dim=-1)
        else:
            u = hs[-1]
        score = self.decoder(u, pad if masked else None)
        return u, score, pad


class SequenceBranch(nn.Module):
    """Vision or audio: Linear + learned positions -> Transformer (all states kept) ->
    3 adapters on states 1..3 -> decoder."""

    def __init__(self, config: KuDAConfig, modality: str):
        super().__init__()
        self.modality = modality
        d = config.av_hidden_size
        self.width = d
        self.max_len = config.seq_len(modality)
        self.in_dim = config.feature_dim(modality)
        authors = config.authors("dropout")
        self.proj = nn.Linear(self.in_dim, d)
        self.pos = nn.Parameter(torch.zeros(1, self.max_len, d))
        if config.fusion_mode != "reference":  # the authors start from zeros
            nn.init.normal_(self.pos, std=0.02)
        self.encoder = TransformerStack(config.av_layers, d, config.av_heads, config.av_ff_size, config.av_dropout,
                                        attn_dropout=config.av_dropout if authors else 0.0)
        self.norm = nn.LayerNorm(d)
        self.adapters = AdapterChain(
            d, config.av_layers - 1, config.adapter_layers, config.adapter_heads, config.adapter_dropout, self.norm,
            attn_dropout=config.adapter_dropout if authors else 0.0,
        ) if config.use_adapters else None
        self.out_width = (2 if config.use_adapters else 1) * d
        self.decoder = UnimodalDecoder(self.out_width, config.decoder_dropout, d)
        self.trim_padding = True
        self.zero_padding = config.zeroes_padding()

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor], masked: bool = True):
        b, l, f = x.shape
        if f != self.in_dim or l > self.max_len:
            raise KudaInputError(
                f"{'vision' if self.modality == 'V' else 'audio'} features have shape {tuple(x.shape)}; "
                f"the model was built for [batch, <= {self.max_len}, {self.in_dim}] (config keys "
                "'seq_lens' / 'feature_dims', read from the training data). Use features of the "
                "same extractor and padding as the data the model (or its stage-1 checkpoint) was built on."
            )
        pad = None
        if lengths is not None:
            lengths = lengths.to(x.device)
            if masked and self.trim_padding and not capturing():
                # Steps past the longest sample of the batch are padding for every sample and,
                # masked everywhere, change nothing: skip them (long audio, short clips). A
                # captured step keeps the padded length: its shapes must not depend on data.
                keep = int(lengths.max().clamp(min=1, max=l))
                x, l = x[:, :keep], keep
            pad = padding_mask(lengths, l)
            if self.zero_padding:
                # padded frames enter the unmasked means; zeroed, only their number does
                x = x.masked_fill(pad[..., None], 0)
        states = self.encoder(self.proj(x) + self.pos[:, :l], pad, return_all=True)
        specific = self.norm(states[-1])
        if self.adapters is not None:
            u = torch.cat([specific, self.adapters(states[0], states[1:-1], pad)], dim=-1)
        else:
            u = specific
        score = self.decoder(u, pad if masked else None)
        return u, score, pad


def build_branch(config: KuDAConfig, modality: str, text_encoder: Optional[nn.Module] = None) -> nn.Module:
    if modality == "T":
        return TextBranch(config, text_encoder)
    return SequenceBranch(config, modality)
