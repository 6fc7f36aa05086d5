"""Resumable, fault-tolerant bulk synthesis with Dia on Ray, configured with Hydra.

Python use::

    from pipeline import run_job
    summary = run_job(cfg)   # a Hydra config composed from configs/, or a JobConfig
"""
from .config import JobConfig
from .errors import InputError, PipelineError

__all__ = ["JobConfig", "InputError", "PipelineError", "run_job"]


def run_job(cfg, **kwargs):  # imported lazily: keeps `import pipeline` light (no Ray, no torch)
    """Run or resume one job and return its summary; see :func:`pipeline.driver.job.run_job`."""
    from .driver.job import run_job as _run_job

    return _run_job(cfg, **kwargs)
