"""A replica: one Ray actor holding one model, keeping its continuous-batching engine full.

Units of rows arrive from the driver (``run_unit``, several at once) as (key, shard, position)
triples: the replica plans those rows itself from the job's shards (``planning.planner.ShardPlanner``: cells
parsed and checked, voices and prompt files resolved), so the driver never touches a cell. They go
into a local queue. One engine thread runs ``Dia.stream()`` for the life of the replica, pulling the next queued row
whenever a slot frees up (a ``None`` when the queue is momentarily empty keeps the other slots
decoding), so there is no unit or batch barrier. Each finished row is encoded and written
straight to the job's output location (local folder or object store) by a writer thread, and only
its metadata goes back to the driver, as Arrow tables the driver appends without reading a row,
through the ``run_unit`` call that brought it.

When the engine pulls a row, the row is written to the driver's row ledger first (and the write
is waited for): if this process dies, exactly the rows it had started are charged for it, and the
rows still queued here go back to the driver's queue free.
"""
from __future__ import annotations

import math
import os
import queue
from collections import OrderedDict, defaultdict
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from .. import audio as audio_io
from ..config import TINY_RANDOM, ModelConfig, QualityConfig
from ..records.schema import STATUS_OK, outcome_record, records_table
from ..planning.rows import RowSpec
from ..storage import Storage, job_wide
from ..planning.voices import VoiceBook

# Rows finishing within this long of the first of them travel to the driver together (at most
# DELIVERY_ROWS): each delivery costs the driver a fixed ~0.3 ms, so a replica finishing 25 rows a
# second must not send them one by one when hundreds of replicas share one driver.
DELIVERY_WINDOW_S = 1.0
DELIVERY_ROWS = 512


@dataclass
class ReplicaSettings:
    """What a replica needs besides its rows."""

    name: str
    model: ModelConfig
    has_gpu: bool
    torch_threads: Optional[int]
    audio_format: str
    audio_subtype: Optional[str]
    slots: Optional[int]  # rows decoded side by side (None: the engine sizes it)
    output: str = ""  # the job's output location; "" = send audio bytes to the driver instead
    embed_audio: bool = False  # also send the bytes back (the metadata embeds them)
    voices: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # name -> (clip file bytes, transcript)
    chunk_seconds: float = 20.0  # long-form rows: see GenerationConfig
    tail_seconds: float = 6.0
    end_tag: bool = False  # append the second-to-last speaker's tag (the seed's cut-off remedy)
    quality: Optional[QualityConfig] = None  # metrics and gates (None: neither)
    job: Any = None  # planning.planner.JobContext: how to plan any row of the job (None: outside a job)
    prompt_timeout_s: float = 60.0  # data.prompt_timeout_s
    prompt_max_bytes: int = 64 << 20  # data.prompt_max_mb


@dataclass
class RowResult:
    """The outcome of one row."""

    key: str
    ok: bool
    error: Optional[str] = None
    audio: Optional[bytes] = None  # the audio file's bytes, only when the driver needs them
    audio_path: Optional[str] = None  # where the replica wrote it (relative to the output location)
    audio_bytes: Optional[int] = None
    sample_rate: Optional[int] = None
    duration_s: Optional[float] = None
    frames: Optional[int] = None
    ended_by_eos: Optional[bool] = None
    seed: Optional[int] = None
    max_new_frames: Optional[int] = None
    prompt_frames: Optional[int] = None
    fatal: bool = False  # a write error every other row would hit too: the driver stops the job
    generation_s: Optional[float] = None  # from taking a slot to its codes and waveform
    write_s: Optional[float] = None  # encoding and writing its file
    chunks: Optional[int] = None  # long form: how many chunks the script ran in
    chunk_frames: Optional[list[int]] = None  # ... and the new frames of each
    end_tag_applied: Optional[bool] = None
    rejected: bool = False  # audio came out but its best attempt failed a quality gate (error says which)
    metrics: Optional[dict[str, Any]] = None  # pipeline.metrics.row_metrics of the kept attempt
    quality_seeds: Optional[list[int]] = None  # the seed of every attempt, in order
    turns: Optional[list[dict[str, Any]]] = None  # the kept attempt's turns, timed (quality.align_model)
    align_problem: Optional[str] = None  # why its turns could not be timed
    refused: bool = False  # a problem found while planning the row: it never reached the engine


