"""The driver loop: replicas pull units of rows, results stream back, dead replicas' rows are re-queued.

Each replica is a Ray actor (``max_restarts`` lets Ray restart it after a crash, on another node if
its own is gone). The driver keeps enough units with each replica to fill its engine's slots and one
unit more (at least ``units_in_flight``), so the replica's local queue never runs dry. When a replica
process dies, that is one death however many units it held: the rows it had started (from the
row ledger) get an attempt counted, the rest go back to the queue free, and the replica is probed
with ``describe()`` and used again once it answers. Only a replica that Ray will not restart, or
one whose units keep raising while it lives (``max_replica_failures`` in a row), is given up.
"""
from __future__ import annotations

import enum
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import ray
from ray.exceptions import ActorUnavailableError, RayTaskError

from ..config import ClusterConfig
from ..errors import PipelineError
from ..replica.results import BatchResult, ReplicaSettings
from .ledger import start_ledger
from .workqueue import Unit, WorkQueue

log = logging.getLogger("pipeline")

class SeatState(str, enum.Enum):
    """Where a replica's seat stands (the value is what job.json says)."""

    STARTING = "starting"  # the actor is being created or loading its model
    ACTIVE = "active"  # ready: it takes units
    PROBING = "probing"  # it died or raised; describe() tells whether it came back
    GONE = "gone"  # given up: it gets no more units


STARTING, ACTIVE, PROBING, GONE = SeatState.STARTING, SeatState.ACTIVE, SeatState.PROBING, SeatState.GONE


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)(\([^)]*\))?: ")


def error_text(e: BaseException, limit: int = 800) -> str:
    """A short reason from a Ray error, whose text may hold a whole remote traceback: the last
    ``SomeError: message`` line and what follows it."""
    lines = [ln.strip() for ln in str(e).splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        if _EXC_LINE.match(lines[i]):
            return " ".join(ln for ln in lines[i:] if ln)[:limit]
    text = " ".join(ln for ln in lines if ln)
    return f"{type(e).__name__}: {text}"[:limit]


@dataclass
class _Task:
    unit: Unit
    seat: "_Seat"
    remaining: set[str]


@dataclass
class _Seat:
    """A replica's seat in the pool (not an engine slot): its actor handle, which may be a restarted
    process, and what the driver knows about it."""

    name: str
    handle: Any
    state: SeatState = STARTING
    probe: Any = None  # ObjectRef of a pending describe()
    probe_again_at: Optional[float] = None  # when to ask again (the actor was still restarting)
    inflight: dict[Any, _Task] = field(default_factory=dict)
    unit_errors_in_a_row: int = 0  # units that raised while the replica lived, since its last success
    info: dict[str, Any] = field(default_factory=dict)
    ready_at: Optional[float] = None
    last_error: Optional[str] = None
    # statistics
    rows_ok: int = 0
    rows_error: int = 0
    batches: int = 0
    generation_s: float = 0.0
    decode_s: float = 0.0
    crashes: int = 0  # times the replica process died (each death once)
    unit_errors: int = 0  # units that raised an exception in a live replica
    nodes: list[str] = field(default_factory=list)
    bytes_written: int = 0

    def room(self, limit: int) -> bool:
        return (self.state == ACTIVE and len(self.inflight) < limit
                and not any(t.unit.exclusive for t in self.inflight.values()))


MAX_UNITS_PER_REPLICA = 128  # the actor's call threads (Ray makes max_concurrency threads up front)


# Object-store settings (endpoint, credentials) the driver has are passed on to the replicas, which
# write to the same store; a cluster whose workers have their own (e.g. KubeRay with a service
# account) needs none of these set on the driver.
_STORE_ENV_PREFIXES = ("AWS_", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_")


def store_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_STORE_ENV_PREFIXES)}


