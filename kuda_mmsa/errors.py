"""Errors a user can act on. Each message is one paragraph naming the file, the key or
shape expected, and what was found."""


class KudaInputError(ValueError):
    """Bad data, configuration or checkpoint supplied by the user."""


class KudaCheckpointError(KudaInputError):
    """A stage-1 or stage-2 checkpoint is missing or does not match the model."""
