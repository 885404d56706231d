"""Exceptions for mistakes a user can fix. The command line prints their message, not a traceback."""


class DCGMMError(Exception):
    """Base class: something the user asked for cannot be done as asked; the message says what to do."""


class SpecError(DCGMMError, ValueError):
    """A model specification string or preset name is malformed or does not fit the input shape."""


class InputError(DCGMMError, ValueError):
    """Data given to a model has the wrong shape, dtype or values (NaN/inf)."""


class DataError(DCGMMError):
    """A dataset cannot be found, fetched, decoded or verified."""


class CheckpointError(DCGMMError):
    """A model or run folder is missing, incomplete or corrupt."""


class TrainingDiverged(DCGMMError):
    """Training produced a non-finite objective; training stops before the last good checkpoint is overwritten."""
