"""``Dia.stream``: the loop that pulls requests into free slots, steps the engine, and hands back
results as they finish, decoding audio on a codec thread beside the decoding.

    pull -> check -> admit (free slots) -> step -> finished slots -> codec thread -> results

The loop owns the order of things (:class:`StreamRun`, one method per stage); ``slot_table.SlotTable``
owns who sits where, ``slot_state.SlotState`` owns the math, ``admission.RowChecker`` the checks,
``longform.LongForm`` the chunks of a long script.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import numpy as np
import torch

from ..errors import DiaError
from ..nn.model import DiaModel
from ..types import GenerationResult, Request, StreamStats
from .admission import RowChecker, apply_end_tag
from .buckets import CPU_LENGTH_BUCKET, CUDA_LENGTH_BUCKET, k_bound
from .longform import ChunkId, LongForm
from .slot_state import SlotState, slot_bytes
from .slot_table import Seat, SlotTable
from .timeline import RowRequest
from .segments import CALL_COST_BYTES
from .waiting import WaitingRoom

MEMORY_HEADROOM = 0.85  # share of free memory the slots may take (activations and the codec need the rest)
IDLE_POLL_S = 0.005  # how often an idle stream (a source that yields None, no slot busy) asks again
CPU_SLOTS = 16  # slots=None on a CPU
MAX_AUTO_SLOTS = 256  # slots=None on an accelerator: at most this many, as many as fit


@dataclass(frozen=True)
class StreamModel:
    """What the loop needs of a loaded model (``Dia`` builds one): the network, its device, the row
    checks, and the codec's decode (None: no codec loaded)."""

    model: DiaModel
    device: torch.device
    checker: RowChecker
    decode_audio: Callable[[list[np.ndarray]], list[np.ndarray]] | None
    sample_rate: int
    frame_rate: float

    @property
    def channels(self) -> int:
        return self.model.cfg.channels


class Admission(NamedTuple):
    """A checked request on its way into a free slot."""

    slot: int
    request: Request
    row: RowRequest
    end_tag_applied: bool


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info.get("MemAvailable", info.get("MemFree", 0))
    except OSError:
        return 1 << 40  # cannot tell: do not refuse


def choose_slots(model: DiaModel, device: torch.device, slots: int | None) -> int:
    """The slot count: as asked (refused with how many would fit), or sized from free memory."""
    per_slot = slot_bytes(model, device)
    fit = int(_free_bytes(device) * MEMORY_HEADROOM // per_slot)
    if slots is None:
        wanted = MAX_AUTO_SLOTS if device.type == "cuda" else CPU_SLOTS
        slots = max(1, min(wanted, fit))
    elif not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
        raise DiaError(f"slots must be a positive integer or None, got {slots!r}")
    if slots > fit:
        raise DiaError(
            f"slots={slots} does not fit: each slot holds {per_slot / 2**20:.0f} MiB of cache on {device} "
            f"and {_free_bytes(device) / 2**30:.1f} GiB is free, so at most {fit} slots fit; "
            "pass slots=None to size it from free memory"
        )
    return slots


def _step_function(state: SlotState, cuda_graphs: bool | None,
                   quiet: threading.Lock | None = None) -> tuple[Callable[[int, int], torch.Tensor], Any]:
    """The step to call each iteration: captured graphs on CUDA (unless ``cuda_graphs=False``), else eager."""
    if state.device.type == "cuda" and cuda_graphs is not False:
        from .graphs import GraphedStep

        graphed = GraphedStep(state, quiet)
        return graphed, graphed
    if cuda_graphs:
        raise DiaError(f"cuda_graphs=True needs a CUDA device; this model is on {state.device}")
    return state.step, None


class CodecThread:
    """Decodes finished results' codes to audio on one thread beside the decoding, in order (on CUDA
    on its own stream, so its kernels overlap the decode steps')."""

    def __init__(self, decode_audio: Callable[[list[np.ndarray]], list[np.ndarray]], device: torch.device,
                 stats: StreamStats, quiet: threading.Lock | None = None):
        self._decode_audio = decode_audio
        self._quiet = quiet if quiet is not None else threading.Lock()  # shared with the graph captures
        self._stats = stats
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dia-codec")
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._pending: deque[Future[list[GenerationResult]]] = deque()

    def submit(self, results: list[GenerationResult]) -> None:
        self._pending.append(self._pool.submit(self._decode, results))

    def ready(self, wait: bool = False) -> Iterator[GenerationResult]:
        """The results decoded so far, in submission order (all of them when ``wait``)."""
        while self._pending and (wait or self._pending[0].done()):
            yield from self._pending.popleft().result()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)

    def _decode(self, results: list[GenerationResult]) -> list[GenerationResult]:
        started = time.perf_counter()
        nonempty = [r for r in results if r.frames]
        with self._quiet, torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext():
            waves = self._decode_audio([r.codes for r in nonempty]) if nonempty else []
        for r, wave in zip(nonempty, waves):
            r.audio = wave
        for r in results:
            if not r.frames:
                r.audio = np.zeros(0, dtype=np.float32)
        self._stats.codec_s += time.perf_counter() - started
        self._stats.codec_rows += len(results)
        return results


