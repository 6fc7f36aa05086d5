"""``Dia.stream``: the loop that pulls requests into free slots, steps the engine, and hands back
results as they finish, decoding audio on a codec thread beside the decoding.

    checks -> admit (free slots) -> step -> finished slots -> codec thread -> results

The loop owns the order of things; ``slots.SlotTable`` owns who sits where, ``engine.SlotState``
owns the math.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np
import torch

from .engine import SlotState, slot_bytes
from .errors import DiaError
from .generate import RowRequest
from .longform import ChunkId, LongForm, with_end_tag
from .slots import Seat, SlotTable

if TYPE_CHECKING:
    from .api import Dia, GenerationResult, Request

MEMORY_HEADROOM = 0.85  # share of free memory the slots may take (activations and the codec need the rest)
IDLE_POLL_S = 0.005  # how often an idle stream (a source that yields None, no slot busy) asks again
CUDA_LENGTH_BUCKET = 256  # on CUDA the attention length comes in fewer, coarser buckets: one graph each
CUDA_TOP_K_BUCKET = 64  # ... and the top-k bound is rounded up to a power of two from this


@dataclass
class StreamStats:
    """What one :meth:`Dia.stream` call did, filled in as it runs (pass one in to read it).

    ``occupancy`` = busy_slot_steps / slot_steps: the share of computed slot-steps that held a
    request (a finish is seen one step late, so a full engine stays just under 1)."""

    slots: int = 0
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


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info.get("MemAvailable", info.get("MemFree", 0))
    except OSError:
        return 1 << 40  # cannot tell: do not refuse


def choose_slots(dia: "Dia", slots: int | None) -> int:
    """The slot count: as asked (refused with how many would fit), or sized from free memory."""
    from .api import CPU_SLOTS, MAX_AUTO_SLOTS

    per_slot = slot_bytes(dia.model, dia.device)
    fit = int(_free_bytes(dia.device) * MEMORY_HEADROOM // per_slot)
    if slots is None:
        wanted = MAX_AUTO_SLOTS if dia.device.type == "cuda" else CPU_SLOTS
        slots = max(1, min(wanted, fit))
    elif not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
        raise DiaError(f"slots must be a positive integer or None, got {slots!r}")
    if slots > fit:
        raise DiaError(
            f"slots={slots} does not fit: each slot holds {per_slot / 2**20:.0f} MiB of cache on {dia.device} "
            f"and {_free_bytes(dia.device) / 2**30:.1f} GiB is free, so at most {fit} slots fit; "
            "pass slots=None to size it from free memory"
        )
    return slots


def check_request(dia: "Dia", req: "Request") -> tuple[RowRequest | None, str | None]:
    """(RowRequest, None), or (None, the problems) for one request, as generate() checks a row.
    (An ``end_tag`` request is checked with the tag appended: see :func:`apply_end_tag`.)"""
    problems: list[str] = []
    prompt = dia._prompt_codes([req.audio_prompt], problems)[0]
    row = {"cfg_scale": req.cfg_scale, "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k,
           "max_new_frames": req.max_new_frames, "seed": req.seed, "prompt_transcripts": req.prompt_transcript}
    request = dia._row_request(0, req.text, prompt, row, problems) if not problems else None
    if problems or request is None:
        return None, "; ".join(p.removeprefix("row 0: ") for p in problems)
    return request, None


def apply_end_tag(req: "Request") -> tuple["Request", bool]:
    """The request with the end tag appended when it asks for one (and it applies), and whether it did."""
    if not getattr(req, "end_tag", False) or not isinstance(getattr(req, "text", None), str):
        return req, False
    text, applied = with_end_tag(req.text)
    return replace(req, text=text, end_tag=False), applied


def _result(dia: "Dia", seat: Seat, codes: np.ndarray | None, ended_by_eos: bool) -> "GenerationResult":
    from .api import GenerationResult

    r = seat.row
    return GenerationResult(
        codes=codes, ended_by_eos=ended_by_eos, seed=r.seed, prompt_frames=seat.prompt_frames,
        settings={"cfg_scale": r.cfg_scale, "temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k,
                  "max_new_frames": r.max_new_frames},
        sample_rate=dia.sample_rate, frame_rate=dia.frame_rate, id=seat.request_id,
        end_tag_applied=seat.extra.get("end_tag_applied", False),
    )


def _error_result(dia: "Dia", req: Any, message: str) -> "GenerationResult":
    from .api import GenerationResult

    return GenerationResult(codes=np.zeros((0, dia.config.channels), dtype=np.int64), ended_by_eos=False,
                            seed=getattr(req, "seed", None), prompt_frames=0, sample_rate=dia.sample_rate,
                            frame_rate=dia.frame_rate, id=getattr(req, "id", None), error=message)


def _step_function(state: SlotState, cuda_graphs: bool | None) -> tuple[Callable[[int, int], torch.Tensor], Any]:
    """The step to call each iteration: captured graphs on CUDA (unless ``cuda_graphs=False``), else eager."""
    if state.device.type == "cuda" and cuda_graphs is not False:
        from .graphs import GraphedStep

        graphed = GraphedStep(state)
        return graphed, graphed
    if cuda_graphs:
        raise DiaError(f"cuda_graphs=True needs a CUDA device; this model is on {state.device}")
    return state.step, None


def _k_bound(k: int, device: torch.device, vocab: int) -> int:
    """The top-k bound a step is run with: as is on a CPU, a power of two (>= 64) on CUDA, so a sweep
    of top-k values needs few captured graphs (a larger bound gives the same draws)."""
    if device.type != "cuda":
        return k
    bound = CUDA_TOP_K_BUCKET
    while bound < k:
        bound *= 2
    return min(bound, vocab)


def stream_requests(dia: "Dia", requests: Iterable["Request"], *, slots: int | None, decode_audio: bool,
                    cuda_graphs: bool | None = None, stats: StreamStats | None = None) -> Iterator["GenerationResult"]:
    """The generator behind :meth:`Dia.stream` (see there)."""
    n = choose_slots(dia, slots)
    stats = stats if stats is not None else StreamStats()
    stats.slots = n
    state = SlotState(dia.model, n, dia.device)
    cuda = dia.device.type == "cuda"
    table = SlotTable(n, state.capacity, dia.device, length_bucket=CUDA_LENGTH_BUCKET if cuda else None,
                      stats=stats)
    step, graphed = _step_function(state, cuda_graphs)
    source = iter(requests)
    exhausted = False
    follow_ups: deque["Request"] = deque()  # long form: the next chunk of a script whose chunk just finished
    long_runs = 0  # long-form scripts under way
    codec = ThreadPoolExecutor(1, thread_name_prefix="dia-codec") if decode_audio and dia.codec else None
    # On CUDA the codec runs on its own stream, so its kernels overlap the decode steps'.
    codec_stream = torch.cuda.Stream(dia.device) if codec is not None and cuda else None
    decoding: deque[Future[list["GenerationResult"]]] = deque()

    def decode(results: list["GenerationResult"]) -> list["GenerationResult"]:
        started = time.perf_counter()
        nonempty = [r for r in results if r.frames]
        with torch.cuda.stream(codec_stream) if codec_stream is not None else contextlib.nullcontext():
            waves = dia.decode_audio([r.codes for r in nonempty]) if nonempty else []
        for r, wave in zip(nonempty, waves):
            r.audio = wave
        for r in results:
            if not r.frames:
                r.audio = np.zeros(0, dtype=np.float32)
        stats.codec_s += time.perf_counter() - started
        stats.codec_rows += len(results)
        return results

    def done_decoding(wait: bool) -> Iterator["GenerationResult"]:
        while decoding and (wait or decoding[0].done()):
            yield from decoding.popleft().result()

    try:
        while True:
            # 1. fill free slots, pulling requests only now
            admit: list[tuple[int, Any, RowRequest]] = []
            free = table.free()
            while len(admit) < len(free) and (follow_ups or not exhausted):
                if follow_ups:  # a started long script goes first: it holds finished chunks
                    req = follow_ups.popleft()
                else:
                    try:
                        req = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    if req is None:  # nothing ready yet: keep decoding, ask again next step
                        break
                    if getattr(req, "long_form", False):
                        try:
                            req = LongForm.start(dia, req).first()
                            long_runs += 1
                        except DiaError as e:
                            yield _error_result(dia, req, str(e))
                            continue
                try:
                    req, tagged = apply_end_tag(req)
                    row, problem = check_request(dia, req)
                except Exception as e:  # a request object that is not a Request at all
                    row, problem, tagged = None, f"{type(e).__name__}: {e}", False
                if problem is not None:
                    if isinstance(req.id, ChunkId):  # the whole script fails, naming its chunk
                        long_runs -= 1
                        run = req.id.run
                        problem = f"chunk {req.id.index + 1} of {len(run.chunks)}: {problem}"
                        req = run.request
                    yield _error_result(dia, req, problem)
                    continue
                admit.append((free[len(admit)], req, row, tagged))
            if admit:
                stats.admissions += 1
                state.admit([s for s, _, _, _ in admit], [row for _, _, row, _ in admit])
                for s, req, row, tagged in admit:
                    prompt = 0 if row.prompt is None else len(row.prompt)
                    table.seat(s, Seat(req.id, row, prompt, prompt, {"end_tag_applied": tagged}))
            if not table.occupied():
                if exhausted and not follow_ups:
                    break
                yield from done_decoding(wait=False)
                time.sleep(IDLE_POLL_S)  # an idle source and no work: wait for requests
                continue
            # 2. one step for every slot; the finished flags travel to the host meanwhile
            table.post(step(table.attention_length(), _k_bound(table.top_k_bound(), dia.device,
                                                                 dia.config.audio_vocab)))
            table.advanced()
            # 3. slots whose finish has reached the host: results out, seats free
            finished = []
            for s in table.collect():
                seat = table.release(s)
                out = state.output(s, seat.prompt_frames)
                result = _result(dia, seat, out.codes, out.ended_by_eos)
                if isinstance(seat.request_id, ChunkId):  # one chunk of a long script: on to the next
                    run = seat.request_id.run
                    following = run.finished(result)
                    if following is not None:
                        follow_ups.append(following)
                        continue
                    long_runs -= 1
                    result = run.result(result)
                finished.append(result)
            if exhausted and not long_runs and dia.device.type == "cpu" and 0 < table.occupied() < table.n:
                state.compact(table.compact(), table.attention_length())  # the tail: fewer rows per step
                stats.compactions += 1
            if finished:
                if codec is not None:
                    decoding.append(codec.submit(decode, finished))
                else:
                    yield from finished
            yield from done_decoding(wait=False)
        yield from done_decoding(wait=True)
    finally:
        if graphed is not None:
            stats.graphs_captured, stats.graph_replays, stats.graph_fallback = (
                graphed.captures, graphed.replays, graphed.fallback)
        if codec is not None:
            codec.shutdown(wait=True)


__all__ = ["stream_requests", "choose_slots", "check_request", "StreamStats"]
