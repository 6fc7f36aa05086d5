"""The GPU hazards of the code review, checked on a CPU: folded grouped-query attention equals the
enable_gqa call, every attention call of the decode step can take a fused kernel, the accelerator
memory policies decode the same codes, the peak memory of admission and growth (counted on the meta
device) stays under the device the slot sizing assumed, and dia_model imports without soundfile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("t, mask_rows", [(1, 1), (3, 1), (3, None)])
def test_folded_gqa_attention_equals_the_enable_gqa_call(dtype, tol, t, mask_rows):
    from dia_model.nn.model import attend_folded

    torch.manual_seed(0)
    b, hq, hkv, s, d = 6, 16, 4, 37, 32
    q, k, v = (torch.randn(b, h, n, d, dtype=dtype) for h, n in ((hq, t), (hkv, s), (hkv, s)))
    mask = None
    if mask_rows:
        mask = torch.rand(b, 1, mask_rows, s) > 0.3
        mask[..., 0] = True
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, scale=1.0,
                                              enable_gqa=True)
    got = attend_folded(q, k, v, mask)
    assert got.shape == (b, hq, t, d) and got.dtype == dtype
    assert torch.allclose(got.float(), expected, atol=tol, rtol=tol), (got.float() - expected).abs().max()


def test_every_attention_call_of_the_decode_step_can_take_a_fused_kernel():
    """No call the 1.6B step makes combines a mask with enable_gqa (CUDA's math path only)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from gpu_model import build

    calls = []

    class Calls(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if "scaled_dot_product_attention" in func.overloadpacket.__name__:
                calls.append((args[0].shape[1], args[1].shape[1], kwargs.get("enable_gqa", False),
                              (args[3] if len(args) > 3 else kwargs.get("attn_mask")) is not None))
            return func(*args, **kwargs)

    _, state = build(8, "1.6b", torch.bfloat16)
    state.live.fill_(True)
    with Calls():
        state.step(1024, 64)
    assert len(calls) == 2 * 18  # self and cross attention in each of the 18 decoder layers
    assert all(hq == hkv and not gqa for hq, hkv, gqa, _ in calls), calls[:2]


def test_the_cost_model_counts_the_fold(capsys):
    from gpu_model import main

    main(["--shape", "tiny", "--slots", "8"])
    out = capsys.readouterr().out
    assert "kernels" in out and "H100 xRT" in out


def _greedy_timelines(whole_cross: bool | None, admit_group: int | None) -> torch.Tensor:
    from dia_model.config import SHAPES
    from dia_model.engine.slot_state import SlotState
    from dia_model.engine.timeline import RowRequest
    from dia_model.nn.model import DiaModel
    from dia_model.text import encode_script

    torch.manual_seed(0)
    model = DiaModel(SHAPES["tiny"]).eval()
    state = SlotState(model, 4, torch.device("cpu"), whole_cross=whole_cross, admit_group=admit_group)
    rows = [RowRequest(script=encode_script(text), prompt=None, max_new_frames=24, cfg_scale=3.0, temperature=0.0,
                       top_p=1.0, top_k=1, seed=i)
            for i, text in enumerate(["[S1] Short.", "[S1] A little longer one. [S2] Yes.",
                                      "[S1] " + "Much longer script text here. " * 6, "[S2] Fine."])]
    state.admit([0, 1, 2], rows[:3])
    for _ in range(10):
        state.step(64, 1)
    state.admit([3], rows[3:])  # a later, wider admission: the cross cache grows (or its view widens)
    for _ in range(30):
        state.step(64, 1)
    return state.timeline.clone()


def test_the_accelerator_memory_policies_decode_the_same_codes():
    """A cross cache allocated whole (read through a view of the width in use) and admission in
    groups of 2 give exactly the codes of the CPU policies (a cache grown in buckets, one admission)."""
    assert torch.equal(_greedy_timelines(True, 2), _greedy_timelines(False, None))


def _admission_peaks(device_gb: float, whole_cross: bool, admit_group: int | None) -> dict[str, float]:
    from gpu_model import MemoryMode, state_tensors

    from dia_model.config import SHAPES
    from dia_model.engine.loop import MEMORY_HEADROOM
    from dia_model.engine.slot_state import SlotState, slot_bytes
    from dia_model.engine.timeline import RowRequest
    from dia_model.nn.model import DiaModel
    from dia_model.text import encode_script

    meta = torch.device("meta")
    with meta:
        model = DiaModel(SHAPES["1.6b"]).to(torch.bfloat16)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    n = int((device_gb * 1e9 - weights) * MEMORY_HEADROOM // slot_bytes(model, meta))  # as choose_slots sizes it

    def request(nbytes: int, i: int) -> RowRequest:
        return RowRequest(script=encode_script(("[S1] " + "word " * 300)[:nbytes]), prompt=None, max_new_frames=430,
                          cfg_scale=3.0, temperature=1.2, top_p=0.95, top_k=45, seed=i)

    peaks = {}
    for case, widths in {"first admission of every slot, 450 B": [450],
                         "growth 320 B -> 1,024 B mid-stream": [320, 1024]}.items():
        mode = MemoryMode()
        with mode:
            state = SlotState(model, n, meta, whole_cross=whole_cross, admit_group=admit_group)
        mode.track(state_tensors(state))
        with mode:
            if len(widths) == 1:
                state.admit(list(range(n)), [request(widths[0], i) for i in range(n)])
            else:
                state.admit(list(range(n - 1)), [request(widths[0], i) for i in range(n - 1)])
                state.admit([n - 1], [request(widths[1], n)])
        peaks[case] = mode.peak / 1e9
    return peaks


def test_admission_and_growth_stay_under_the_device_the_slots_were_sized_for():
    now = _admission_peaks(80, whole_cross=True, admit_group=16)  # what an accelerator gets
    assert all(peak < 80 for peak in now.values()), now
    before = _admission_peaks(80, whole_cross=False, admit_group=None)  # the policies before this change
    assert max(before.values()) > 80, before  # the accounting sees the spike the review found


def test_dia_model_imports_without_soundfile_and_soxr():
    code = ("import sys; sys.modules['soundfile'] = None; sys.modules['soxr'] = None\n"
            "import dia_model\nfrom dia_model import Dia, Request, StreamStats\n"
            "import dia_model.engine.loop, dia_model.engine.graphs\nprint('ok')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu_check.sh runs it)")
def test_a_capture_waits_for_the_codec_thread():
    import threading

    from dia_model.config import SHAPES
    from dia_model.engine.graphs import GraphedStep
    from dia_model.engine.slot_state import SlotState
    from dia_model.nn.model import DiaModel

    device = torch.device("cuda")
    model = DiaModel(SHAPES["tiny"]).to(device).eval()
    state = SlotState(model, 2, device)
    quiet = threading.Lock()
    graphed = GraphedStep(state, quiet)
    quiet.acquire()
    done = threading.Event()
    threading.Thread(target=lambda: (graphed(64, 1), done.set()), daemon=True).start()
    assert not done.wait(0.5)  # the capture waits while the codec thread holds the lock
    quiet.release()
    assert done.wait(60) and graphed.captures == 1 and graphed.fallback is None
