"""What goes into the model and what comes out: requests, results, and the figures of a stream.

A leaf: plain dataclasses, importing nothing of the package (numpy only), so the pipeline and
every engine module share one definition of each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ChunkInfo:
    """One chunk of a long-form result: its text, where its frames sit in the result, and its prompt."""

    text: str
    frames: int  # new frames this chunk made (its share of the result's codes)
    start_frame: int  # where they begin in the result's codes
    prompt_frames: int  # frames of audio prompt it was given (chunk 0: the request's own prompt)
    prompt_text: str | None  # the prompt's transcript
    seed: int | None
    ended_by_eos: bool


@dataclass
class GenerationResult:
    codes: np.ndarray  # int64 [frames, channels]: delay reverted, prompt excluded; what the codec decodes
    ended_by_eos: bool  # False: the row ran into its length limit
    seed: int | None  # the seed actually used (drawn at random when none was given)
    prompt_frames: int
    settings: dict[str, Any] = field(default_factory=dict)
    audio: np.ndarray | None = None  # float32 mono waveform, when decoded
    sample_rate: int = 44100
    frame_rate: float = 44100 / 512
    id: Any = None  # stream(): the request's id
    error: str | None = None  # stream(): why this request was not generated (codes are then empty)
    chunks: list[ChunkInfo] | None = None  # long form: one per chunk (text, frames, prompt)
    end_tag_applied: bool = False  # end_tag=True: whether the script got the second-to-last speaker's tag

    @property
    def frames(self) -> int:
        return int(self.codes.shape[0])

    @property
    def duration_s(self) -> float:
        return self.frames / self.frame_rate


@dataclass
class Request:
    """One request for :meth:`Dia.stream`; the settings mean what they mean in :meth:`Dia.generate`."""

    id: Any
    text: str
    cfg_scale: float = 3.0
    temperature: float = 1.2
    top_p: float = 0.95
    top_k: int = 45
    max_new_frames: int | None = None
    seed: int | None = None
    audio_prompt: Any = None  # codes [frames, 9], an audio file path, or a file's bytes
    prompt_transcript: str | None = None
    long_form: bool = False  # split a long script into chunks that carry the voices over (engine.longform)
    chunk_seconds: float = 20.0  # long form: expected speech per chunk at most
    tail_seconds: float = 6.0  # long form: how much of a chunk's end prompts the next (0: none)
    end_tag: bool = False  # append the second-to-last speaker's tag (the seed's cut-off remedy)


@dataclass
class StreamStats:
    """What one :meth:`Dia.stream` call did, filled in as it runs (pass one in to read it).

    ``occupancy`` = busy_slot_steps / slot_steps: the share of computed slot-steps that held a
    request (a finish is seen one step late, so a full engine stays just under 1)."""

    slots: int = 0
    lookahead: int = 0  # checked requests held ready beyond the free slots (the longest is seated first)
    steps: int = 0
    slot_steps: int = 0
    busy_slot_steps: int = 0
    admissions: int = 0  # admit() calls (each prefills several requests together)
    compactions: int = 0
    graphs_captured: int = 0  # CUDA graphs of the decode step
    graph_replays: int = 0
    graph_fallback: str | None = None  # why the eager step took over, if it did
    codec_s: float = 0.0  # wall time the codec thread spent decoding
    codec_rows: int = 0

    @property
    def occupancy(self) -> float:
        return self.busy_slot_steps / self.slot_steps if self.slot_steps else 0.0


__all__ = ["ChunkInfo", "GenerationResult", "Request", "StreamStats"]
