"""dia_model: a checkpoint-compatible Dia inference engine with per-row batched generation.

Knows nothing of Ray or Hydra. The pipeline uses only what is exported here (``__all__``); the
sub-packages (``nn``, ``audio``, ``engine``) are this package's own business. Layers, bottom up:

    errors, limits, hub, config, text, types   leaves (the first three import nothing of the package)
    nn/        the network: model, key layouts, checkpoint loading, devices, CPU kernel
    audio/     the DAC codec and audio files
    engine/    sampling, the decode step, static batches, the slot engine, admission, long form, the loop
    api        Dia, the facade
    tiny       random checkpoints for tests and benchmarks
"""

from .api import Dia
from .config import DiaConfig
from .engine.longform import expected_seconds, split_script
from .errors import AudioError, CheckpointError, CodecLoadError, DiaError, HubUnavailableError, ScriptProblem
from .hub import (CHECKPOINT_CONFIG_FILE, CHECKPOINT_WEIGHT_FILES, CODEC_CONFIG_FILE, CODEC_REPO, CODEC_WEIGHTS_FILE,
                  default_local_dir, download_command, looks_like_repo_id)
from .limits import END_TAG_BYTES, FRAME_RATE, MAX_TAIL_S, SCRIPT_MAX_BYTES, WINDOW_FRAMES, WINDOW_S
from .text import encode_script, validate_script
from .types import ChunkInfo, GenerationResult, Request, StreamStats

__all__ = [
    # the model, its inputs and outputs
    "Dia", "DiaConfig", "Request", "GenerationResult", "StreamStats", "ChunkInfo",
    # errors (catchable without loading anything)
    "DiaError", "CheckpointError", "HubUnavailableError", "AudioError", "CodecLoadError", "ScriptProblem",
    # script checks and the published limits (for a driver that loads no model)
    "validate_script", "encode_script", "expected_seconds", "split_script",
    "SCRIPT_MAX_BYTES", "WINDOW_FRAMES", "WINDOW_S", "FRAME_RATE", "MAX_TAIL_S", "END_TAG_BYTES",
    # where the files live on the Hub, and the download advice
    "CHECKPOINT_CONFIG_FILE", "CHECKPOINT_WEIGHT_FILES", "CODEC_REPO", "CODEC_CONFIG_FILE", "CODEC_WEIGHTS_FILE",
    "looks_like_repo_id", "download_command", "default_local_dir",
    # tests and benchmarks
    "make_tiny_checkpoint",
]


def make_tiny_checkpoint(*args, **kwargs):  # imported lazily: it pulls in the codec
    from .tiny import make_tiny_checkpoint as make

    return make(*args, **kwargs)


make_tiny_checkpoint.__doc__ = "Write a tiny random Dia checkpoint folder; see dia_model.tiny.make_tiny_checkpoint."
