"""The compiled AVX2 CPU matmul agrees with torch."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dia_model import Dia
from dia_model.nn import cpu_kernels
from dia_model.nn.cpu_kernels import avx2_linear, unavailable_reason

kernel = avx2_linear()
needs_kernel = pytest.mark.skipif(
    kernel is None, reason=f"the AVX2 CPU kernel is not used here: {unavailable_reason()}; torch matmul is used"
)


def test_a_reason_exactly_when_the_kernel_is_unavailable():
    reason = unavailable_reason()
    assert (reason is None) == (kernel is not None), reason
    assert reason is None or reason.strip()


@pytest.mark.parametrize(
    ("env", "machine", "capability", "flags", "expected"),
    [
        ({"DIA_CPU_KERNELS": "0"}, "x86_64", "AVX2", {"avx2", "fma", "f16c"}, "DIA_CPU_KERNELS=0"),
        ({}, "aarch64", "DEFAULT", set(), "not an x86-64 CPU (aarch64)"),
        ({}, "x86_64", "AVX512", {"avx2", "fma", "f16c", "avx512f", "avx512_bf16"}, "native bf16 (avx512_bf16)"),
        ({}, "x86_64", "AVX512", {"avx2", "fma", "f16c", "avx512f"}, "has AVX-512"),
        ({}, "x86_64", "DEFAULT", {"avx", "f16c"}, "lacks AVX2 and FMA"),
        ({"ATEN_CPU_CAPABILITY": "default"}, "x86_64", "DEFAULT", {"avx2", "fma", "f16c"},
         "ATEN_CPU_CAPABILITY=default sets"),
        ({}, "x86_64", "AVX2", {"avx2", "fma"}, "lacks F16C"),
        ({}, "x86_64", "AVX2", {"avx2", "fma", "f16c"}, None),
        ({}, "x86_64", "AVX2", set(), None),  # flags unknown (not Linux): torch's AVX2 check decides
    ],
)
def test_policy_reason_names_the_cause(monkeypatch, env, machine, capability, flags, expected):
    for name in ("DIA_CPU_KERNELS", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cpu_kernels.platform, "machine", lambda: machine)
    monkeypatch.setattr(cpu_kernels.torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(cpu_kernels, "_cpu_flags", lambda: set(flags))
    reason = cpu_kernels._policy_reason()
    assert reason is None if expected is None else expected in reason, reason


def test_toolchain_reason_names_a_missing_compiler(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    reason = cpu_kernels._toolchain_reason()
    assert reason is not None and "no C++ compiler" in reason and "no-such-c++-compiler" in reason


def test_build_error_summary_keeps_the_compiler_error():
    e = RuntimeError("Error building extension 'x': [1/2] c++ -c a.cpp\nFAILED: a.o\n"
                     "a.cpp:3:1: error: expected ';' before '}' token\nninja: build stopped")
    summary = cpu_kernels._error_summary(e)
    assert summary.startswith("RuntimeError: Error building extension") and "expected ';'" in summary
    assert "\n" not in summary


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows", [1, 2, 7, 8, 9, 33])
@pytest.mark.parametrize("features", [64, 203])  # 203: a tail that is not a multiple of 8
def test_matches_fp32_reference(dtype, rows, features):
    g = torch.Generator().manual_seed(rows * features)
    w = (torch.randn(96, features, generator=g) * 0.05).to(dtype)
    x = torch.randn(3, rows, features, generator=g)
    expected = F.linear(x, w.float())
    got = kernel(x, w)
    assert got.shape == (3, rows, 96) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert kernel(x.to(dtype), w).dtype == dtype


@needs_kernel
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_model_uses_kernel_and_agrees_with_torch(dtype):
    model = Dia.from_pretrained(Path(__file__).parent / "data" / "golden" / "checkpoint-0626", dtype=dtype,
                                load_codec=False)
    assert model.model.decoder.head.matmul is not torch.nn.functional.linear
    text = "[S1] Half precision on a CPU. [S2] Same numbers."
    fast = model.generate(text, temperature=0.0, max_new_frames=8)[0].codes
    model.model.use_matmul(F.linear)
    slow = model.generate(text, temperature=0.0, max_new_frames=8)[0].codes
    if dtype == "float32":
        assert (fast == slow).all()
    else:
        assert (fast == slow).mean() > 0.8  # both round to bf16 per layer; an occasional near-tie may flip


@needs_kernel
def test_a_build_lock_left_by_a_killed_process_does_not_hang_the_next(tmp_path):
    """torch's ``lock`` file outlives a process killed mid-build; the next import must not wait on it."""
    cached = cpu_kernels._build_dir()
    folder = tmp_path / f"dia-torch{torch.__version__}" / "dia_avx2_linear"
    shutil.copytree(cached, folder)  # the built kernel, so the child only loads it
    (folder / "dia-build.flock").unlink(missing_ok=True)
    (folder / "lock").touch()  # as a killed build leaves it
    child = subprocess.run(
        [sys.executable, "-c", "from dia_model.nn.cpu_kernels import avx2_linear; assert avx2_linear() is not None"],
        env={**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)},
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert not (folder / "lock").exists()
