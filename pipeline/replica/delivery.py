"""Sending finished rows back to the driver: batched by time (rows finishing within
``DELIVERY_WINDOW_S`` of the first travel together, at most ``DELIVERY_ROWS``), as metadata tables
the driver appends without reading a row, with one tally per row and the replica's busy time."""
from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from typing import Any, Callable, Iterator, Optional

from ..planning.rows import RowSpec
from ..records.schema import outcome_record, records_table
from .results import BatchResult, RowResult, RowTally, ipc_bytes

# Each delivery costs the driver a fixed ~0.3 ms, so a replica finishing 25 rows a second must not
# send them one by one when hundreds of replicas share one driver.
DELIVERY_WINDOW_S = 1.0
DELIVERY_ROWS = 512


def batches(outbox: "queue.Queue[RowResult]", waiting: int,
            engine_error: Callable[[], Optional[BaseException]]) -> Iterator[list[RowResult]]:
    """The ``waiting`` results of one unit as they arrive in ``outbox``, a time window at a time.
    Raises the engine's error if it stops while rows are still owed."""
    while waiting:
        try:
            got = [outbox.get(timeout=1.0)]
        except queue.Empty:
            error = engine_error()
            if error is not None:
                raise error
            continue
        deadline = time.monotonic() + DELIVERY_WINDOW_S
        while len(got) < min(waiting, DELIVERY_ROWS):
            try:
                got.append(outbox.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        waiting -= len(got)
        yield got


class Delivery:
    """Builds BatchResults; owns the busy-time accounting between deliveries."""

    def __init__(self, identity: dict[str, Any], model_info: dict[str, Any], embed_audio: bool,
                 busy: Callable[[], tuple[float, float]], slots: Callable[[], int]) -> None:
        self.identity, self.model_info, self.embed_audio = identity, model_info, embed_audio
        self._busy, self._slots = busy, slots  # (busy s, write s) since the start; the engine's slots
        self._reported = (0.0, 0.0)
        self._lock = threading.Lock()  # guards _reported (run_unit calls deliver side by side)

    def batch(self, results: list[RowResult], specs: dict[str, RowSpec], carried: dict[str, Any],
              attempts: dict[str, int]) -> BatchResult:
        """Rows as metadata tables (one per shard) and tallies; a fatal row has no record."""
        with self._lock:
            busy, write = self._busy()
            last_busy, last_write = self._reported
            self._reported = (busy, write)
        slots = self._slots()
        by_shard: dict[str, list[tuple[dict[str, Any], Optional[bytes]]]] = defaultdict(list)
        tallies: list[RowTally] = []
        fatal: list[tuple[str, str]] = []
        batch_rows = slots or len(results)
        for r in results:
            if r.fatal:  # not recorded: the row is redone when the job is resumed
                fatal.append((r.key, r.error or "write failed"))
                continue
            row = specs[r.key]
            by_shard[row.shard].append((outcome_record(row, r, self.model_info, self.identity,
                                                       attempts.get(r.key, 0), batch_rows), r.audio))
            # a rejected row's audio is written too; it counts as not ok
            tallies.append(RowTally(r.key, r.kind, (r.duration_s or 0.0) if r.ok else 0.0,
                                    (r.audio_bytes or 0) if r.ok else 0))
        tables = {shard: ipc_bytes(records_table([rec for rec, _ in items], carried[shard],
                                                 [audio for _, audio in items] if self.embed_audio else None))
                  for shard, items in by_shard.items()}
        return BatchResult(tables, tallies, dict(self.identity), fatal=fatal, generation_s=busy - last_busy,
                           decode_s=write - last_write, slots=slots)
