"""The first minute on a lent GPU: what the engine's CUDA path will meet, before any long benchmark.

    python bench/gpu_probe.py --json $OUT/probe.json          # on the device (part of gpu_check.sh)
    python bench/gpu_probe.py --device cpu --shape tiny        # here: the same code paths, a smoke test

It writes one JSON with:
1. versions: torch, CUDA, cuDNN, the GPU and its memory;
2. the SDPA backend PyTorch picks for each attention call shape of the 1.6B decode step (self
   attention as called with ``enable_gqa`` and a bool mask, the same folded into Kv-head groups,
   cross attention, the encoder) and its time per call in each backend that accepts it;
3. one decode step captured as a CUDA graph and replayed under ``set_sync_debug_mode("error")``
   (a host sync inside the step raises);
4. one capture while the codec decodes on its own thread and stream (the hazard of a capture
   invalidated by another thread's work), with ``StreamStats``'s graph counters.

Each part is guarded: a failure is recorded and the next part runs. Only torch and dia_model are
needed (no soundfile, no Ray).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def versions(device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                   cudnn=torch.backends.cudnn.version(), capability=f"{props.major}.{props.minor}")
    return out


def _time(fn: Callable[[], Any], device: torch.device, repeats: int = 20) -> float:
    """Milliseconds per call (CUDA events on a GPU)."""
    fn()
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) * 1e3 / repeats
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize(device)
    return begin.elapsed_time(end) / repeats


def attention_shapes(slots: int, length: int, text: int, cfg: Any) -> dict[str, dict[str, Any]]:
    """The decode step's attention calls: (q, k, v) shapes, mask shape, enable_gqa."""
    rows = 2 * slots
    hq, hkv, d = cfg.dec_heads, cfg.dec_kv_heads, cfg.dec_head_dim
    group = hq // hkv
    return {
        "self, as called (gqa + bool mask)": dict(q=(rows, hq, 1, d), kv=(rows, hkv, length, d), mask=(rows, 1, 1, length),
                                                  gqa=True),
        "self, folded into kv-head groups": dict(q=(rows, hkv, group, d), kv=(rows, hkv, length, d),
                                                 mask=(rows, 1, 1, length), gqa=False),
        "cross (bool mask)": dict(q=(rows, cfg.cross_heads, 1, cfg.cross_head_dim),
                                  kv=(rows, cfg.cross_heads, text, cfg.cross_head_dim), mask=(rows, 1, 1, text), gqa=False),
        "encoder (bool mask)": dict(q=(2, cfg.enc_heads, text, cfg.enc_head_dim), kv=(2, cfg.enc_kv_heads, text, cfg.enc_head_dim),
                                    mask=(2, 1, text, text), gqa=cfg.enc_heads != cfg.enc_kv_heads),
    }


def sdpa_report(device: torch.device, dtype: torch.dtype, slots: int, length: int, text: int, cfg: Any) -> dict[str, Any]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    report = {}
    for name, shape in attention_shapes(slots, length, text, cfg).items():
        q = torch.randn(shape["q"], device=device, dtype=dtype)
        k = torch.randn(shape["kv"], device=device, dtype=dtype)
        v = torch.randn(shape["kv"], device=device, dtype=dtype)
        mask = torch.ones(shape["mask"], device=device, dtype=torch.bool)
        entry: dict[str, Any] = {"q": list(shape["q"]), "kv": list(shape["kv"]), "enable_gqa": shape["gqa"]}
        try:
            choice = torch._fused_sdp_choice(q, k, v, mask, 0.0, False, scale=1.0, enable_gqa=shape["gqa"])
            entry["chosen"] = SDPBackend(choice).name
        except Exception as e:  # private API: may differ between versions
            entry["chosen"] = f"unknown ({type(e).__name__})"
        timings = {}
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                        SDPBackend.MATH):
            try:
                with sdpa_kernel([backend]):
                    timings[backend.name] = round(_time(lambda: F.scaled_dot_product_attention(
                        q, k, v, attn_mask=mask, scale=1.0, enable_gqa=shape["gqa"]), device), 4)
            except Exception as e:
                timings[backend.name] = f"refused: {str(e).splitlines()[0][:120]}"
        with torch.no_grad():
            timings["default"] = round(_time(lambda: F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=1.0, enable_gqa=shape["gqa"]), device), 4)
        entry["ms_per_call"] = timings
        report[name] = entry
    return report


