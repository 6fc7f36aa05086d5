"""Command line: ``python -m pipeline [overrides]`` or ``dia-pipeline [overrides]`` (Hydra).

Exit status: 0 when the job finished with at least one good row, 2 when it could not start or
stopped (bad settings or input, the message says what to fix), 3 when it finished but no row
succeeded.
"""
from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .errors import PipelineError

_HERE = Path(__file__).resolve().parent


def config_dir() -> str:
    """The packaged configs (pipeline/conf, in a wheel) or the checkout's top-level configs/ folder."""
    for candidate in (_HERE / "conf", _HERE.parent / "configs"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise SystemExit("cannot find the pipeline's Hydra configs (pipeline/conf or configs/)")


def _sweep_job_dir(cfg: DictConfig) -> None:
    """Under -m, each point's job directory is Hydra's (<sweep.dir>/<subdir>) unless output.dir is given."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN and not any(o.startswith("output.dir=") for o in hydra_cfg.overrides.task):
        cfg.output.dir = hydra_cfg.runtime.output_dir


def remove_failed_start(job_dir: Path) -> None:
    """After a start that failed before the job began, take away what Hydra made (the folder, its
    ``.hydra/`` and ``pipeline.log``), so a typo leaves no half-made job folder behind. A folder that
    holds a job (job.json, audio, metadata) or anything else is left alone."""
    if not job_dir.is_dir() or any((job_dir / name).exists() for name in ("job.json", "audio", "metadata")):
        return
    shutil.rmtree(job_dir / ".hydra", ignore_errors=True)
    (job_dir / "pipeline.log").unlink(missing_ok=True)
    try:
        job_dir.rmdir()  # only when nothing else is in it
    except OSError:
        pass


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _main(cfg: DictConfig) -> None:
    from .driver.job import exit_code, run_job  # deferred: Hydra answers --help before Ray and pyarrow load

    _sweep_job_dir(cfg)
    try:
        summary = run_job(cfg)
    except PipelineError as e:
        logging.getLogger("pipeline").error("%s", e)
        remove_failed_start(Path(HydraConfig.get().runtime.output_dir))
        sys.exit(2)
    code = exit_code(summary)
    if code:
        logging.getLogger("pipeline").error("no row of this job succeeded (exit status %d)", code)
        sys.exit(code)


def main() -> None:
    """Console-script entry point."""
    _main()


if __name__ == "__main__":
    main()
