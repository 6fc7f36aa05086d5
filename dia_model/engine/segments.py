"""Which cache rows read how far: splitting the attention reads of an eager (CPU) step by slot.

One attention call reads every slot's cache up to the furthest live position, so with slots at
mixed positions most of what it reads is masked off (in a full stream of 3-30 s rows, about half).
Contiguous runs of slots can each read only up to their own furthest position instead; every extra
call costs a fixed overhead, so runs are chosen to minimise (calls x overhead + cache positions read
summed over rows), an exact dynamic programme over the slot order (16 slots: 136 candidate runs).
Cross-attention is split the same way by each slot's script length (the cache holds the longest
live script for every slot). A captured CUDA graph keeps one shape instead.
"""

from __future__ import annotations

from .buckets import round_up

Segments = list[tuple[int, int, int]]  # (first_row, end_row, length) runs covering a step's cache rows

CALL_COST_BYTES = 1 << 20  # an attention call's fixed cost on a CPU, as cache bytes read (one K/V position
# of a row is 2 x kv_heads x head_dim x 4 bytes); the best of 0.25-4 MiB measured on tiny and 100m shapes


def plan_runs(need: list[int], call_cost: float) -> Segments:
    """``need[s]``: how far slot s must read -> runs ``(first_row, end_row, length)`` over cache rows
    (two per slot: unconditional and conditional) covering every row in order, ``length`` the
    run's largest need, minimising calls x ``call_cost`` + row-positions read."""
    n = len(need)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        longest = 0
        for start in range(end - 1, -1, -1):
            longest = max(longest, need[start])
            cost = best[start] + call_cost + 2 * (end - start) * longest
            if cost < best[end]:
                best[end], cut[end] = cost, start
    runs = []
    end = n
    while end:
        start = cut[end]
        runs.append((2 * start, 2 * end, max(need[start:end])))
        end = start
    return runs[::-1]


def attention_segments(positions: list[int], length_bucket: int, capacity: int, call_cost: float) -> Segments:
    """Self-attention runs: ``positions[s]`` slot s's input position (0 for a free slot); each run
    reads past its furthest position, in ``length_bucket`` multiples, at most ``capacity``."""
    return plan_runs([min(capacity, round_up(p + 2, length_bucket)) for p in positions], call_cost)


def cross_segments(script_bytes: list[int], text_bucket: int, capacity: int, call_cost: float) -> Segments:
    """Cross-attention runs: ``script_bytes[s]`` the length of slot s's script (0 for a free slot,
    whose row attends to key 0); each run reads its longest script, in ``text_bucket`` multiples."""
    return plan_runs([min(capacity, round_up(max(1, b), text_bucket)) for b in script_bytes], call_cost)


__all__ = ["Segments", "plan_runs", "attention_segments", "cross_segments", "CALL_COST_BYTES"]
