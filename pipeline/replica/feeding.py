"""Keeping the engine full: the queue of prepared rows, the rows the engine holds, and the engine
thread that runs ``model.stream()`` for the life of the replica (and, when the engine itself fails,
retries each row it held on its own).

``stream()`` pulls the next row whenever a slot frees up; a ``None`` while the queue is empty keeps
the other slots decoding, so there is no unit or batch barrier. Before the rows about to take a slot
start, ``begin(keys)`` is called and waited for (the replica writes them to the driver's row ledger:
if the process dies, exactly the rows it had started are charged for it).
"""
from __future__ import annotations

import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from .prepare import Prepared
from .results import ReplicaSettings, RowResult, describe_error

if TYPE_CHECKING:
    from ..model.protocol import SpeechModel


class EngineFeeder:
    """Owns the rows between their unit's arrival and their result: queued (``put``), staged for
    the slots about to free up, seated in the engine. ``finish(p, result)`` gets each result
    (``submit`` from the engine thread, ``finish_now`` after a rescue, both a writer's)."""

    def __init__(self, model: "SpeechModel", settings: ReplicaSettings, *, begin: Callable[[list[str]], None],
                 admitted: Callable[[Prepared], None], submit: Callable[[Prepared, Any], None],
                 finish_now: Callable[[Prepared, Any], None]) -> None:
        self.model = model
        self.settings = settings
        self._begin, self._admitted, self._submit, self._finish_now = begin, admitted, submit, finish_now
        self._inbox: "queue.Queue[Prepared]" = queue.Queue()
        self._staged: list[Prepared] = []  # taken from the queue for the slots about to free up
        self._seated: dict[str, Prepared] = {}  # rows the engine has pulled and not yet finished
        self._lock = threading.Lock()  # guards _seated (engine thread vs. rescue)
        self._stats: Any = None  # the running stream's StreamStats (its slot count is known as it starts)
        self.idle_s = 0.0  # engine time with no row seated
        self.error: Optional[BaseException] = None  # the engine could not start at all

    @property
    def slots(self) -> int:
        """The engine's slot count (0 until it has started)."""
        return self._stats.slots if self._stats is not None else 0

    def put(self, p: Prepared) -> None:
        """Queue a row for the engine (a new row, or a quality retry)."""
        self._inbox.put(p)

    def start(self) -> None:
        threading.Thread(target=self.run, name="engine", daemon=True).start()

    # -- the engine thread ------------------------------------------------------------------
    def requests(self) -> Iterator[Any]:
        """The engine's endless source: queued rows as Requests, None while the queue is empty.

        The rows the engine is about to seat (as many as it has free slots) are passed to ``begin``
        in one call, which returns before the first of them starts."""
        from ..model.protocol import Request  # deferred: dia_model loads torch

        staged = self._staged
        while True:
            if not staged:
                free = max(1, (self.slots or 1) - len(self._seated))
                while len(staged) < free:
                    try:
                        staged.append(self._inbox.get_nowait())
                    except queue.Empty:
                        break
                if staged:
                    self._begin([p.row.key for p in staged])
            if not staged:
                idle, since = not self._seated, time.perf_counter()
                yield None
                if idle:  # nothing seated: the engine waited for rows meanwhile
                    self.idle_s += time.perf_counter() - since
                continue
            p = staged.pop(0)
            p.seated_at = time.perf_counter()
            with self._lock:
                self._seated[p.row.key] = p
            self._admitted(p)
            r, s = p.row, self.settings
            yield Request(id=r.key, text=r.text, cfg_scale=r.cfg_scale, temperature=r.temperature, top_p=r.top_p,
                          top_k=r.top_k, max_new_frames=p.max_new_frames, seed=p.seed, audio_prompt=p.prompt,
                          prompt_transcript=p.transcript, long_form=r.long_form, chunk_seconds=s.chunk_seconds,
                          tail_seconds=s.tail_seconds, end_tag=s.end_tag)

    def run(self) -> None:
        from ..model.protocol import StreamStats  # deferred: dia_model loads torch

        while True:
            stats = self._stats = StreamStats()
            try:
                # lookahead=0: the engine takes a row only for a free slot. Every row it has taken is
                # in the ledger as begun, and a replica's death charges each of them an attempt; rows
                # waiting inside the engine would be charged for a crash they had no part in.
                stream = self.model.stream(self.requests(), slots=self.settings.slots, decode_audio=True,
                                           stats=stats, lookahead=0)
                for res in stream:
                    with self._lock:
                        p = self._seated.pop(res.id, None)
                    if p is not None:
                        self._submit(p, res)
            except Exception as e:  # the engine itself failed: retry each seated row alone, then go on
                if not stats.slots:  # it could not even start (e.g. slots do not fit): report it
                    self.error = e
                    return
                self.rescue(e)

    def rescue(self, error: BaseException) -> None:
        """After the engine raised: each row it held gets one generate() of its own."""
        with self._lock:
            seated, self._seated = list(self._seated.values()), {}
        for p in self._staged:  # taken for the failed stream but never started: queued again
            self._inbox.put(p)
        self._staged.clear()
        s = self.settings
        for p in seated:
            try:
                r = p.row
                res = self.model.generate(
                    r.text, cfg_scale=r.cfg_scale, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                    max_new_frames=p.max_new_frames, seed=p.seed, audio_prompts=[p.prompt],
                    prompt_transcripts=p.transcript, decode_audio=True, long_form=r.long_form,
                    chunk_seconds=s.chunk_seconds, tail_seconds=s.tail_seconds, end_tag=s.end_tag)[0]
            except Exception as e:
                p.outbox.put(RowResult(p.row.key, False, f"generation failed: {describe_error(e)} (the batch it ran "
                                       f"in failed first: {describe_error(error)})", seed=p.row.seed,
                                       prompt_frames=p.prompt_frames))
                continue
            self._finish_now(p, res)
