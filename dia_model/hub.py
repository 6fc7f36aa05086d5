"""Where the model and codec files live on the Hugging Face Hub, and the download advice every
message names. A leaf: plain strings and functions (no torch, no huggingface_hub), so a driver
that loads no model can check the local cache and word its advice with the same names.
"""

from __future__ import annotations

import re

CHECKPOINT_CONFIG_FILE = "config.json"
# In order of preference: safetensors first (no pickle, streamed), then the pickles.
CHECKPOINT_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "dia-v0_1.pth")
CODEC_REPO = "descript/dac_44khz"  # the 44.1 kHz Descript Audio Codec Dia's codes are for
CODEC_CONFIG_FILE = "config.json"
CODEC_WEIGHTS_FILE = "model.safetensors"

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def looks_like_repo_id(source: str) -> bool:
    """Whether ``source`` (not an existing path) would be fetched from the Hub as ``org/name``."""
    return bool(_REPO_ID.fullmatch(source)) and not source.startswith((".", "/"))


def download_command(repo: str, revision: str | None = None, files: tuple[str, ...] = (),
                     local_dir: str | None = None) -> str:
    """The ``hf download`` command (huggingface_hub's CLI) that puts ``repo`` (or only ``files``
    of it) in a folder; the one download tool every message of this package names."""
    parts = ["hf", "download", repo, *files]
    if revision:
        parts += ["--revision", revision]
    parts += ["--local-dir", local_dir or default_local_dir(repo)]
    return " ".join(parts)


def default_local_dir(repo: str) -> str:
    """``./<name>`` for ``org/name``: where the download advice puts a repo."""
    return "./" + repo.rstrip("/").split("/")[-1]


__all__ = ["CHECKPOINT_CONFIG_FILE", "CHECKPOINT_WEIGHT_FILES", "CODEC_REPO", "CODEC_CONFIG_FILE",
           "CODEC_WEIGHTS_FILE", "looks_like_repo_id", "download_command", "default_local_dir"]
