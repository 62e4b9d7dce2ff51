"""KuDA (Knowledge-Guided Dynamic Modality Attention Fusion) as an MMSA plugin."""
__version__ = "0.3.0"

from .errors import (KudaCheckpointError, KudaError, KudaInputError,  # noqa: E402
                     KudaStaleStateError, KudaTrainingError)

__all__ = ["__version__", "KudaError", "KudaInputError", "KudaCheckpointError",
           "KudaStaleStateError", "KudaTrainingError"]
