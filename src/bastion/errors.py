"""Project exceptions. Every user mistake raises a subclass of :class:`BastionError`
whose message says what was wrong and how to fix it; the CLI prints it on one line
and exits with code 2."""


class BastionError(Exception):
    """Base class for every error a user can cause and fix."""


class ConfigError(BastionError):
    """A YAML file, profile, policy or CLI option is invalid."""


class DataError(BastionError):
    """A dataset file is missing, malformed or holds invalid values."""


class ModelError(BastionError):
    """A model directory, spec or weight file cannot be used."""


class UnsafeModelError(ModelError):
    """A model file would need arbitrary code execution to load."""


class AttackError(BastionError):
    """An attack was called with invalid arguments."""


class QueryBudgetExceeded(BastionError):
    """A black-box attack asked for more queries than its budget allows."""


class TargetError(BastionError):
    """A query target (remote endpoint, ONNX session) misbehaved."""


class NotFittedError(BastionError):
    """An estimator was used before ``fit``."""

    def __init__(self, estimator: object, method: str = "fit") -> None:
        name = type(estimator).__name__
        super().__init__(f"{name} is not fitted yet: call {name}.{method}(...) first")


class StoreError(BastionError):
    """The record store or audit log cannot be opened or is inconsistent."""


class IntegrityError(BastionError):
    """A signature, hash chain or attestation does not verify."""


class AssessmentError(BastionError):
    """A model and its data cannot be assessed together (mismatch, model at chance)."""


class CheckpointError(BastionError):
    """A resume checkpoint is corrupt, truncated, refused or does not fit the run."""
