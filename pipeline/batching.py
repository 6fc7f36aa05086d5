"""Grouping rows into batches of similar expected length, so lock-step decoding wastes little."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, TypeVar

T = TypeVar("T")


def plan_batches(items: Sequence[T], length: Callable[[T], int], batch_size: int,
                 frame_budget: Optional[int] = None) -> list[list[T]]:
    """Split ``items`` into batches, longest first.

    Rows are sorted by expected length (frames), then packed greedily: a batch takes the next row
    while it holds fewer than ``batch_size`` rows and its padded cost (rows x longest row) stays
    within ``frame_budget``. A row longer than the budget still gets a batch of its own.
    """
    ordered = sorted(items, key=length, reverse=True)
    batches: list[list[T]] = []
    current: list[T] = []
    longest = 0
    for item in ordered:
        n = length(item)
        if current:
            rows, top = len(current) + 1, max(longest, n)
            if rows > batch_size or (frame_budget is not None and rows * top > frame_budget):
                batches.append(current)
                current, longest = [], 0
        current.append(item)
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches
