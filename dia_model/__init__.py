"""dia_model: a checkpoint-compatible Dia inference engine with per-row batched generation.

Knows nothing of Ray or Hydra; the pipeline uses only what is exported here.
"""

from .api import Dia, GenerationResult, Request
from .audio import AudioError
from .config import DiaConfig
from .errors import CheckpointError, DiaError, HubUnavailableError
from .longform import ChunkInfo
from .streaming import StreamStats
from .text import validate_script

__all__ = [
    "Dia", "GenerationResult", "Request", "StreamStats", "ChunkInfo", "AudioError", "DiaConfig", "DiaError", "CheckpointError", "HubUnavailableError",
    "validate_script", "make_tiny_checkpoint",
]


def make_tiny_checkpoint(*args, **kwargs):  # imported lazily: it pulls in the codec
    from .tiny import make_tiny_checkpoint as make

    return make(*args, **kwargs)


make_tiny_checkpoint.__doc__ = "Write a tiny random Dia checkpoint folder; see dia_model.tiny.make_tiny_checkpoint."