def ipc_bytes(table: Any) -> bytes:
    """A table as an Arrow IPC stream."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


@dataclass
class BatchResult:
    """Rows delivered together, as finished metadata: a table per shard (the driver only appends
    them), the keys they hold, the counts the progress bar needs, plus where they ran and the
    replica's busy time since its last delivery. ``fatal``: (key, error) of rows whose audio could
    not be written for a reason every row would meet; they have no record and are redone on resume."""

    tables: dict[str, bytes]  # shard -> its metadata rows, an Arrow IPC stream (``table``)
    keys: list[str]  # the keys recorded in ``tables``
    replica: dict[str, Any]  # name, node, host, pid, device
    ok: int = 0  # status ok
    failed: int = 0  # status error or rejected, from a replica's attempt
    refused: int = 0  # status error found while planning (never generated)
    audio_s: float = 0.0  # audio of the rows whose file was written
    audio_bytes: int = 0
    fatal: list[tuple[str, str]] = field(default_factory=list)
    generation_s: float = 0.0
    decode_s: float = 0.0
    slots: int = 0

    def table(self, shard: str) -> Any:
        """A shard's metadata rows as a pyarrow Table. They travel as Arrow IPC bytes, which the
        driver reads ~7x faster than a pickled Table (Ray would rebuild every column)."""
        import pyarrow as pa

        return pa.ipc.open_stream(self.tables[shard]).read_all()

    def only(self, keep: Any) -> "BatchResult":
        """This delivery with only the rows whose key is in ``keep`` (counts recomputed from the tables)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        tables, keys = {}, [k for k in self.keys if k in keep]
        ok = failed = audio_bytes = 0
        audio_s = 0.0
        for shard in self.tables:
            table = self.table(shard)
            table = table.filter(pc.is_in(table.column("key"), value_set=pa.array(keys, pa.string())))
            tables[shard] = ipc_bytes(table)
            ok += pc.sum(pc.equal(table.column("status"), STATUS_OK).cast("int64")).as_py() or 0
            failed += table.num_rows
            written = table.filter(pc.is_valid(table.column("audio_bytes")))
            audio_s += pc.sum(written.column("duration_s")).as_py() or 0.0
            audio_bytes += pc.sum(written.column("audio_bytes")).as_py() or 0
        return BatchResult(tables, keys, self.replica, ok=ok, failed=failed - ok, audio_s=audio_s,
                           audio_bytes=audio_bytes, fatal=[f for f in self.fatal if f[0] in keep],
                           generation_s=self.generation_s, decode_s=self.decode_s, slots=self.slots)


@dataclass
class _Prepared:
    row: RowSpec
    max_new_frames: Optional[int]
    prompt: Any  # None or prompt codes
    prompt_frames: int
    outbox: "queue.Queue[RowResult]"
    transcript: Optional[str] = None  # the prompt's transcript (the row's own, or its voices')
    seated_at: float = 0.0
    attempt: int = 0  # quality retries: 0 is the row's own seed
    generation_s: float = 0.0  # over every attempt
    tries: list[int] = field(default_factory=list)  # seeds of the attempts judged so far
    best: Any = None  # (score, result, metrics, failures) of the best attempt so far

    @property
    def seed(self) -> int:
        from ..quality.gates import retry_seed

        return retry_seed(self.row.seed, self.attempt)


def _message(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip()


class Replica:
    """The actor class; the driver wraps it with ``ray.remote`` (a threaded actor: ``run_unit``
    calls run side by side and share the engine)."""

    def __init__(self, settings: ReplicaSettings, ledger: Any = None) -> None:
        import ray

        self.settings = settings
        self.ledger = ledger  # the driver's RowLedger actor (None: not tracked, e.g. used outside a job)
        self.identity = {"name": settings.name, "node": ray.get_runtime_context().get_node_id(),
                         "host": socket.gethostname(), "pid": os.getpid(), "device": ""}
        # torch creates its compile cache in $TMPDIR on first import; keep it with our other caches
        # (persistent, and nothing of the job is left in the temp folder)
        from ..model.loader import cache_root

        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root(settings.model.cache_dir) / "torchinductor"))
        if not settings.has_gpu:
            import torch

            torch.set_num_threads(max(1, settings.torch_threads or 1))
        from ..model.loader import load_model

        # A failed load is reported by describe() instead of raised here: Ray aborts threaded actors
        # whose constructor raises, with a page of native stack traces.
        self.load_error: Optional[BaseException] = None
        self._asr: Any = None
        self._speaker: Any = None
        self._aligner: Any = None
        try:
            self.model = load_model(settings.model, settings.has_gpu)
            q = settings.quality
            if q is not None and (q.asr_model or q.speaker_model or q.align_model):
                from ..quality.align import CtcAligner
                from ..quality.judges import AsrJudge, SpeakerJudge

                device = str(getattr(self.model, "device", "cpu"))
                self._asr = AsrJudge(q.asr_model, device) if q.asr_model else None
                self._speaker = SpeakerJudge(q.speaker_model, device) if q.speaker_model else None
                self._aligner = CtcAligner(q.align_model, device) if q.align_model else None
        except Exception as e:
            self.load_error = e
            return
        info = dict(getattr(self.model, "info", {}) or {})
        self.identity["device"] = str(info.get("device", ""))
        self.model_info = {k: info.get(k) for k in ("source", "revision", "schema", "layout", "dtype", "device")}
        if settings.model.source == TINY_RANDOM:  # not the cache path on some node
            self.model_info["source"] = f"{TINY_RANDOM} (seed {settings.model.tiny_seed})"
        self.storage = Storage(settings.output) if settings.output else None
        self._prompts: dict[str, tuple[Any, int]] = {}
        from ..planning.prompts import PromptReader

        self._prompt_files = PromptReader(timeout_s=settings.prompt_timeout_s, max_bytes=settings.prompt_max_bytes)
        self._planners: "OrderedDict[str, Any]" = OrderedDict()  # shard -> planning.planner.ShardPlanner, newest last
        self._planner_lock = threading.Lock()
        self._voices = VoiceBook(lambda clip: self.model.encode_audio([clip])[0], settings.voices)
        self._embeddings: dict[int, Any] = {}  # id(prompt codes) -> (codes, speaker embedding)
        self._prompt_lock = threading.Lock()
        self._inbox: "queue.Queue[_Prepared]" = queue.Queue()
        self._seated: dict[str, _Prepared] = {}  # rows the engine has pulled and not yet delivered
        self._staged: list[_Prepared] = []  # rows taken from the queue for the slots about to free up
        self._lock = threading.Lock()
        self._started = time.perf_counter()
        self._idle_s = 0.0  # engine time with no row seated
        self._write_s = 0.0  # encoding + writing time
        self._reported = (0.0, 0.0)
        self._stats: Any = None  # the running stream's StreamStats (its slot count is known as it starts)
        self._writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="writer")
        self._engine_error: Optional[BaseException] = None
        threading.Thread(target=self._engine, name="engine", daemon=True).start()

    # -- introspection ----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Who this replica is and what it loaded (also the driver's readiness probe)."""
        if self.load_error is not None:
            raise self.load_error
        deadline = time.monotonic() + 120
        while not self._slots and self._engine_error is None and time.monotonic() < deadline:
            time.sleep(0.01)  # the engine thread sizes its slots first
        if self._engine_error is not None:
            raise self._engine_error
        return {**self.identity, "model": self.model_info, "sample_rate": self.model.sample_rate,
                "frame_rate": self.model.frame_rate, "max_frames": self.model.max_frames, "slots": self._slots}

    @property
    def _slots(self) -> int:
        return self._stats.slots if self._stats is not None else 0

    # -- preparation ------------------------------------------------------------------------
    def _prompt(self, uri: str) -> tuple[Any, int]:
        """A prompt's codes, read and encoded once per replica and reused for every row that names it.
        Raises ValueError with the reason when the file cannot be used."""
        with self._prompt_lock:
            if uri in self._prompts:
                return self._prompts[uri]
        data, problem = self._prompt_files.get(uri)  # waits at most data.prompt_timeout_s
        if problem:
            raise ValueError(problem)
        with self._prompt_lock:
            if uri not in self._prompts:
                codes = self.model.encode_audio([data])[0]  # file bytes, decoded in memory
                self._prompts[uri] = (codes, len(codes))
            return self._prompts[uri]

    def voice_prompt(self, voices: Any) -> tuple[Any, str]:
        """(prompt codes, prompt transcript) for a row's (S1, S2) voice names; each voice's clip is
        encoded once per replica."""
        return self._voices.prompt(tuple(voices))

    def _prepare(self, row: RowSpec, outbox: "queue.Queue[RowResult]") -> Any:
        """A row ready for the engine (_Prepared), or the RowResult that says why it cannot run."""
        if row.problems:
            return RowResult(row.key, False, "; ".join(row.problems), refused=True)
        prompt, prompt_frames, transcript = None, 0, row.prompt_transcript
        try:
            if row.voices:
                prompt, transcript = self.voice_prompt(row.voices)
                prompt_frames = len(prompt)
            elif row.prompt_uri:
                try:
                    prompt, prompt_frames = self._prompt(row.prompt_uri)
                except ValueError as e:  # the file's own problem, said as read_prompt says it
                    return RowResult(row.key, False, str(e), seed=row.seed)
        except Exception as e:
            what = f"voices {row.voices}" if row.voices else f"audio_prompt {row.audio_prompt!r}"
            return RowResult(row.key, False, f"{what} cannot be used: {_message(e)}", seed=row.seed)
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
        return _Prepared(row, max_new, prompt, prompt_frames, outbox, transcript)

    # -- the engine thread ------------------------------------------------------------------
    def _requests(self) -> Iterator[Any]:
        """The engine's endless source: queued rows as Requests, None while the queue is empty.

        The rows the engine is about to seat (as many as it has free slots) are written to the
        ledger in one call, and the write is waited for before the first of them starts."""
        from ..model.protocol import Request  # deferred: dia_model loads torch

        staged = self._staged
        while True:
            if not staged:
                free = max(1, (self._slots or 1) - len(self._seated))
                while len(staged) < free:
                    try:
                        staged.append(self._inbox.get_nowait())
                    except queue.Empty:
                        break
                if staged:
                    self._ledger_call("begin", [p.row.key for p in staged], wait=True)
            if not staged:
                idle, since = not self._seated, time.perf_counter()
                yield None
                if idle:  # nothing seated: the engine waited for rows meanwhile
                    self._idle_s += time.perf_counter() - since
                continue
            p = staged.pop(0)
            p.seated_at = time.perf_counter()
            with self._lock:
                self._seated[p.row.key] = p
            self._admitted(p)
            r = p.row
            yield Request(id=r.key, text=r.text, cfg_scale=r.cfg_scale, temperature=r.temperature, top_p=r.top_p,
                          top_k=r.top_k, max_new_frames=p.max_new_frames, seed=p.seed, audio_prompt=p.prompt,
                          prompt_transcript=p.transcript, long_form=r.long_form,
                          chunk_seconds=self.settings.chunk_seconds, tail_seconds=self.settings.tail_seconds,
                          end_tag=self.settings.end_tag)

    def _admitted(self, p: _Prepared) -> None:
        """Called on the engine thread as a row takes a slot (a hook for fault-injection tests)."""

    def _engine(self) -> None:
        from ..model.protocol import StreamStats  # deferred: dia_model loads torch

        while True:
            stats = self._stats = StreamStats()
            try:
                stream = self.model.stream(self._requests(), slots=self.settings.slots, decode_audio=True,
                                           stats=stats)
                for res in stream:
                    with self._lock:
                        p = self._seated.pop(res.id, None)
                    if p is not None:
                        self._writer.submit(self._finish, p, res)
            except Exception as e:  # the engine itself failed: retry each seated row alone, then go on
                if not stats.slots:  # it could not even start (e.g. slots do not fit): report it
                    self._engine_error = e
                    return
                self._rescue(e)

    def _rescue(self, error: BaseException) -> None:
        """After the engine raised: each row it held gets one generate() of its own."""
        with self._lock:
            seated, self._seated = list(self._seated.values()), {}
        for p in self._staged:  # taken for the failed stream but never started: queued again
            self._inbox.put(p)
        self._staged.clear()
        for p in seated:
            try:
                r = p.row
                res = self.model.generate(
                    r.text, cfg_scale=r.cfg_scale, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                    max_new_frames=p.max_new_frames, seed=p.seed, audio_prompts=[p.prompt],
                    prompt_transcripts=p.transcript, decode_audio=True, long_form=r.long_form,
                    chunk_seconds=self.settings.chunk_seconds, tail_seconds=self.settings.tail_seconds,
                    end_tag=self.settings.end_tag)[0]
            except Exception as e:
                p.outbox.put(RowResult(p.row.key, False, f"generation failed: {_message(e)} (the batch it ran in "
                                       f"failed first: {_message(error)})", seed=p.row.seed,
                                       prompt_frames=p.prompt_frames))
                continue
            self._finish(p, res)

    # -- finishing a row (writer threads) ---------------------------------------------------
    def _finish(self, p: _Prepared, res: Any) -> None:
        start = time.perf_counter()
        p.generation_s += start - p.seated_at if p.seated_at else 0.0
        generation_s = p.generation_s or None
        try:
            if self.settings.quality is not None and not res.error and res.frames and res.audio is not None:
                if self._judge(p, res):
                    return  # generated again with the next seed; the row is finished later
                res = p.best[1]
            out = self._result(p, res)
        except BaseException as e:  # never leave a unit waiting for a row
            out = RowResult(p.row.key, False, f"finishing the row failed: {_message(e)}", seed=p.row.seed)
        took = time.perf_counter() - start
        out.generation_s, out.write_s = generation_s, took
        with self._lock:
            self._write_s += took
        p.outbox.put(out)

    def _judge(self, p: _Prepared, res: Any) -> bool:
        """Measure this attempt and keep it if it is the best so far. True when the row failed a gate
        and has retries left: it is queued again (same key, next derived seed)."""
        from ..quality.metrics import row_metrics
        from ..quality.gates import check, score

        q = self.settings.quality
        sr = self.model.sample_rate
        metrics = row_metrics(res.audio, sr, p.row.text or "")
        if self._asr is not None:
            from ..quality.judges import clean_heard, error_rates

            heard = clean_heard(self._asr.transcribe(res.audio, sr))
            metrics["asr_text"] = heard
            metrics["cer"], metrics["wer"] = error_rates(p.row.text or "", heard)
        if self._speaker is not None and p.prompt is not None:
            metrics["speaker_sim"] = self._speaker.similarity(self._speaker.embed(res.audio, sr),
                                                              self._prompt_embedding(p.prompt))
        failures = check(metrics, q)
        p.tries.append(res.seed)
        if p.best is None or score(failures) < p.best[0]:
            p.best = (score(failures), res, metrics, failures)
        if failures and p.attempt < q.retries:
            p.attempt += 1
            p.seated_at = 0.0
            self._inbox.put(p)
            return True
        return False

    def _align(self, script: str, audio: Any, rate: int) -> tuple[Optional[list[dict[str, Any]]], Optional[str]]:
        """(turns with times, None), or (None, why) when this row cannot be aligned: the export then
        lists its turns without times."""
        from ..quality.align import AlignmentError

        try:
            return [t.as_dict() for t in self._aligner.align(audio, rate, script)], None
        except AlignmentError as e:
            return None, str(e)

    def _prompt_embedding(self, codes: Any) -> Any:
        """The speaker embedding of a prompt as the model heard it (its codes decoded), once per prompt."""
        key = id(codes)  # prompt codes are cached objects: one per voice or prompt file
        with self._prompt_lock:
            if key not in self._embeddings:
                wave = self.model.decode_audio([codes])[0]
                self._embeddings[key] = (codes, self._speaker.embed(wave, self.model.sample_rate))
            return self._embeddings[key][1]

    def _result(self, p: _Prepared, res: Any) -> RowResult:
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
            return RowResult(p.row.key, False, f"audio encoding failed: {_message(e)}", **common)
        out = RowResult(p.row.key, True, sample_rate=sr, duration_s=len(res.audio) / sr, audio_bytes=len(data),
                        **common)
        if p.best is not None:  # quality: the kept attempt's metrics, every attempt's seed
            _, _, out.metrics, failures = p.best
            out.quality_seeds = list(p.tries)
            if failures:
                out.rejected = True
                out.error = "quality gates failed after {} attempt{}: {}".format(
                    len(p.tries), "s" if len(p.tries) > 1 else "", "; ".join(f.message for f in failures))
        if self._aligner is not None:  # the kept attempt only: its turns, timed
            out.turns, out.align_problem = self._align(p.row.text or "", res.audio, sr)
        if self.storage is None or self.settings.embed_audio:
            out.audio = data
        if self.storage is not None:
            try:
                self.storage.put(p.row.audio_path, data)
            except Exception as e:
                return RowResult(p.row.key, False, f"cannot write the audio file {p.row.audio_path}: {_message(e)}",
                                 fatal=job_wide(e), **common)
            out.audio_path = p.row.audio_path
        return out

    # -- the driver's calls -----------------------------------------------------------------
    def _ledger_call(self, method: str, keys: list[str], wait: bool) -> None:
        if self.ledger is None:
            return
        import ray

        ref = getattr(self.ledger, method).remote(self.identity["name"], self.identity["pid"], keys)
        if wait:
            ray.get(ref)

    def _planner(self, shard: str) -> Any:
        """The shard's planner, made once (it reads the shard); the last few are kept."""
        with self._planner_lock:
            planner = self._planners.get(shard)
            if planner is None:
                if self.settings.job is None:
                    raise RuntimeError("this replica was started without a job to plan rows from")
                try:
                    planner = self._planners[shard] = self.settings.job.planner(shard)
                except Exception as e:  # e.g. a path that exists only on the driver's machine
                    raise RuntimeError(
                        f"replica {self.identity['name']} on {self.identity['host']} cannot plan rows of input shard "
                        f"{shard}: {_message(e)}. Replicas read their rows themselves: data.input must be "
                        "reachable from every node (a shared folder or an object-store URI)") from e
                while len(self._planners) > 3:
                    self._planners.popitem(last=False)
            self._planners.move_to_end(shard)
            return planner

    def plan_rows(self, items: list[tuple[str, str, int]]) -> tuple[list[RowSpec], dict[str, Any]]:
        """The RowSpecs of (key, shard, position) items, planned here from the job's shards, and each
        shard's carried-through columns."""
        rows, carried = [], {}
        for key, shard, position in items:
            planner = self._planner(shard)
            carried[shard] = planner.carried
            row = planner.row(position)
            if row.key != key:  # the driver and this replica read the shard differently
                raise RuntimeError(f"row {position} of shard {shard} is {row.key!r} here, {key!r} on the driver: "
                                   "was the input changed while the job ran?")
            rows.append(row)
        return rows, carried

    def run_unit(self, items: list[tuple[str, str, int]], attempts: dict[str, int]) -> Iterator[BatchResult]:
        """Plan a unit's rows ((key, shard, position) triples), queue them for the engine and yield
        their metadata as they finish, a few rows at a time. ``attempts``: the driver's count of
        earlier tries for the rows that have any."""
        if self.load_error is not None:
            raise self.load_error
        rows, carried = self.plan_rows(items)
        specs = {r.key: r for r in rows}
        outbox: "queue.Queue[RowResult]" = queue.Queue()
        failed, waiting = [], 0
        for row in rows:
            p = self._prepare(row, outbox)
            if isinstance(p, RowResult):
                failed.append(p)
            else:
                self._inbox.put(p)
                waiting += 1
        if failed:
            yield from self._sent(failed, specs, carried, attempts)
        while waiting:
            try:
                got = [outbox.get(timeout=1.0)]
            except queue.Empty:
                if self._engine_error is not None:
                    raise self._engine_error
                continue
            deadline = time.monotonic() + DELIVERY_WINDOW_S
            while len(got) < min(waiting, DELIVERY_ROWS):
                try:
                    got.append(outbox.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            waiting -= len(got)
            yield from self._sent(got, specs, carried, attempts)

    def _sent(self, results: list[RowResult], specs: dict[str, RowSpec], carried: dict[str, Any],
              attempts: dict[str, int]) -> Iterator[BatchResult]:
        """Yield rows to the driver as metadata tables, then clear them from the ledger."""
        with self._lock:
            busy, write = time.perf_counter() - self._started - self._idle_s, self._write_s
            last_busy, last_write = self._reported
            self._reported = (busy, write)
        out = BatchResult({}, [], dict(self.identity), generation_s=busy - last_busy, decode_s=write - last_write,
                          slots=self._slots)
        by_shard: dict[str, list[tuple[dict[str, Any], Optional[bytes]]]] = defaultdict(list)
        batch_rows = self._slots or len(results)
        for r in results:
            if r.fatal:  # not recorded: the row is redone when the job is resumed
                out.fatal.append((r.key, r.error or "write failed"))
                continue
            row = specs[r.key]
            by_shard[row.shard].append((outcome_record(row, r, self.model_info, self.identity,
                                                       attempts.get(r.key, 0), batch_rows), r.audio))
            out.keys.append(r.key)
            if r.ok:  # a rejected row's audio is written too; it counts as not ok
                out.audio_s += r.duration_s or 0.0
                out.audio_bytes += r.audio_bytes or 0
            if r.ok and not r.rejected:
                out.ok += 1
            elif r.refused:
                out.refused += 1
            else:
                out.failed += 1
        embed = self.settings.embed_audio
        for shard, items in by_shard.items():
            out.tables[shard] = ipc_bytes(records_table([rec for rec, _ in items], carried[shard],
                                                        [audio for _, audio in items] if embed else None))
        yield out
        self._ledger_call("finish", [r.key for r in results], wait=False)
