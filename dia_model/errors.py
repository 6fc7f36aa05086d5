"""Exceptions with messages that tell the caller what to fix."""


class DiaError(ValueError):
    """Bad input to the model: raised before any decoding starts."""


class CheckpointError(DiaError):
    """A checkpoint that cannot be read, or whose keys/shapes do not match its config."""


class HubUnavailableError(CheckpointError):
    """The Hugging Face Hub could not be reached and nothing usable is cached."""
