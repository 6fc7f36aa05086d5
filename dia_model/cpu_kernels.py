"""A compiled matmul for AVX2 CPUs (bf16 / fp16 / fp32 weights), built on first use.

PyTorch's bf16 matmul on CPUs without native bf16 instructions is slower than fp32
(measured 3-4x slower than this kernel here, aten::mm was 90% of a bf16 decode step),
and its fp32 matmul with the few rows of a decode step reads memory at about half the
machine's bandwidth.  ``kernels/avx2_linear.cpp`` widens weights to fp32 in registers
and keeps several FMA chains in flight, so a decode step streams the weights once at
memory speed.  It is compiled with the system C++ compiler through
``torch.utils.cpp_extension`` (cached across runs); without a compiler, on other CPUs,
or with ``DIA_CPU_KERNELS=0``, plain ``F.linear`` is used.
"""

from __future__ import annotations

import os
import platform
import warnings
from pathlib import Path
from typing import Callable

import torch

_SOURCE = Path(__file__).parent / "kernels" / "avx2_linear.cpp"
_loaded: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
_tried = False


FP32_MAX_ROWS = 16  # above this, MKL's fp32 GEMM beats the kernel (measured 84 vs 46 GFLOP/s at 180 rows)


def cpu_matmul() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """``matmul(x, w)`` for a CPU model: the kernel where it wins, torch elsewhere; None: torch only."""
    kernel = avx2_linear()
    if kernel is None:
        return None

    def matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if w.dtype == torch.float32 and x.numel() > FP32_MAX_ROWS * x.shape[-1]:
            return torch.nn.functional.linear(x, w)
        return kernel(x, w)

    return matmul


def avx2_linear() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The compiled ``y = x @ w.T`` (``w`` contiguous bf16/fp16/fp32), or None where it does not apply."""
    global _loaded, _tried
    if _tried:
        return _loaded
    _tried = True
    if os.environ.get("DIA_CPU_KERNELS", "1") == "0":
        return None
    if platform.machine().lower() not in ("x86_64", "amd64") or torch.backends.cpu.get_cpu_capability() != "AVX2":
        return None  # AVX-512/AMX parts have fast native paths in oneDNN/MKL
    try:
        from torch.utils.cpp_extension import load

        module = load(
            name="dia_avx2_linear",
            sources=[str(_SOURCE)],
            extra_cflags=["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
        _loaded = module.avx2_linear
    except Exception as e:  # no compiler, no ninja, ...: correct but slower
        warnings.warn(f"dia_model: AVX2 CPU kernel unavailable ({type(e).__name__}: {e}); using torch matmul")
    return _loaded
