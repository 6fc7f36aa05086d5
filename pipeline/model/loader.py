"""Loading the Dia model inside a replica, including the tiny random model for machines without Hub access."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from ..config import TINY_RANDOM, ModelConfig
from .hub_check import replica_hub_error

_DONE = ".complete"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/dia-pipeline`` (``~/.cache/dia-pipeline``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dia-pipeline"


def cache_root(cache_dir: Optional[str]) -> Path:
    """``model.cache_dir``, or the default cache folder."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def ensure_tiny_checkpoint(cache_dir: Optional[str], seed: int) -> Path:
    """Build (once per cache folder and seed) a tiny random Dia checkpoint with its tiny codec.

    Replicas on one node may race here: each builds in a private temporary folder and renames it
    into place; the loser throws its copy away.
    """
    from dia_model import make_tiny_checkpoint

    root = cache_root(cache_dir)
    folder = root / f"tiny-random-seed{seed}"
    if (folder / _DONE).is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    try:
        make_tiny_checkpoint(tmp, seed=seed)
        (tmp / _DONE).write_text("ok\n")
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / _DONE).is_file():
                shutil.rmtree(folder, ignore_errors=True)
                os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def pick_device(cfg: ModelConfig, has_gpu: bool) -> tuple[str, str]:
    """(device, dtype): the configured ones, else cuda+bfloat16 on a GPU replica and cpu+float32 otherwise."""
    device = cfg.device or ("cuda" if has_gpu else "cpu")
    dtype = cfg.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    return device, dtype


def load_model(cfg: ModelConfig, has_gpu: bool) -> Any:
    """``Dia.from_pretrained`` for the configured source; ``tiny-random`` builds a tiny checkpoint first."""
    from dia_model import CodecLoadError, Dia, HubUnavailableError

    from .null_model import NULL, NullModel

    if cfg.source == NULL:
        return NullModel()
    device, dtype = pick_device(cfg, has_gpu)
    source = str(ensure_tiny_checkpoint(cfg.cache_dir, cfg.tiny_seed)) if cfg.source == TINY_RANDOM else cfg.source
    extra = {"compile": True} if cfg.compile else {}
    try:
        return Dia.from_pretrained(source, revision=cfg.revision, device=device, dtype=dtype,
                                   codec_source=cfg.codec_source, **extra)
    except (HubUnavailableError, CodecLoadError) as e:
        # A node without Hub access (the driver's check passed, or ran elsewhere): the same advice
        # as the driver's, in overrides rather than Dia.from_pretrained calls.
        worded = replica_hub_error(cfg, e)
        if worded is None:
            raise
        raise worded from e
