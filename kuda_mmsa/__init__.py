"""KuDA (Knowledge-Guided Dynamic Modality Attention Fusion) as an MMSA plugin."""
__version__ = "0.1.0"

from .errors import KudaCheckpointError, KudaInputError  # noqa: E402

__all__ = ["__version__", "KudaInputError", "KudaCheckpointError"]
