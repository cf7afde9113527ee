"""One exception family, so stage scripts can turn any of them into one clear message + exit 1."""


class RobustAbstainError(Exception):
    """Base class: a user-facing error with a message that names the offending value or file."""


class ParamError(RobustAbstainError, ValueError):
    """An invalid parameter (negative eps, unknown loss name, ...)."""


class DataError(RobustAbstainError):
    """A dataset that is missing or malformed."""


class CheckpointError(RobustAbstainError):
    """A file that is not a loadable checkpoint (truncated, an HTML page, wrong architecture)."""


class TrainingDivergedError(RobustAbstainError):
    """A non-finite loss during training."""
