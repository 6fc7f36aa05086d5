"""A replica: one Ray actor holding one model, generating units of rows.

Inside a replica, a unit's rows are grouped into batches of similar expected length. The model
generates codes for one batch while a codec thread decodes and encodes the previous one, so codec
work overlaps with generation. Finished batches stream back to the driver as they complete.
Before a batch starts, its rows are written to the driver's row ledger (and the write is waited
for), so that if this process dies, exactly the rows it was working on are charged for it.
Nothing is written to disk here: prompt audio arrives as bytes and is decoded in memory.
"""
from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from . import audio as audio_io
from .batching import plan_batches
from .config import TINY_RANDOM, ModelConfig
from .rows import RowSpec

FRAMES_PER_TEXT_BYTE = 6.0  # ~86 frames/s of audio for ~14 bytes/s of speech: a length estimate only


@dataclass
class ReplicaSettings:
    """What a replica needs besides its rows."""

    name: str
    model: ModelConfig
    has_gpu: bool
    torch_threads: Optional[int]
    audio_format: str
    audio_subtype: Optional[str]
    batch_size: int
    frame_budget: Optional[int]


@dataclass
class RowResult:
    """The outcome of one row."""

    key: str
    ok: bool
    error: Optional[str] = None
    audio: Optional[bytes] = None  # a complete audio file in the job's format
    sample_rate: Optional[int] = None
    duration_s: Optional[float] = None
    frames: Optional[int] = None
    ended_by_eos: Optional[bool] = None
    seed: Optional[int] = None
    max_new_frames: Optional[int] = None
    prompt_frames: Optional[int] = None


@dataclass
class BatchResult:
    """One batch's rows plus where and how long it ran."""

    rows: list[RowResult]
    replica: dict[str, Any]  # name, node, host, pid, device
    generation_s: float = 0.0
    decode_s: float = 0.0


@dataclass
class _Prepared:
    row: RowSpec
    max_new_frames: Optional[int]
    prompt: Any  # None, a local audio path, or codes
    prompt_frames: int
    expected_frames: int


@dataclass
class _Generated:
    items: list[tuple[_Prepared, Any]]  # (row, GenerationResult or error message)
    generation_s: float
    failed: list[RowResult] = field(default_factory=list)