class StreamRun:
    """One ``stream()`` call's state between its stages; the generator below drives it."""

    def __init__(self, ctx: StreamModel, requests: Iterable[Request], slots: int, stats: StreamStats,
                 cuda_graphs: bool | None, lookahead: int = 0):
        self.ctx = ctx
        self.stats = stats
        stats.slots = slots
        self.state = SlotState(ctx.model, slots, ctx.device)
        cuda = ctx.device.type == "cuda"
        self.table = SlotTable(slots, self.state.capacity, ctx.device,
                               length_bucket=CUDA_LENGTH_BUCKET if cuda else (
                                   CPU_LENGTH_BUCKET if ctx.device.type == "cpu" else None), stats=stats)
        self.quiet = threading.Lock()  # the codec thread holds it while decoding; a graph capture waits for it
        self.step_fn, self.graphed = _step_function(self.state, cuda_graphs, self.quiet)
        cfg = ctx.model.cfg  # an attention call's fixed cost, in row-positions of K/V read
        item = self.state.cache.k.element_size()
        self.call_cost = CALL_COST_BYTES / (2 * cfg.dec_kv_heads * cfg.dec_head_dim * item)
        self.cross_call_cost = CALL_COST_BYTES / (2 * cfg.cross_heads * cfg.cross_head_dim * item)
        self.source = iter(requests)
        self.exhausted = False  # the source has ended
        self.follow_ups: deque[Request] = deque()  # long form: the next chunk of a script whose chunk just finished
        self.waiting: WaitingRoom[Admission] = WaitingRoom(lookahead)  # checked requests not seated yet
        stats.lookahead = lookahead
        self.long_runs = 0  # long-form scripts under way

    @property
    def done(self) -> bool:
        """Nothing seated, nothing left to pull."""
        return self.exhausted and not self.follow_ups and not self.waiting and not self.table.occupied()

    # ------------------------------------------------------------------ 1. pull, check, admit
    def _pull(self) -> Request | None:
        """The source's next request; None when there is none now (it ended, or yielded None)."""
        if self.exhausted:
            return None
        try:
            return next(self.source)
        except StopIteration:
            self.exhausted = True
            return None

    def _start_long_form(self, req: Request) -> Request:
        """A long-form request's first chunk (raises DiaError when its script cannot be split)."""
        run = LongForm.start(req, self.ctx.model.cfg, self.ctx.frame_rate)
        self.long_runs += 1
        return run.first()

    def _check(self, req: Request) -> tuple[Admission | None, GenerationResult | None]:
        """(the request ready for a slot, None) or (None, its error result)."""
        try:
            req, tagged = apply_end_tag(req)
            row, problem = self.ctx.checker.check_request(req)
        except Exception as e:  # checks that hit something unexpected: this request fails, the others go on
            row, problem, tagged = None, f"{type(e).__name__}: {e}", False
        if row is None:
            if isinstance(req.id, ChunkId):  # the whole script fails, naming its chunk
                self.long_runs -= 1
                run = req.id.run
                problem = f"chunk {req.id.index + 1} of {len(run.chunks)}: {problem}"
                req = run.request
            return None, self._error_result(req, problem or "refused")
        return Admission(-1, req, row, tagged), None

    def admit(self) -> Iterator[GenerationResult]:
        """Fill the free slots: a long script's next chunk first, then the waiting room's longest
        (topped up from the source to the free slots plus the lookahead, pulled only now); yields
        the error results of requests refused on the way."""
        free = self.table.free()
        if not free:
            return
        yield from self._fill_waiting_room(len(free) + self.waiting.limit)
        admitted: list[Admission] = []
        while len(admitted) < len(free):
            if self.follow_ups:
                ready, error = self._check(self.follow_ups.popleft())
                if error is not None:
                    yield error
                    continue
                assert ready is not None
            elif self.waiting:
                ready = self.waiting.take()
            else:  # the source ended, or has nothing ready yet: keep decoding, ask again next step
                break
            admitted.append(ready._replace(slot=free[len(admitted)]))
        if admitted:
            self.stats.admissions += 1
            self.state.admit([a.slot for a in admitted], [a.row for a in admitted])
            for a in admitted:
                prompt = a.row.prompt_frames
                self.table.seat(a.slot, Seat(a.request.id, a.row, prompt, prompt, end_tag_applied=a.end_tag_applied))

    def _fill_waiting_room(self, size: int) -> Iterator[GenerationResult]:
        """Pull and check source requests until ``size`` wait (or the source ends or has none now)."""
        while len(self.waiting) < size:
            req = self._pull()
            if req is None:
                return
            if not isinstance(req, Request):
                yield self._error_result(req, f"expected a dia_model.Request, got {type(req).__name__}")
                continue
            if req.long_form:
                try:
                    req = self._start_long_form(req)
                except DiaError as e:
                    yield self._error_result(req, str(e))
                    continue
            ready, error = self._check(req)
            if error is not None:
                yield error
                continue
            assert ready is not None
            self.waiting.add(ready, ready.row.max_tokens(self.ctx.model.cfg), len(ready.row.script))

    # ------------------------------------------------------------------ 2. step
    def step(self) -> None:
        """One step for every slot; the finished flags travel to the host meanwhile."""
        k_max = k_bound(self.table.top_k_bound(), self.ctx.device, self.ctx.model.cfg.audio_vocab)
        length = self.table.attention_length()
        if self.ctx.device.type == "cpu":  # eager steps: each run of slots reads its own length
            self.table.post(self.state.step(length, k_max, self.table.attention_segments(self.call_cost),
                                            self.table.cross_segments(self.state.text_capacity, self.cross_call_cost)))
        else:
            self.table.post(self.step_fn(length, k_max))
        self.table.advanced()

    # ------------------------------------------------------------------ 3. finished slots
    def finish(self) -> list[GenerationResult]:
        """Slots whose finish has reached the host: their results (a long script's only when its last
        chunk is done; an earlier chunk queues the next), their seats freed."""
        finished = []
        for s in self.table.collect():
            seat = self.table.release(s)
            out = self.state.output(s, seat.prompt_frames)
            result = self._result(seat, out.codes, out.ended_by_eos)
            if isinstance(seat.request_id, ChunkId):  # one chunk of a long script: on to the next
                run = seat.request_id.run
                following = run.finished(result)
                if following is not None:
                    self.follow_ups.append(following)
                    continue
                self.long_runs -= 1
                result = run.result(result)
            finished.append(result)
        return finished

    def compact_tail(self) -> None:
        """On a CPU, once nothing more can arrive, drop the free slots: the tail's steps get cheaper
        (compute grows with rows there; on CUDA a captured graph keeps its shape instead)."""
        if (self.exhausted and not self.long_runs and not self.waiting and self.ctx.device.type == "cpu"
                and 0 < self.table.occupied() < self.table.n):
            self.state.compact(self.table.compact(), self.table.attention_length())
            self.stats.compactions += 1

    def close(self) -> None:
        if self.graphed is not None:
            g = self.graphed
            self.stats.graphs_captured, self.stats.graph_replays, self.stats.graph_fallback = (
                g.captures, g.replays, g.fallback)

    # ------------------------------------------------------------------ results
    def _result(self, seat: Seat, codes: np.ndarray, ended_by_eos: bool) -> GenerationResult:
        r = seat.row
        return GenerationResult(
            codes=codes, ended_by_eos=ended_by_eos, seed=r.seed, prompt_frames=seat.prompt_frames,
            settings=r.settings, sample_rate=self.ctx.sample_rate, frame_rate=self.ctx.frame_rate,
            id=seat.request_id, end_tag_applied=seat.end_tag_applied,
        )

    def _error_result(self, req: Any, message: str) -> GenerationResult:
        return GenerationResult(codes=np.zeros((0, self.ctx.channels), dtype=np.int64), ended_by_eos=False,
                                seed=getattr(req, "seed", None), prompt_frames=0, sample_rate=self.ctx.sample_rate,
                                frame_rate=self.ctx.frame_rate, id=getattr(req, "id", None), error=message)


def stream_requests(ctx: StreamModel, requests: Iterable[Request], *, slots: int | None, decode_audio: bool,
                    cuda_graphs: bool | None = None, stats: StreamStats | None = None,
                    lookahead: int | None = None) -> Iterator[GenerationResult]:
    """The generator behind :meth:`Dia.stream` (see there)."""
    n = choose_slots(ctx.model, ctx.device, slots)
    if lookahead is None:
        lookahead = n
    elif not isinstance(lookahead, int) or isinstance(lookahead, bool) or lookahead < 0:
        raise DiaError(f"lookahead must be a non-negative integer or None, got {lookahead!r}")
    run = StreamRun(ctx, requests, n, stats if stats is not None else StreamStats(), cuda_graphs, lookahead)
    codec = CodecThread(ctx.decode_audio, ctx.device, run.stats, run.quiet) if decode_audio and ctx.decode_audio else None
    try:
        while True:
            yield from run.admit()
            if not run.table.occupied():
                if run.done:
                    break
                if codec is not None:
                    yield from codec.ready()
                time.sleep(IDLE_POLL_S)  # an idle source and no work: wait for requests
                continue
            run.step()
            finished = run.finish()
            run.compact_tail()
            if codec is None:
                yield from finished
                continue
            if finished:
                codec.submit(finished)
            yield from codec.ready()
        if codec is not None:
            yield from codec.ready(wait=True)
    finally:
        run.close()
        if codec is not None:
            codec.shutdown()


__all__ = ["stream_requests", "choose_slots", "StreamModel", "StreamRun", "CodecThread", "CPU_SLOTS",
           "MAX_AUTO_SLOTS"]
