"""The compiled AVX2 CPU matmul agrees with torch."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dia_model import Dia
from dia_model.cpu_kernels import avx2_linear

kernel = avx2_linear()
pytestmark = pytest.mark.skipif(kernel is None, reason="no AVX2 CPU or no C++ compiler: torch matmul is used")


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