def _message(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip()


class Replica:
    """The actor class; the driver wraps it with ``ray.remote``."""

    def __init__(self, settings: ReplicaSettings, ledger: Any = None) -> None:
        import ray

        self.settings = settings
        self.ledger = ledger  # the driver's RowLedger actor (None: not tracked, e.g. used outside a job)
        self.identity = {"name": settings.name, "node": ray.get_runtime_context().get_node_id(),
                         "host": socket.gethostname(), "pid": os.getpid(), "device": ""}
        # torch creates its compile cache in $TMPDIR on first import; keep it with our other caches
        # (persistent, and nothing of the job is left in the temp folder)
        from .model_loader import cache_root

        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root(settings.model.cache_dir) / "torchinductor"))
        if not settings.has_gpu:
            import torch

            torch.set_num_threads(max(1, settings.torch_threads or 1))
        from .model_loader import load_model

        # A failed load is reported by describe() instead of raised here: Ray aborts threaded actors
        # whose constructor raises, with a page of native stack traces.
        self.load_error: Optional[BaseException] = None
        try:
            self.model = load_model(settings.model, settings.has_gpu)
        except Exception as e:
            self.load_error = e
            return
        info = dict(getattr(self.model, "info", {}) or {})
        self.identity["device"] = str(info.get("device", ""))
        self.model_info = {k: info.get(k) for k in ("source", "revision", "schema", "layout", "dtype", "device")}
        if settings.model.source == TINY_RANDOM:  # not the cache path on some node
            self.model_info["source"] = f"{TINY_RANDOM} (seed {settings.model.tiny_seed})"
        self._lm_lock = threading.Lock()  # one generate() at a time; the codec runs beside it
        self._codec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codec")
        self._prompts: dict[str, tuple[Any, int]] = {}
        self._prompt_lock = threading.Lock()

    # -- introspection ----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Who this replica is and what it loaded (also the driver's readiness probe)."""
        if self.load_error is not None:
            raise self.load_error
        return {**self.identity, "model": self.model_info, "sample_rate": self.model.sample_rate,
                "frame_rate": self.model.frame_rate, "max_frames": self.model.max_frames}

    # -- preparation ------------------------------------------------------------------------
    def _prompt(self, uri: str, ref: Any) -> tuple[Any, int]:
        """A prompt's codes, encoded once per replica and reused for every row that names it."""
        import ray

        with self._prompt_lock:
            if uri not in self._prompts:
                codes = self.model.encode_audio([ray.get(ref)])[0]  # file bytes, decoded in memory
                self._prompts[uri] = (codes, len(codes))
            return self._prompts[uri]

    def _prepare(self, row: RowSpec, prompts: dict[str, Any]) -> _Prepared | RowResult:
        prompt, prompt_frames = None, 0
        try:
            if row.prompt_uri:
                prompt, prompt_frames = self._prompt(row.prompt_uri, prompts[row.prompt_uri])
        except Exception as e:
            return RowResult(row.key, False, f"audio_prompt {row.audio_prompt!r} cannot be used: {_message(e)}",
                             seed=row.seed)
        limit = self.model.max_new_frames_limit(prompt_frames)
        max_new = row.max_new_frames
        if max_new is None and row.max_seconds is not None:
            max_new = max(1, math.ceil(row.max_seconds * self.model.frame_rate))
        if limit < 1:
            return RowResult(row.key, False, f"the audio prompt ({prompt_frames} frames) leaves no room in the "
                             f"model's {self.model.max_frames}-frame timeline", seed=row.seed,
                             prompt_frames=prompt_frames)
        if max_new is not None and max_new > limit:
            return RowResult(row.key, False, f"max_new_frames={max_new} is too large: at most {limit} after a "
                             f"{prompt_frames}-frame prompt", seed=row.seed, prompt_frames=prompt_frames)
        spoken = len((row.text or "").encode()) * FRAMES_PER_TEXT_BYTE
        expected = prompt_frames + int(min(max_new or limit, limit, spoken))
        return _Prepared(row, max_new, prompt, prompt_frames, expected)

    # -- generation -------------------------------------------------------------------------
    def _generate_batch(self, batch: list[_Prepared]) -> list[Any]:
        """model.generate() for one batch, codes only (the codec runs later, in its own thread)."""
        return self.model.generate(
            [p.row.text for p in batch],
            cfg_scale=[p.row.cfg_scale for p in batch],
            temperature=[p.row.temperature for p in batch],
            top_p=[p.row.top_p for p in batch],
            top_k=[p.row.top_k for p in batch],
            max_new_frames=[p.max_new_frames for p in batch],
            seed=[p.row.seed for p in batch],
            audio_prompts=[p.prompt for p in batch],
            prompt_transcripts=[p.row.prompt_transcript for p in batch],
            decode_audio=False,
        )

    def _ledger_call(self, method: str, keys: list[str], wait: bool) -> None:
        if self.ledger is None:
            return
        import ray

        ref = getattr(self.ledger, method).remote(self.identity["name"], self.identity["pid"], keys)
        if wait:
            ray.get(ref)

    def _generate(self, batch: list[_Prepared]) -> _Generated:
        """Generate a batch; if it raises, retry its rows one by one so one bad row fails alone."""
        with self._lm_lock:
            self._ledger_call("begin", [p.row.key for p in batch], wait=True)  # recorded before any work
            start = time.perf_counter()  # busy time, not time spent waiting for the lock
            try:
                items = list(zip(batch, self._generate_batch(batch)))
            except Exception as e:
                if len(batch) == 1:
                    items = [(batch[0], _message(e))]
                else:
                    items = []
                    for p in batch:
                        try:
                            items.append((p, self._generate_batch([p])[0]))
                        except Exception as e1:
                            items.append((p, _message(e1)))
            elapsed = time.perf_counter() - start
        return _Generated(items, elapsed)

    def _decode(self, generated: _Generated, failed: list[RowResult]) -> BatchResult:
        """Codes -> waveforms (batched) -> encoded audio files; runs on the codec thread."""
        start = time.perf_counter()
        out = list(failed)
        good = [(p, r) for p, r in generated.items if not isinstance(r, str) and r.frames > 0]
        for p, r in generated.items:
            if isinstance(r, str):
                out.append(RowResult(p.row.key, False, r, seed=p.row.seed, prompt_frames=p.prompt_frames))
            elif r.frames == 0:
                out.append(RowResult(p.row.key, False, "the model produced no audio frames", seed=r.seed,
                                     frames=0, ended_by_eos=r.ended_by_eos, prompt_frames=r.prompt_frames))
        try:
            waves = self.model.decode_audio([r.codes for _, r in good]) if good else []
        except Exception:
            waves = []
            for _, r in good:
                try:
                    waves.append(self.model.decode_audio([r.codes])[0])
                except Exception as e:
                    waves.append(e)
        sr = self.model.sample_rate
        for (p, r), wave in zip(good, waves):
            resolved = getattr(r, "settings", None) or {}  # what the model used (None -> its limit)
            common = dict(seed=r.seed, frames=r.frames, ended_by_eos=r.ended_by_eos, prompt_frames=r.prompt_frames,
                          max_new_frames=resolved.get("max_new_frames", p.max_new_frames))
            if isinstance(wave, Exception):
                out.append(RowResult(p.row.key, False, f"audio decoding failed: {_message(wave)}", **common))
                continue
            try:
                data = audio_io.encode(wave, sr, self.settings.audio_format, self.settings.audio_subtype)
            except Exception as e:
                out.append(RowResult(p.row.key, False, f"audio encoding failed: {_message(e)}", **common))
                continue
            out.append(RowResult(p.row.key, True, audio=data, sample_rate=sr, duration_s=len(wave) / sr, **common))
        return BatchResult(out, dict(self.identity), generation_s=generated.generation_s,
                           decode_s=time.perf_counter() - start)

    def run_unit(self, rows: list[RowSpec], prompts: dict[str, Any]) -> Iterator[BatchResult]:
        """Generate a unit of rows, yielding each batch's results as soon as its audio is encoded."""
        if self.load_error is not None:
            raise self.load_error
        prepared, failed = [], []
        for row in rows:
            p = self._prepare(row, prompts)
            (failed if isinstance(p, RowResult) else prepared).append(p)
        batches = plan_batches(prepared, lambda p: p.expected_frames, self.settings.batch_size,
                               self.settings.frame_budget)
        if not batches:
            yield BatchResult(failed, dict(self.identity))
            return
        pending: deque[Future[BatchResult]] = deque()
        for i, batch in enumerate(batches):
            generated = self._generate(batch)
            pending.append(self._codec.submit(self._decode, generated, failed if i == 0 else []))
            while pending and (pending[0].done() or len(pending) > 1):
                yield from self._sent(pending.popleft().result())
        while pending:
            yield from self._sent(pending.popleft().result())

    def _sent(self, result: BatchResult) -> Iterator[BatchResult]:
        """Yield one batch's results, then clear its rows from the ledger."""
        yield result
        self._ledger_call("finish", [r.key for r in result.rows], wait=False)
