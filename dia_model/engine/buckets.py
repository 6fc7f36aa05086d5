"""The bucket sizes that bound how many shapes the slot engine's step comes in.

Self-attention reads the cache up to the longest live position and cross-attention holds the
longest live script, each rounded up to a bucket; on CUDA the buckets are coarser (one captured
graph per attention length and top-k bound).
"""

from __future__ import annotations

import torch

LENGTH_BUCKET = 64  # self-attention reads the cache up to the longest live position, rounded up to this
CPU_LENGTH_BUCKET = 16  # ... finer on a CPU (no captured graphs): every slot reads that length, so less is spent
TEXT_BUCKET = 64  # cross-attention keys are held for the longest live script, rounded up to this
CUDA_LENGTH_BUCKET = 256  # on CUDA the attention length comes in fewer, coarser buckets: one graph each
CUDA_TOP_K_BUCKET = 64  # ... and the top-k bound is rounded up to a power of two from this


def round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def k_bound(k: int, device: torch.device, vocab: int) -> int:
    """The top-k bound a step is run with: as is on a CPU, a power of two (>= 64) on CUDA, so a sweep
    of top-k values needs few captured graphs (a larger bound gives the same draws)."""
    if device.type != "cuda":
        return k
    bound = CUDA_TOP_K_BUCKET
    while bound < k:
        bound *= 2
    return min(bound, vocab)


__all__ = ["LENGTH_BUCKET", "CPU_LENGTH_BUCKET", "TEXT_BUCKET", "CUDA_LENGTH_BUCKET", "CUDA_TOP_K_BUCKET", "round_up", "k_bound"]
