"""A stand-in for Dia with the same public surface and no network: every request comes back at once
with a fixed short waveform. ``model.source=null-model`` selects it; ``bench/bench_pipeline.py --null``
uses it to measure what the driver and the replicas' writing can carry on their own."""
from __future__ import annotations

import time
from typing import Any, Iterable, Iterator

import numpy as np

NULL = "null-model"
FRAMES = 8  # 8 frames = 4,096 samples = 93 ms of audio per row


class NullModel:
    """Meets ``pipeline.model.protocol.SpeechModel``."""

    sample_rate = 44100
    frame_rate = 44100 / 512
    max_frames = 3072
    info = {"source": NULL, "revision": None, "schema": "null", "layout": "none", "dtype": "none", "device": "cpu"}

    def __init__(self) -> None:
        self._wave = (0.1 * np.sin(np.arange(FRAMES * 512) * 0.05)).astype(np.float32)
        self._codes = np.zeros((FRAMES, 9), dtype=np.int64)

    def max_new_frames_limit(self, prompt_frames: int = 0) -> int:
        return self.max_frames - prompt_frames - 16

    def encode_audio(self, sources: Iterable[Any]) -> list[np.ndarray]:
        return [np.zeros((4, 9), dtype=np.int64) for _ in sources]

    def decode_audio(self, codes: Iterable[Any]) -> list[np.ndarray]:
        return [self._wave for _ in codes]

    def generate(self, texts: Any, *, seed: Any = None, max_new_frames: Any = None, decode_audio: bool = True,
                 **_: Any) -> list[Any]:
        from dia_model import GenerationResult  # deferred: dia_model loads torch

        texts = [texts] if isinstance(texts, str) else list(texts)
        return [GenerationResult(codes=self._codes, ended_by_eos=True, seed=seed, prompt_frames=0,
                                 audio=self._wave if decode_audio else None,
                                 settings={"max_new_frames": max_new_frames}) for _ in texts]

    def stream(self, requests: Iterable[Any], *, slots: int | None = None, decode_audio: bool = True,
               stats: Any = None, **_: Any) -> Iterator[Any]:
        from dia_model import GenerationResult  # deferred: dia_model loads torch

        if stats is not None:
            stats.slots = slots or 16
        for req in requests:
            if req is None:
                time.sleep(0.001)
                continue
            yield GenerationResult(codes=self._codes, ended_by_eos=True, seed=req.seed, prompt_frames=0,
                                   audio=self._wave if decode_audio else None, id=req.id,
                                   settings={"max_new_frames": req.max_new_frames})
