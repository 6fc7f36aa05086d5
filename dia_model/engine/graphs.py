"""CUDA graphs for the slot engine's decode step: captured once per (attention length bucket, top-k
bound) and replayed, so a step costs one launch instead of ~40 per layer.

The step (``slot_state.SlotState.step``) updates every state tensor in place and never asks the host
anything, so a replay runs the same kernels on the same addresses with whatever requests the
admissions wrote there. A graph goes stale only when a state tensor is reallocated (the
cross-attention cache growing for a longer script); ``SlotState.layout`` says when, and the
graphs are captured again. If capture fails for any reason, the eager step takes over for the
rest of the stream and the reason is kept in ``fallback`` (the results are the same either way).

A capture happens mid-stream, while the codec thread may be decoding on its own stream. Two guards
keep that thread from invalidating it: the capture runs in ``thread_local`` error mode (only this
thread's unsafe CUDA calls count, not the codec thread's allocations), and it holds ``quiet``, the
lock the codec thread holds around each decode, so no codec work is issued while it captures.
"""

from __future__ import annotations

import contextlib
import threading
import warnings

import torch
from torch import Tensor

from .slot_state import SlotState

# The step's state: what warm-up runs advance and what must be put back before the real step.
_STATE = ("timeline", "t", "countdown", "finished_at", "ended_by_eos", "live")


class GraphedStep:
    """``SlotState.step`` through captured CUDA graphs (CUDA only)."""

    def __init__(self, state: SlotState, quiet: threading.Lock | None = None):
        if state.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.state = state
        self.quiet = quiet  # held by the codec thread around each decode (see the module's note)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self.layout = state.layout
        self.pool = torch.cuda.graph_pool_handle()
        self.captures = 0
        self.replays = 0
        self.fallback: str | None = None

    def __call__(self, length: int, k_max: int) -> Tensor:
        if self.fallback is not None:
            return self.state.step(length, k_max)
        if self.state.layout != self.layout:
            self.graphs.clear()
            self.layout = self.state.layout
        entry = self.graphs.get((length, k_max))
        if entry is None:
            try:
                entry = self.graphs[(length, k_max)] = self._capture(length, k_max)
            except Exception as e:  # a capture problem must not cost the stream: the eager step is exact
                self.fallback = f"{type(e).__name__}: {e}"
                warnings.warn(f"CUDA graph capture failed, decoding eagerly from here on ({self.fallback})",
                              RuntimeWarning, stacklevel=2)
                torch.cuda.synchronize(self.state.device)
                return self.state.step(length, k_max)
        graph, finished = entry
        graph.replay()
        self.replays += 1
        return finished

    def _capture(self, length: int, k_max: int) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        """Warm up on a side stream (lazy cuBLAS/allocator set-up must not happen inside a capture),
        put the state back as it was, then capture one step."""
        with self.quiet if self.quiet is not None else contextlib.nullcontext():
            return self._capture_quietly(length, k_max)

    def _capture_quietly(self, length: int, k_max: int) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        state = self.state
        saved = {name: getattr(state, name).clone() for name in _STATE}
        side = torch.cuda.Stream(state.device)
        side.wait_stream(torch.cuda.current_stream(state.device))
        with torch.cuda.stream(side):
            state.step(length, k_max)
        torch.cuda.current_stream(state.device).wait_stream(side)
        for name, value in saved.items():  # warm-up K/V writes are the ones the real step makes again
            getattr(state, name).copy_(value)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            finished = state.step(length, k_max)
        self.captures += 1
        return graph, finished


__all__ = ["GraphedStep"]
