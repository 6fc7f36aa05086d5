"""Slot bookkeeping for the continuous-batching engine: which request sits in which slot, how far
each has got, and which slots are free. Host-side only; the math is in ``slot_state.py``.

The device tells which slots finished through a bool tensor copied to the host without waiting
(``non_blocking`` into pinned memory on CUDA) and read one step later, so the steady-state step
never stalls on a host sync. A finished slot is therefore seen one step late; it has stopped
changing on the device by then, so nothing is lost but that one step of its seat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..types import StreamStats
from .buckets import LENGTH_BUCKET, TEXT_BUCKET, round_up
from .segments import Segments, attention_segments, cross_segments
from .timeline import RowRequest


@dataclass
class Seat:
    """A request in a slot."""

    request_id: Any
    row: RowRequest
    prompt_frames: int
    position: int  # the slot's input position as the host reckons it (at most one step ahead of the device)
    end_tag_applied: bool = False  # whether the script got an end tag (the result says so)


class SlotTable:
    """Seats of ``n`` slots, plus the finished-slot flags in flight from the device."""

    def __init__(self, n: int, capacity: int, device: torch.device, length_bucket: int | None = None,
                 stats: StreamStats | None = None):
        self.n = n
        self.capacity = capacity
        self.length_bucket = length_bucket or LENGTH_BUCKET
        self.seats: list[Optional[Seat]] = [None] * n
        self._pinned = device.type == "cuda"
        self._in_flight: list[tuple[torch.Tensor, Any]] = []  # (host copy, event) of a step's flags
        self._cross_runs: Optional[tuple[int, Segments]] = None  # (text capacity, runs) until the seats change
        # counts steps, slot_steps (slots computed, fewer after a compaction) and busy_slot_steps
        # (those holding a request): the stream's StreamStats, or one of its own
        self.stats = stats if stats is not None else StreamStats()

    # ------------------------------------------------------------------ seats
    def free(self) -> list[int]:
        return [s for s, seat in enumerate(self.seats) if seat is None]

    def occupied(self) -> int:
        return sum(seat is not None for seat in self.seats)

    def seat(self, slot: int, seat: Seat) -> None:
        assert self.seats[slot] is None, f"slot {slot} is taken"
        self.seats[slot] = seat
        self._cross_runs = None

    def release(self, slot: int) -> Seat:
        seat, self.seats[slot] = self.seats[slot], None
        assert seat is not None
        self._cross_runs = None
        return seat

    def compact(self) -> list[int]:
        """Drop the free slots (their flags must all have been collected); -> the kept old slot
        numbers, in their new order: furthest position first, so that runs of neighbouring slots
        read similar lengths (``attention_segments``)."""
        assert not self._in_flight, "collect the finished flags before compacting"
        keep = sorted((s for s, seat in enumerate(self.seats) if seat is not None),
                      key=lambda s: -self.seats[s].position)  # type: ignore[union-attr]
        self.seats = [self.seats[s] for s in keep]
        self.n = len(keep)
        self._cross_runs = None
        return keep

    # ------------------------------------------------------------------ per-step figures
    def attention_length(self) -> int:
        """How much of the cache this step reads: past the furthest live position, in buckets."""
        furthest = max((s.position for s in self.seats if s is not None), default=0)
        return min(self.capacity, round_up(furthest + 2, self.length_bucket))

    def attention_segments(self, call_cost: float) -> Segments:
        """The eager step's self-attention split by runs of slots, each reading to its own furthest
        position (``segments.attention_segments``)."""
        positions = [0 if s is None else s.position for s in self.seats]
        return attention_segments(positions, self.length_bucket, self.capacity, call_cost)

    def cross_segments(self, text_capacity: int, call_cost: float) -> Segments:
        """The eager step's cross-attention split by runs of slots, each reading its longest script
        (planned again only when a seat or the cache's width changes)."""
        if self._cross_runs is None or self._cross_runs[0] != text_capacity:
            scripts = [0 if s is None else len(s.row.script) for s in self.seats]
            self._cross_runs = (text_capacity, cross_segments(scripts, TEXT_BUCKET, text_capacity, call_cost))
        return self._cross_runs[1]

    def top_k_bound(self) -> int:
        return max((s.row.top_k for s in self.seats if s is not None), default=1)

    def advanced(self) -> None:
        """One step ran: every seated slot moved one position (finished ones stay put on the device)."""
        self.stats.steps += 1
        self.stats.slot_steps += self.n
        self.stats.busy_slot_steps += self.occupied()
        for s in self.seats:
            if s is not None:
                s.position = min(s.position + 1, self.capacity - 1)

    # ------------------------------------------------------------------ finished flags
    def post(self, finished: torch.Tensor) -> None:
        """Start copying a step's finished flags to the host without waiting for them."""
        if self._pinned:
            host = torch.empty(finished.shape, dtype=finished.dtype, pin_memory=True)
            host.copy_(finished, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._in_flight.append((host, event))
        else:
            self._in_flight.append((finished, None))

    def collect(self, wait: bool = False) -> list[int]:
        """Slots whose finish has reached the host (all posted flags when ``wait``), oldest step first;
        at most one step is left in flight otherwise."""
        out: list[int] = []
        while self._in_flight and (wait or len(self._in_flight) > 1 or self._ready(self._in_flight[0][1])):
            host, event = self._in_flight.pop(0)
            if event is not None:
                event.synchronize()
            out += [int(i) for i in host.nonzero().flatten().tolist() if self.seats[int(i)] is not None]
        return out

    @staticmethod
    def _ready(event: Any) -> bool:
        return event is None or event.query()