def _model(shape: str, device: torch.device, dtype: torch.dtype) -> Any:
    from dia_model.config import SHAPES
    from dia_model.nn.model import DiaModel

    torch.manual_seed(0)
    with torch.device(device):
        model = DiaModel(SHAPES[shape]).to(dtype).eval()
    for module in model.modules():  # the RoPE tables are buffers computed at construction
        if hasattr(module, "reset") and hasattr(module, "cos"):
            module.reset(device)
    return model


def _requests(cfg: Any, n: int) -> list[Any]:
    from dia_model.engine.timeline import RowRequest
    from dia_model.text import encode_script

    return [RowRequest(script=encode_script(f"[S1] Probe row {i}. [S2] Yes!"), prompt=None, max_new_frames=64,
                       cfg_scale=3.0, temperature=1.2, top_p=0.95, top_k=45, seed=i) for i in range(n)]


def graphed_step(device: torch.device, dtype: torch.dtype, shape: str, slots: int) -> dict[str, Any]:
    """Capture one step, then replay it under sync debug mode "error"."""
    from dia_model.engine.graphs import GraphedStep
    from dia_model.engine.slot_state import SlotState

    model = _model(shape, device, dtype)
    state = SlotState(model, slots, device)
    state.admit(list(range(slots)), _requests(model.cfg, slots))
    out: dict[str, Any] = {}
    if device.type != "cuda":
        state.step(256, 64)
        return {"skipped": "no CUDA: ran one eager step"}
    graphed = GraphedStep(state)
    graphed(256, 64)  # capture
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            graphed(256, 64)
        out["replays_without_sync"] = True
    except RuntimeError as e:
        out["replays_without_sync"] = False
        out["sync_error"] = str(e).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    out.update(captures=graphed.captures, replays=graphed.replays, fallback=graphed.fallback)
    return out


def capture_with_codec_running(device: torch.device, dtype: torch.dtype, shape: str, slots: int) -> dict[str, Any]:
    """Capture new graphs while another thread runs the codec on its own stream."""
    from dia_model.engine.graphs import GraphedStep
    from dia_model.engine.slot_state import SlotState

    if device.type != "cuda":
        return {"skipped": "no CUDA"}
    from transformers import DacConfig, DacModel

    codec = DacModel(DacConfig()).to(device).eval()
    codes = torch.randint(0, 1024, (4, 9, 430), device=device)
    stop = threading.Event()
    errors: list[str] = []
    decoded = [0]

    def decode_loop() -> None:
        side = torch.cuda.Stream(device)
        try:
            with torch.cuda.stream(side), torch.inference_mode():
                while not stop.is_set():
                    codec.decode(audio_codes=codes[:, :9])  # allocates and computes on its own stream
                    decoded[0] += 1
        except Exception as e:
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")

    model = _model(shape, device, dtype)
    state = SlotState(model, slots, device)
    state.admit(list(range(slots)), _requests(model.cfg, slots))
    graphed = GraphedStep(state)
    thread = threading.Thread(target=decode_loop, daemon=True)
    thread.start()
    time.sleep(0.5)
    try:
        for length in (256, 512, 768, 1024):  # four captures while the codec runs
            graphed(length, 64)
    finally:
        stop.set()
        thread.join(60)
        torch.cuda.synchronize(device)
    return {"captures": graphed.captures, "fallback": graphed.fallback, "codec_thread_errors": errors,
            "codec_batches_meanwhile": decoded[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", default="1.6b", choices=["tiny", "100m", "1.6b"])
    ap.add_argument("--slots", type=int, default=128)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    from dia_model.config import SHAPES

    report: dict[str, Any] = {}
    parts: list[tuple[str, Callable[[], Any]]] = [
        ("versions", lambda: versions(device)),
        ("sdpa", lambda: sdpa_report(device, dtype, args.slots if device.type == "cuda" else 4, args.length,
                                     1024, SHAPES[args.shape])),
        ("graphed_step", lambda: graphed_step(device, dtype, args.shape, 8)),
        ("capture_with_codec", lambda: capture_with_codec_running(device, dtype, args.shape, 8)),
    ]
    status = 0
    for name, part in parts:
        started = time.perf_counter()
        try:
            report[name] = part()
        except Exception as e:
            status = 1
            report[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
        report[name + "_s"] = round(time.perf_counter() - started, 2)
        print(f"{name}: {json.dumps(report[name], default=str)[:600]}", flush=True)
        if args.json:  # as each part ends: a later part that hangs loses nothing before it
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