def call_rows(slots: int, unit_rows: int) -> int:
    """Rows sent in one call to a replica: its slots' worth, at least ``cluster.unit_rows``. Every
    call costs the driver ~1 ms whatever its size, so a GPU replica with 128 slots gets 128 rows at
    a time, not eight calls of 16 (at 25 rows/s per GPU and 800 GPUs that is ~160 calls/s, not 1,250)."""
    return max(1, unit_rows, slots)


def units_for(slots: int, unit_rows: int, units_in_flight: int) -> int:
    """Units a replica should hold so that its engine never runs dry: its slots' worth of rows plus
    one unit queued behind them (at least ``units_in_flight``)."""
    return min(MAX_UNITS_PER_REPLICA, max(units_in_flight, math.ceil(slots / max(1, unit_rows)) + 1))


class Scheduler:
    """Runs every queued row on a pool of replica actors."""

    def __init__(
        self,
        *,
        cfg: ClusterConfig,
        queue: WorkQueue,
        locate: Callable[[str], tuple[str, int]],
        settings: Callable[[str], ReplicaSettings],
        count: int,
        resources: dict[str, float],
        replica_cls: type,
        on_batch: Callable[[BatchResult, dict[str, Any]], None],
        on_error: Callable[[str, str, int], None],
        on_tick: Callable[[], None] = lambda: None,
        feed: Callable[[], bool] = lambda: False,
    ) -> None:
        self.cfg = cfg
        self.queue = queue
        self.locate = locate  # key -> (shard, position): what a replica needs to plan the row
        self.on_batch = on_batch
        self.on_error = on_error
        self.on_tick = on_tick
        self.feed = feed  # tops the queue up; True while more rows may come
        self.inflight: dict[Any, _Task] = {}
        self.first_ready_at: Optional[float] = None
        self.first_ready_cpu: Optional[float] = None  # the driver's CPU time then (its steady cost is after)
        self.first_ready_thread_cpu: Optional[float] = None  # ... and this loop's own thread's
        self.resources = dict(resources)  # num_cpus / num_gpus per replica
        self._no_active_since = time.monotonic()
        self.ledger = start_ledger()
        remote = ray.remote(replica_cls)
        env = store_env()
        self.seats: list[_Seat] = []
        for i in range(count):
            name = f"replica-{i}"
            handle = remote.options(
                **self.resources,
                max_restarts=cfg.max_restarts,
                max_task_retries=0,
                max_concurrency=MAX_UNITS_PER_REPLICA + 1,
                scheduling_strategy="SPREAD",
                **({"runtime_env": {"env_vars": env}} if env else {}),
            ).remote(settings(name), self.ledger)
            seat = _Seat(name, handle)
            self._probe(seat, STARTING)
            self.seats.append(seat)

    # -- replica state -------------------------------------------------------------------------
    def _probe(self, seat: _Seat, state: SeatState) -> None:
        seat.state = state
        if seat.probe is None:
            seat.probe = seat.handle.describe.remote()
            seat.probe_again_at = None

    def _on_probe(self, seat: _Seat) -> None:
        ref, seat.probe = seat.probe, None
        try:
            info = ray.get(ref)
        except ActorUnavailableError:  # still restarting: ask again shortly
            seat.probe_again_at = time.monotonic() + 0.5
            return
        except Exception as e:  # dead for good (no restarts left), or its model did not load
            self._give_up(seat, error_text(e))
            return
        seat.state, seat.info = ACTIVE, info
        seat.ready_at = seat.ready_at or time.time()
        if self.first_ready_at is None:
            self.first_ready_at, self.first_ready_cpu = seat.ready_at, time.process_time()
            self.first_ready_thread_cpu = time.thread_time()
        if info.get("node") and (not seat.nodes or seat.nodes[-1] != info["node"]):
            seat.nodes.append(info["node"])
        log.info("%s ready on %s (%s)", seat.name, info.get("host"), info.get("device"))

    def _give_up(self, seat: _Seat, reason: str) -> None:
        if seat.state == GONE:
            return
        log.warning("%s is given up: %s", seat.name, reason)
        self._release(seat, reason)
        seat.state, seat.last_error, seat.probe, seat.probe_again_at = GONE, reason, None, None
        try:
            ray.kill(seat.handle, no_restart=True)
        except Exception:  # already dead
            pass

    def _started_rows(self, seat: _Seat) -> Optional[set[str]]:
        """The rows the seat's dead process had started (None when the ledger cannot say)."""
        try:
            return set(ray.get(self.ledger.take.remote(seat.name, seat.info.get("pid")), timeout=30))
        except Exception as e:
            log.warning("the row ledger did not answer (%s): every row %s held is charged", error_text(e), seat.name)
            return None

    def _release(self, seat: _Seat, reason: str) -> None:
        """The seat's process is gone: every unit it held ends here. Rows it had started get one
        more attempt (or are given up); rows it never started go back to the queue uncharged."""
        if not seat.inflight:
            return
        started = self._started_rows(seat)
        charged: list[str] = []
        for gen, task in list(seat.inflight.items()):
            self._drop(gen, task)
            remaining = [k for k in task.unit.keys if k in task.remaining]
            hit = remaining if started is None else [k for k in remaining if k in started]
            self.queue.give_back(task.unit, [k for k in remaining if k not in hit])
            charged += hit
        self._charge(charged, reason)

    # -- dispatch ------------------------------------------------------------------------------
    def _take(self, seat: _Seat, rows: int) -> Optional[Unit]:
        """The next unit for the seat, with following queued units merged in up to ``rows`` rows (a
        lone retry is never merged: it runs by itself)."""
        unit = self.queue.take(replica_idle=not seat.inflight)
        if unit is None or unit.exclusive:
            return unit
        keys = list(unit.keys)
        while len(keys) < rows:
            more = self.queue.take(replica_idle=False, rows=rows - len(keys))
            if more is None:
                break
            keys += more.keys
        return unit if len(keys) == len(unit.keys) else Unit(unit.uid, keys)

    def _dispatch(self) -> None:
        attempts = self.queue.attempts
        for seat in self.seats:
            slots = int(seat.info.get("slots") or 0)
            rows = call_rows(slots, self.cfg.unit_rows)
            limit = units_for(slots, rows, self.cfg.units_in_flight)
            while seat.room(limit):
                unit = self._take(seat, rows)
                if unit is None:
                    break
                # the replica plans the rows itself: a unit is only where each row is
                items = [(key, *self.locate(key)) for key in unit.keys]
                tries = {key: attempts[key] for key in unit.keys if key in attempts}
                gen = seat.handle.run_unit.remote(items, tries)
                task = _Task(unit, seat, set(unit.keys))
                seat.inflight[gen] = self.inflight[gen] = task

    # -- results -------------------------------------------------------------------------------
    def _drop(self, gen: Any, task: _Task) -> None:
        self.inflight.pop(gen, None)
        task.seat.inflight.pop(gen, None)

    def _charge(self, keys: list[str], reason: str) -> None:
        """Count one attempt for each row; rows at ``max_attempts`` become errors, the rest are re-queued."""
        for key in self.queue.failed(keys):
            n = self.queue.attempts[key]
            self.on_error(key, f"replica failed {n} times while generating this row (last: {reason})", n)

    def _on_generator(self, gen: Any) -> None:
        task = self.inflight[gen]
        seat = task.seat
        try:
            result: BatchResult = ray.get(next(gen))
        except StopIteration:
            self._drop(gen, task)
            if task.remaining:  # should not happen: the replica ended the unit early
                self._charge(sorted(task.remaining, key=task.unit.keys.index),
                             "the replica returned without finishing its unit")
            return
        except RayTaskError as e:  # the unit raised; the replica process lives on
            reason = error_text(e)
            seat.unit_errors += 1
            seat.unit_errors_in_a_row += 1
            log.warning("%s: a unit failed with %d rows left: %s", seat.name, len(task.remaining), reason)
            self._drop(gen, task)
            self._charge(sorted(task.remaining, key=task.unit.keys.index), reason)
            if seat.unit_errors_in_a_row >= self.cfg.max_replica_failures:
                self._give_up(seat, f"{seat.unit_errors_in_a_row} units failed in a row; last: {reason}")
            return
        except Exception as e:  # the process died (or its node left): one death, whatever it held
            reason = error_text(e)
            seat.crashes += 1
            log.warning("%s died with %d rows in flight: %s", seat.name,
                        sum(len(t.remaining) for t in seat.inflight.values()), reason)
            self._release(seat, reason)
            self._probe(seat, PROBING)  # Ray restarts it unless its restarts are used up
            return
        seat.unit_errors_in_a_row = 0
        delivered = result.keys + [key for key, _ in result.fatal]
        if not task.remaining.issuperset(delivered):  # only rows this unit still owes count
            result = result.only(task.remaining)
            delivered = result.keys + [key for key, _ in result.fatal]
        task.remaining.difference_update(delivered)
        seat.batches += 1
        seat.generation_s += result.generation_s
        seat.decode_s += result.decode_s
        seat.rows_ok += result.ok
        seat.rows_error += result.failed + result.refused
        seat.bytes_written += result.audio_bytes
        self.on_batch(result, seat.info)

    # -- the loop ------------------------------------------------------------------------------
    def _check_health(self) -> None:
        now = time.monotonic()
        if any(s.state == ACTIVE for s in self.seats):
            self._no_active_since = now
            return
        waiting = [s for s in self.seats if s.state in (STARTING, PROBING)]
        if not waiting:
            reasons = "; ".join(f"{s.name}: {s.last_error}" for s in self.seats if s.last_error)
            left = len(self.queue)
            raise PipelineError(f"no replica is left to run the remaining {left} rows. {reasons}")
        if now - self._no_active_since > self.cfg.start_timeout_s:
            raise PipelineError(
                f"no replica was ready for {self.cfg.start_timeout_s:.0f} s (cluster.start_timeout_s): each asks "
                f"for {self.resources}, the cluster has {ray.available_resources()} free"
            )

    def run(self) -> None:
        """Until every queued row is finished or given up."""
        try:
            while self.feed() or len(self.queue) or self.inflight:
                now = time.monotonic()
                for seat in self.seats:
                    if seat.probe_again_at is not None and seat.probe_again_at <= now:
                        self._probe(seat, seat.state)
                self._dispatch()
                probes = {s.probe: s for s in self.seats if s.probe is not None}
                waitables = [*self.inflight, *probes]
                if not waitables:
                    time.sleep(0.05)  # only replicas waiting to be asked again
                    ready = []
                else:
                    ready, _ = ray.wait(waitables, num_returns=1, timeout=1.0)
                for obj in ready:
                    if obj in probes:
                        self._on_probe(probes[obj])
                    elif obj in self.inflight:
                        self._on_generator(obj)
                self._check_health()
                self.on_tick()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop every replica actor and the ledger."""
        for handle in [s.handle for s in self.seats] + [self.ledger]:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:
                pass

    # -- statistics ----------------------------------------------------------------------------
    def replica_stats(self, end: float) -> dict[str, dict[str, Any]]:
        """Per replica: rows, batches, crashes, unit errors, node(s), device and busy fraction."""
        out = {}
        for s in self.seats:
            alive = (end - s.ready_at) if s.ready_at else 0.0
            out[s.name] = {
                "state": s.state.value, "host": s.info.get("host"), "device": s.info.get("device"),
                "nodes": s.nodes, "rows_ok": s.rows_ok, "rows_error": s.rows_error, "batches": s.batches,
                "crashes": s.crashes, "unit_errors": s.unit_errors, "slots": s.info.get("slots"),
                "generation_s": round(s.generation_s, 3), "write_s": round(s.decode_s, 3),
                "bytes_written": s.bytes_written,
                "busy_fraction": round(min(1.0, s.generation_s / alive), 3) if alive > 0 else 0.0,
                "last_error": s.last_error,
            }
        return out
