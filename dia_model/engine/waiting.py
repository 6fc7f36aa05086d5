"""The requests a stream holds ready beyond its free slots, and which of them takes the next slot.

A stream whose source has ended finishes when its last row does, so a long row that arrives late
leaves every other slot idle while it runs alone (on the bench's 3-30 s mix that tail is a third
of the steps). Holding a few requests ready (the *lookahead*) and seating the longest first
(largest timeline, then longest script: Dia's audio length follows the script's) lets the short
ones fill in around the long ones at the end. So that no request waits forever behind longer
ones, a request is passed over at most ``lookahead`` times; then it goes next.

Host-side bookkeeping only; nothing here touches the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Waiting(Generic[T]):
    item: T
    size: tuple[int, int]
    arrival: int
    passed: int = 0  # how many later arrivals took a slot before this one


class WaitingRoom(Generic[T]):
    """Checked requests waiting for a slot: longest first, each passed over at most ``limit`` times."""

    def __init__(self, limit: int):
        if limit < 0:
            raise ValueError(f"lookahead must be >= 0, got {limit}")
        self.limit = limit
        self._items: list[_Waiting[T]] = []  # in arrival order
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, timeline_frames: int, script_bytes: int) -> None:
        self._items.append(_Waiting(item, (timeline_frames, script_bytes), self._arrivals))
        self._arrivals += 1

    def take(self) -> T:
        """The request for the next free slot: the oldest one if it was passed over ``limit`` times
        already, else the longest (the earliest of equals)."""
        if not self._items:
            raise IndexError("no request is waiting")
        oldest = self._items[0]
        if oldest.passed >= self.limit:
            chosen = 0
        else:
            chosen = max(range(len(self._items)), key=lambda i: (self._items[i].size, -i))
        for earlier in self._items[:chosen]:
            earlier.passed += 1
        return self._items.pop(chosen).item


__all__ = ["WaitingRoom"]
