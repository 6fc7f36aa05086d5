"""A compiled matmul for AVX2 CPUs (bf16 / fp16 / fp32 weights), built on first use.

PyTorch's bf16 matmul on CPUs without native bf16 instructions is slower than fp32
(measured 3-4x slower than this kernel here, aten::mm was 90% of a bf16 decode step),
and its fp32 matmul with the few rows of a decode step reads memory at about half the
machine's bandwidth.  ``kernels/avx2_linear.cpp`` widens weights to fp32 in registers
and keeps several FMA chains in flight, so a decode step streams the weights once at
memory speed.  It is compiled with the system C++ compiler through
``torch.utils.cpp_extension`` (cached across runs, in a folder per torch version); without a compiler, on other CPUs,
or with ``DIA_CPU_KERNELS=0``, plain ``F.linear`` is used, and ``unavailable_reason()``
says which of these applies.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import shutil
import warnings
from pathlib import Path
from typing import Callable

import torch

try:
    import fcntl
except ImportError:  # not POSIX: torch's own lock file only
    fcntl = None  # type: ignore[assignment]

_SOURCE = Path(__file__).parent / "kernels" / "avx2_linear.cpp"
_loaded: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
_reason: str | None = None  # why _loaded is None, once tried
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


def unavailable_reason() -> str | None:
    """Why the compiled kernel is not used on this machine, in words; None where it is.

    Builds the kernel on the first call (as :func:`avx2_linear` does), so a failed build reports its error.
    """
    avx2_linear()
    return _reason


def avx2_linear() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The compiled ``y = x @ w.T`` (``w`` contiguous bf16/fp16/fp32), or None where it does not apply
    (:func:`unavailable_reason` says why)."""
    global _loaded, _reason, _tried
    if _tried:
        return _loaded
    _tried = True
    _reason = _policy_reason()
    if _reason is not None:
        return None
    # torch runs `ninja` from PATH; the pip package's copy is not there when the venv is not activated
    ninja_dir, path = _ninja_dir(), os.environ.get("PATH")
    try:
        from torch.utils.cpp_extension import load

        if ninja_dir:
            os.environ["PATH"] = ninja_dir + os.pathsep + (path or "")
        build_dir = _build_dir()
        with _only_builder(build_dir):
            module = load(
                name="dia_avx2_linear",
                sources=[str(_SOURCE)],
                extra_cflags=["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                build_directory=str(build_dir),
                verbose=False,
            )
        _loaded = module.avx2_linear
    except Exception as e:  # no compiler, no ninja, a failed build, ...: correct but slower
        _reason = _toolchain_reason() or f"building it failed ({_error_summary(e)})"
        warnings.warn(f"dia_model: AVX2 CPU kernel unavailable ({type(e).__name__}: {e}); using torch matmul")
    finally:
        if ninja_dir and path is None:
            os.environ.pop("PATH", None)
        elif ninja_dir:
            os.environ["PATH"] = path
    return _loaded


def _build_dir() -> Path:
    """Where the kernel is built and cached: ``$TORCH_EXTENSIONS_DIR`` (or ~/.cache/torch_extensions),
    one folder per torch version so an upgrade never loads a stale binary."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions"
    folder = base / f"dia-torch{torch.__version__}" / "dia_avx2_linear"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def _only_builder(build_dir: Path):
    """Hold an OS lock on ``build_dir`` while torch builds or loads the kernel there.

    torch guards a build with a plain ``lock`` file that a process killed mid-build leaves behind, and
    every later process then waits on it forever (seen: a test run hung at import).  The kernel frees an
    ``flock`` when its holder dies, so whoever holds it is the only builder and may remove the leftover.
    """
    if fcntl is None:
        yield
        return
    with open(build_dir / "dia-build.flock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            (build_dir / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _policy_reason() -> str | None:
    """Why the kernel does not apply to this machine or setting, before any build (None: it does)."""
    if os.environ.get("DIA_CPU_KERNELS", "1") == "0":
        return "turned off with DIA_CPU_KERNELS=0"
    machine = platform.machine()
    if machine.lower() not in ("x86_64", "amd64"):
        return f"not an x86-64 CPU ({machine}); the kernel is AVX2 code"
    capability = torch.backends.cpu.get_cpu_capability()
    flags = _cpu_flags()
    if capability.startswith("AVX512"):
        # AVX-512/AMX parts have fast native paths in oneDNN/MKL
        native = sorted(flags & {"avx512_bf16", "amx_bf16"})
        if native:
            return (f"the CPU has native bf16 ({', '.join(native)}): PyTorch's oneDNN/MKL matmul is used, "
                    "not this kernel")
        return "the CPU has AVX-512 (PyTorch CPU capability AVX512): PyTorch's AVX-512 matmul is used, not this kernel"
    if capability != "AVX2":
        missing = [f.upper() for f in ("avx2", "fma") if flags and f not in flags]
        forced = os.environ.get("ATEN_CPU_CAPABILITY")
        if forced and not missing:
            return f"ATEN_CPU_CAPABILITY={forced} sets PyTorch's CPU capability to {capability}, not AVX2"
        what = " and ".join(missing) if missing else "AVX2 or FMA"
        return f"the CPU lacks {what} (PyTorch CPU capability {capability})"
    if flags and "f16c" not in flags:
        return "the CPU lacks F16C (needed to widen fp16/bf16 weights)"
    return None


def _toolchain_reason() -> str | None:
    """Why the kernel cannot be built here (None: a compiler and ninja are there); asked after a failed
    build, since a cached build loads without either."""
    from torch.utils.cpp_extension import get_cxx_compiler

    cxx = get_cxx_compiler()
    program = (shlex.split(cxx) or [""])[0]
    if not program or shutil.which(program) is None:
        how = "CXX" if os.environ.get("CXX") else "the default compiler"
        return f"no C++ compiler: {how} {cxx!r} is not on PATH (install g++, or set CXX)"
    if shutil.which("ninja") is None and _ninja_dir() is None:
        return "ninja is not installed (pip install ninja)"
    return None


def _ninja_dir() -> str | None:
    """The folder of the ``ninja`` pip package's program, where there is no ``ninja`` on PATH."""
    if shutil.which("ninja") is not None:
        return None
    try:
        import ninja

        folder = str(ninja.BIN_DIR)
    except (ImportError, AttributeError):
        return None
    return folder if shutil.which("ninja", path=folder) else None


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def _error_summary(e: Exception) -> str:
    """A build error in one line: its first line and the compiler's first ``error`` lines."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    picked = lines[:1] + [line for line in lines[1:] if "error" in line.lower()][:2]
    text = " | ".join(line if len(line) <= 240 else line[:237] + "..." for line in picked)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
