"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""


class EnsembleLabError(Exception):
    """A mistake the user can fix; the message says what was wrong and what to do."""


class ConfigError(EnsembleLabError, ValueError):
    """An option has a value outside what it allows."""


class DatasetError(EnsembleLabError, FileNotFoundError):
    """A dataset file is missing, damaged or has the wrong layout."""


class CheckpointMismatchError(EnsembleLabError):
    """A checkpoint does not match the model it is loaded into."""


class CheckpointFileError(CheckpointMismatchError):
    """A checkpoint path that cannot be used at all: missing, a directory, empty, truncated or not a checkpoint."""


class NonFiniteLossError(EnsembleLabError, ArithmeticError):
    """Training produced a NaN or infinite loss; it was stopped and the last good checkpoint kept."""


class NonFiniteOutputError(EnsembleLabError, ValueError):
    """The model produced NaN or infinite probabilities (or scores), so no metric of them means anything."""
