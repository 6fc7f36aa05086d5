"""A compiled bf16/fp16 matmul for AVX2 CPUs, built on first use (falls back to torch).

PyTorch's bf16 matmul on CPUs without native bf16 instructions is slower than fp32
(measured 4-20x here), which would make bf16 pointless on such machines.  The kernel
in ``kernels/half_linear.cpp`` widens weights to fp32 in registers, so a decode step
streams the half-precision weights once.  It is compiled with the system C++ compiler
through ``torch.utils.cpp_extension`` (cached across runs); without a compiler, on
other CPUs, or with ``DIA_CPU_KERNELS=0``, plain ``F.linear`` is used.
"""

from __future__ import annotations

import os
import platform
import warnings
from pathlib import Path
from typing import Callable

import torch

_SOURCE = Path(__file__).parent / "kernels" / "half_linear.cpp"
_loaded: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
_tried = False


def half_linear() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The compiled ``y = x @ w.T`` for half-precision ``w``, or None where it does not apply."""
    global _loaded, _tried
    if _tried:
        return _loaded
    _tried = True
    if os.environ.get("DIA_CPU_KERNELS", "1") == "0":
        return None
    if platform.machine().lower() not in ("x86_64", "amd64") or torch.backends.cpu.get_cpu_capability() != "AVX2":
        return None  # AVX-512/AMX parts have fast native bf16 paths in oneDNN
    try:
        from torch.utils.cpp_extension import load

        module = load(
            name="dia_half_linear",
            sources=[str(_SOURCE)],
            extra_cflags=["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
        _loaded = module.half_linear
    except Exception as e:  # no compiler, no ninja, ...: correct but slower
        warnings.warn(f"dia_model: bf16/fp16 CPU kernel unavailable ({type(e).__name__}: {e}); using torch matmul")
    return _loaded
