"""Errors that stop a job, with messages meant for the person running it."""


class PipelineError(RuntimeError):
    """The job cannot go on; the message says why and what to do."""


class InputError(PipelineError):
    """The input data cannot be used (missing files, columns, unreadable schema)."""
