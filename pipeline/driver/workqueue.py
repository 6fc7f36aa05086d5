"""The driver-side queue of work units, with per-row attempt counts and poison-row isolation.

Replicas pull units; nothing is split up front. When a replica dies, the rows it had started come
back with one more attempt (see ``ledger.py``); rows it held but had not started come back free. Rows near their attempt limit are retried alone, as *exclusive* units that
run on an otherwise idle replica, so the next death is pinned on the one row that caused it and
innocent neighbours are never charged for it.
"""
from __future__ import annotations

import itertools
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence


@dataclass
class Unit:
    """A group of rows handed to one replica at once."""

    uid: int
    keys: list[str]
    exclusive: bool = False  # run alone on a replica with nothing else in flight


class WorkQueue:
    """Units of row keys waiting for a replica."""

    def __init__(self, keys: Sequence[str], unit_rows: int, max_attempts: int) -> None:
        self.unit_rows = max(1, unit_rows)
        self.max_attempts = max(1, max_attempts)
        # from this many deaths on, a row is retried alone
        self.isolate_after = max(1, self.max_attempts - 1)
        self.attempts: dict[str, int] = defaultdict(int)
        self._uids = itertools.count()
        self._normal: deque[Unit] = deque()
        self._normal_rows = 0  # rows in _normal, kept as it changes (the driver asks often)
        self._alone: deque[Unit] = deque()
        self.extend(keys)

    def extend(self, keys: Sequence[str]) -> None:
        """More rows at the back of the queue (the next shard's)."""
        self._normal.extend(self._chunk(keys))
        self._normal_rows += len(keys)

    def _push_front(self, keys: Sequence[str]) -> None:
        for part in reversed(list(self._chunk(keys))):
            self._normal.appendleft(part)
        self._normal_rows += len(keys)

    def _chunk(self, keys: Sequence[str]) -> Iterable[Unit]:
        for i in range(0, len(keys), self.unit_rows):
            yield Unit(next(self._uids), list(keys[i:i + self.unit_rows]))

    def __len__(self) -> int:
        return self._normal_rows + len(self._alone)

    @property
    def has_exclusive(self) -> bool:
        """Whether a lone retry is waiting (replicas then drain so that one can take it)."""
        return bool(self._alone)

    def take(self, replica_idle: bool, rows: Optional[int] = None) -> Optional[Unit]:
        """The next unit for a replica: a lone retry if the replica is idle, else a normal unit (its
        first ``rows`` rows when it holds more; the rest stays at the front)."""
        if self._alone:
            return self._alone.popleft() if replica_idle else None
        if not self._normal:
            return None
        unit = self._normal.popleft()
        if rows is not None and len(unit.keys) > rows:
            self._normal.appendleft(Unit(next(self._uids), unit.keys[rows:]))
            unit = Unit(unit.uid, unit.keys[:rows])
        self._normal_rows -= len(unit.keys)
        return unit

    def give_back(self, unit: Unit, keys: Optional[Sequence[str]] = None) -> None:
        """Return rows of a unit that never started (e.g. its replica died first), with no attempt
        counted: ``keys`` (default: the whole unit) go to the front of the queue, a lone retry stays one."""
        keys = list(unit.keys if keys is None else keys)
        if not keys:
            return
        if unit.exclusive:
            self._alone.appendleft(Unit(next(self._uids), keys, exclusive=True))
            return
        self._push_front(keys)

    def failed(self, keys: Iterable[str]) -> list[str]:
        """Rows whose replica died: count the attempt and re-queue them.

        Returns the rows that reached ``max_attempts``; the caller marks those as errors.
        """
        given_up, again, alone = [], [], []
        for key in keys:
            self.attempts[key] += 1
            n = self.attempts[key]
            if n >= self.max_attempts:
                given_up.append(key)
            elif n >= self.isolate_after:
                alone.append(key)
            else:
                again.append(key)
        self._push_front(again)
        self._alone.extend(Unit(next(self._uids), [k], exclusive=True) for k in alone)
        return given_up
