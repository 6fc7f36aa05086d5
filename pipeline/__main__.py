"""Command line: ``python -m pipeline [overrides]`` or ``dia-pipeline [overrides]`` (Hydra)."""
from __future__ import annotations

import logging
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


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _main(cfg: DictConfig) -> None:
    from .job import run_job

    _sweep_job_dir(cfg)
    try:
        run_job(cfg)
    except PipelineError as e:
        logging.getLogger("pipeline").error("%s", e)
        sys.exit(2)


def main() -> None:
    """Console-script entry point."""
    _main()


if __name__ == "__main__":
    main()
