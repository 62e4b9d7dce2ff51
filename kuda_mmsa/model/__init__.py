"""The KuDA network. Never imports MMSA: it runs and is tested without it."""
from .config import MODALITIES, KuDAConfig, scaled_layer_indices
from .encoders import SequenceBranch, TextBranch, build_branch, load_text_encoder, text_encoder_info
from .kuda import KuDA, build_kuda
from .losses import correlation_estimation_loss
from .ratio import RatioInputs, RatioResult, RatioRule, sentiment_ratio

__all__ = [
    "MODALITIES", "KuDAConfig", "scaled_layer_indices", "SequenceBranch", "TextBranch", "build_branch",
    "load_text_encoder", "text_encoder_info", "KuDA", "build_kuda", "correlation_estimation_loss", "RatioInputs",
    "RatioResult", "RatioRule", "sentiment_ratio",
]
