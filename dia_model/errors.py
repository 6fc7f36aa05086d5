"""Exceptions with messages that tell the caller what to fix, and the typed script problem.

A leaf: imports nothing of the package, so every layer (and the pipeline) can catch these without
loading the model, the codec or transformers.
"""


class DiaError(ValueError):
    """Bad input to the model: raised before any decoding starts."""


class CheckpointError(DiaError):
    """A checkpoint that cannot be read, or whose keys/shapes do not match its config."""


class HubUnavailableError(CheckpointError):
    """The Hugging Face Hub could not be reached and nothing usable is cached."""


class AudioError(ValueError):
    """An audio file is missing, unreadable, empty or holds unusable samples."""


class CodecLoadError(RuntimeError):
    """The codec weights could not be found, downloaded or understood."""


class ScriptProblem(str):
    """One problem ``validate_script`` found: reads (and compares) as its message; ``kind`` says which
    check failed, so a caller can react to a kind without matching the wording."""

    NOT_A_STRING = "not_a_string"
    EMPTY = "empty"
    CONTROL_CHARACTER = "control_character"
    UNKNOWN_TAG = "unknown_tag"
    TOO_LONG = "too_long"  # over the byte limit (the one a long-form script may get around)

    kind: str

    def __new__(cls, message: str, kind: str) -> "ScriptProblem":
        self = super().__new__(cls, message)
        self.kind = kind
        return self

    def __reduce__(self):  # pickles (Ray) as itself, kind included
        return (ScriptProblem, (str(self), self.kind))


__all__ = ["DiaError", "CheckpointError", "HubUnavailableError", "AudioError", "CodecLoadError", "ScriptProblem"]
