"""A replica: one Ray actor holding one model, keeping its continuous-batching engine full.

Units of rows arrive from the driver (``run_unit``, several at once) as (key, shard, position)
triples: the replica plans those rows itself from the job's shards (``planning.planner.ShardPlanner``:
cells parsed and checked, voices and prompt files resolved), so the driver never touches a cell.
They go into the engine's queue (``feeding``), where one engine thread runs ``model.stream()`` for
the life of the replica. Each finished row is judged, encoded and written straight to the job's
output location by a writer thread (``writing``, ``judging``), and only its metadata goes back to
the driver, as Arrow tables the driver appends without reading a row, through the ``run_unit`` call
that brought it (``delivery``).

When the engine pulls a row, the row is written to the driver's row ledger first (and the write
is waited for): if this process dies, exactly the rows it had started are charged for it, and the
rows still queued here go back to the driver's queue free.

This module is the actor shell, the only one of the replica's that imports Ray: it loads the model,
wires the parts together and answers the driver's calls.
"""
from __future__ import annotations

import os
import queue
import socket
import time
from typing import Any, Iterator, Optional

import ray

from ..config import TINY_RANDOM
from ..model.loader import cache_root, load_model
from ..planning.rows import RowSpec
from ..storage import Storage
from .caches import PlannerCache, PromptCache
from .delivery import Delivery, batches
from .feeding import EngineFeeder
from .judging import QualityRetries
from .prepare import Prepared, prepare
from .results import BatchResult, ReplicaSettings, RowResult
from .writing import RowWriter


class Replica:
    """The actor class; the driver wraps it with ``ray.remote`` (a threaded actor: ``run_unit``
    calls run side by side and share the engine)."""

    def __init__(self, settings: ReplicaSettings, ledger: Any = None) -> None:
        self.settings = settings
        self.ledger = ledger  # the driver's RowLedger actor (None: not tracked, e.g. used outside a job)
        self.identity = {"name": settings.name, "node": ray.get_runtime_context().get_node_id(),
                         "host": socket.gethostname(), "pid": os.getpid(), "device": ""}
        # torch creates its compile cache in $TMPDIR on first import; keep it with our other caches
        # (persistent, and nothing of the job is left in the temp folder)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root(settings.model.cache_dir) / "torchinductor"))
        if not settings.has_gpu:
            import torch  # deferred: only a CPU replica sets its threads, before the model loads

            torch.set_num_threads(max(1, settings.torch_threads or 1))
        # A failed load is reported by describe() instead of raised here: Ray aborts threaded actors
        # whose constructor raises, with a page of native stack traces.
        self.load_error: Optional[BaseException] = None
        self._writer: Optional[RowWriter] = None
        try:
            self.model = load_model(settings.model, settings.has_gpu)
            self._prompts = PromptCache(self.model, settings.voices, timeout_s=settings.prompt_timeout_s,
                                        max_bytes=settings.prompt_max_bytes)
            q = settings.quality
            judge = QualityRetries(q, self.model, self._prompts, self._requeue) if q is not None else None
        except Exception as e:
            self.load_error = e
            return
        info = dict(getattr(self.model, "info", {}) or {})
        self.identity["device"] = str(info.get("device", ""))
        self.model_info = {k: info.get(k) for k in ("source", "revision", "schema", "layout", "dtype", "device")}
        if settings.model.source == TINY_RANDOM:  # not the cache path on some node
            self.model_info["source"] = f"{TINY_RANDOM} (seed {settings.model.tiny_seed})"
        self._writer = RowWriter(self.model, settings, Storage(settings.output) if settings.output else None, judge)
        self._feeder = EngineFeeder(self.model, settings, begin=self._begin, admitted=self._admitted,
                                    submit=self._writer.submit, finish_now=self._writer.finish)
        self._planners = PlannerCache(settings.job, f"replica {settings.name} on {self.identity['host']}")
        self._started = time.perf_counter()
        self._delivery = Delivery(self.identity, self.model_info, settings.embed_audio, busy=self._busy,
                                  slots=lambda: self._feeder.slots)
        self._feeder.start()

    @property
    def storage(self) -> Optional[Storage]:
        """Where finished rows' audio is written (None: the bytes go to the driver)."""
        return self._writer.storage if self._writer is not None else None

    @storage.setter
    def storage(self, value: Any) -> None:
        self._writer.storage = value

    # -- introspection ----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Who this replica is and what it loaded (also the driver's readiness probe)."""
        if self.load_error is not None:
            raise self.load_error
        deadline = time.monotonic() + 120
        while not self._feeder.slots and self._feeder.error is None and time.monotonic() < deadline:
            time.sleep(0.01)  # the engine thread sizes its slots first
        if self._feeder.error is not None:
            raise self._feeder.error
        return {**self.identity, "model": self.model_info, "sample_rate": self.model.sample_rate,
                "frame_rate": self.model.frame_rate, "max_frames": self.model.max_frames,
                "slots": self._feeder.slots}

    def voice_prompt(self, voices: Any) -> tuple[Any, str]:
        """(prompt codes, prompt transcript) for a row's (S1, S2) voice names; each voice's clip is
        encoded once per replica."""
        return self._prompts.voice_prompt(voices)

    # -- hooks and wiring -------------------------------------------------------------------
    def _admitted(self, p: Prepared) -> None:
        """Called on the engine thread as a row takes a slot (a hook for fault-injection tests)."""

    def _requeue(self, p: Prepared) -> None:
        """A quality retry: the row goes back to the engine's queue with its next seed."""
        self._feeder.put(p)

    def _begin(self, keys: list[str]) -> None:
        self._ledger_call("begin", keys, wait=True)

    def _busy(self) -> tuple[float, float]:
        """(engine busy seconds, encoding + writing seconds) since the replica started."""
        return time.perf_counter() - self._started - self._feeder.idle_s, self._writer.write_s

    def _ledger_call(self, method: str, keys: list[str], wait: bool) -> None:
        if self.ledger is None:
            return
        ref = getattr(self.ledger, method).remote(self.identity["name"], self.identity["pid"], keys)
        if wait:
            ray.get(ref)

    # -- the driver's calls -----------------------------------------------------------------
    def plan_rows(self, items: list[tuple[str, str, int]]) -> tuple[list[RowSpec], dict[str, Any]]:
        """The RowSpecs of (key, shard, position) items, planned here from the job's shards, and each
        shard's carried-through columns."""
        rows, carried = [], {}
        for key, shard, position in items:
            planner = self._planners.get(shard)
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
        refused, waiting = [], 0
        for row in rows:
            p = prepare(row, outbox, self.model, self._prompts)
            if isinstance(p, RowResult):
                refused.append(p)
            else:
                self._feeder.put(p)
                waiting += 1
        if refused:
            yield from self._deliver(refused, specs, carried, attempts)
        for got in batches(outbox, waiting, lambda: self._feeder.error):
            yield from self._deliver(got, specs, carried, attempts)

    def _deliver(self, results: list[RowResult], specs: dict[str, RowSpec], carried: dict[str, Any],
                 attempts: dict[str, int]) -> Iterator[BatchResult]:
        """Yield rows to the driver as metadata tables, then clear them from the ledger."""
        yield self._delivery.batch(results, specs, carried, attempts)
        self._ledger_call("finish", [r.key for r in results], wait=False)
