"""Errors a user can act on. Each message is one paragraph naming the file, the key or
shape expected, and what was found. The command line prints it without a traceback and
exits with ``exit_code``."""


class KudaError(Exception):
    exit_code = 2


class KudaInputError(KudaError, ValueError):
    """Bad data, configuration or checkpoint supplied by the user."""


class KudaCheckpointError(KudaInputError):
    """A stage-1 or stage-2 checkpoint is missing or does not match the model."""


class KudaStaleStateError(KudaInputError):
    """A saved state (resume file, stage-1 checkpoint) was made by another config, other data
    or other knowledge than the run that would use it."""


class KudaTrainingError(KudaError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); what was saved is kept."""
    exit_code = 3
