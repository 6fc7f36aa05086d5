"""Finishing a row on a replica's writer threads: judge it (quality), encode its audio, write the
file to the job's output location, and put its RowResult in the outbox of the call that brought it."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Optional

from .. import audio as audio_io
from ..storage import Storage, job_wide
from .prepare import Prepared
from .results import ReplicaSettings, RowResult, describe_error

if TYPE_CHECKING:
    from ..model.protocol import SpeechModel
    from .judging import QualityRetries

WRITER_THREADS = 2


class RowWriter:
    """Owns the writer threads, the output location (``storage``: None sends the bytes to the driver)
    and the time spent encoding and writing."""

    def __init__(self, model: "SpeechModel", settings: ReplicaSettings, storage: Optional[Storage],
                 judge: Optional["QualityRetries"]) -> None:
        self.model, self.settings, self.storage, self.judge = model, settings, storage, judge
        self._pool = ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="writer")
        self._lock = threading.Lock()  # guards write_s
        self.write_s = 0.0

    def submit(self, p: Prepared, res: Any) -> None:
        """Finish a row on a writer thread (the engine thread goes straight back to decoding)."""
        self._pool.submit(self.finish, p, res)

    def finish(self, p: Prepared, res: Any) -> None:
        start = time.perf_counter()
        p.generation_s += start - p.seated_at if p.seated_at else 0.0
        generation_s = p.generation_s or None
        try:
            if self.judge is not None and not res.error and res.frames and res.audio is not None:
                if self.judge.judge(p, res):
                    return  # generated again with the next seed; the row is finished later
                res = p.best[1]
            out = self.result(p, res)
        except BaseException as e:  # never leave a unit waiting for a row
            out = RowResult(p.row.key, False, f"finishing the row failed: {describe_error(e)}", seed=p.row.seed)
        took = time.perf_counter() - start
        out.generation_s, out.write_s = generation_s, took
        with self._lock:
            self.write_s += took
        p.outbox.put(out)

    def result(self, p: Prepared, res: Any) -> RowResult:
        """The row's RowResult, its audio encoded and written (the kept attempt's, under quality)."""
        if res.error:
            return RowResult(p.row.key, False, res.error, seed=p.row.seed, prompt_frames=p.prompt_frames)
        common = dict(seed=res.seed, frames=res.frames, ended_by_eos=res.ended_by_eos, prompt_frames=res.prompt_frames,
                      max_new_frames=(res.settings or {}).get("max_new_frames", p.max_new_frames),
                      end_tag_applied=res.end_tag_applied)
        if res.chunks is not None:
            common.update(chunks=len(res.chunks), chunk_frames=[c.frames for c in res.chunks])
        if res.frames == 0:
            return RowResult(p.row.key, False, "the model produced no audio frames", **common)
        if res.audio is None:
            return RowResult(p.row.key, False, "audio decoding failed: no waveform came back", **common)
        sr = self.model.sample_rate
        try:
            data = audio_io.encode(res.audio, sr, self.settings.audio_format, self.settings.audio_subtype)
        except Exception as e:
            return RowResult(p.row.key, False, f"audio encoding failed: {describe_error(e)}", **common)
        out = RowResult(p.row.key, True, sample_rate=sr, duration_s=len(res.audio) / sr, audio_bytes=len(data),
                        **common)
        if p.best is not None:  # quality: the kept attempt's metrics, every attempt's seed
            _, _, out.metrics, failures = p.best
            out.quality_seeds = list(p.tries)
            if failures:
                out.rejected = True
                out.error = "quality gates failed after {} attempt{}: {}".format(
                    len(p.tries), "s" if len(p.tries) > 1 else "", "; ".join(f.message for f in failures))
        if self.judge is not None and self.judge.aligner is not None:  # the kept attempt only
            out.turns, out.align_problem = self.judge.align(p.row.text or "", res.audio, sr)
        storage = self.storage
        if storage is None or self.settings.embed_audio:
            out.audio = data
        if storage is not None:
            try:
                storage.put(p.row.audio_path, data)
            except Exception as e:
                return RowResult(p.row.key, False, f"cannot write the audio file {p.row.audio_path}: "
                                 f"{describe_error(e)}", fatal=job_wide(e), **common)
            out.audio_path = p.row.audio_path
        return out
