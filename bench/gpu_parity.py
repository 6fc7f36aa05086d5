"""Parity checks that need the accelerator: golden greedy codes on the device in fp32 (generate()
and stream(), which on CUDA runs captured graphs), how far bf16 rows stay from fp32 and from
themselves across slots, captured graphs against the eager step, and how far a half-precision
codec's waveform is from fp32's (with its speed-up).

    python bench/gpu_parity.py --device cuda --json $OUT/parity.json
    python bench/gpu_parity.py --device cpu            # the same checks on this machine (smoke test)
    python bench/gpu_parity.py --device cpu --codec    # ... with the codec precision check (90 s)

Prints one line per check and writes everything as JSON. Uses only dia_model and the golden
tiny checkpoints in tests/data/golden (no pytest, no Ray), so it runs on a bare device image.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GOLDEN = REPO / "tests" / "data" / "golden"
CHECKPOINTS = {"checkpoint-0626": "0626", "checkpoint-v0.1": "v0.1", "checkpoint-hf": "0626"}


def golden_requests(fmt: str) -> list[tuple[dict, dict]]:
    """(request fields, expected) for every row of every golden case of ``fmt``."""
    cases = json.loads((GOLDEN / f"cases-{fmt}.json").read_text())["cases"]
    data = np.load(GOLDEN / f"cases-{fmt}.npz")
    out = []
    for case in cases:
        n = len(case["texts"])
        for i in range(n):
            prompt = data[f"{case['name']}/prompt_{i}"] if "prompt_frames" in case else None
            frames = case["max_output_frames"]
            out.append((
                dict(text=case["texts"][i], cfg_scale=case["cfg_scale"], top_k=case["cfg_filter_top_k"],
                     temperature=0.0, top_p=0.95, max_new_frames=frames[i] if isinstance(frames, list) else frames,
                     audio_prompt=prompt),
                dict(case=case["name"], row=i, batch=n, codes=data[f"{case['name']}/codes_{i}"],
                     ended_by_eos=case["ended_by_eos"][i], shared_span=n > 1 and prompt is not None),
            ))
    return out


def check_golden(device: str) -> dict:
    """Greedy golden codes on ``device`` in fp32: generate() with the reference's prompt span, and
    stream() for rows the reference does not size by a neighbour's prompt."""
    from dia_model import Dia, Request

    report = {}
    for name, fmt in CHECKPOINTS.items():
        model = Dia.from_pretrained(GOLDEN / name, device=device, dtype="float32", load_codec=False)
        rows = golden_requests(fmt)
        gen_ok = 0
        cases = json.loads((GOLDEN / f"cases-{fmt}.json").read_text())["cases"]
        data = np.load(GOLDEN / f"cases-{fmt}.npz")
        for case in cases:
            n = len(case["texts"])
            prompts = [data[f"{case['name']}/prompt_{i}"] for i in range(n)] if "prompt_frames" in case else None
            results = model.generate(case["texts"], cfg_scale=case["cfg_scale"], top_k=case["cfg_filter_top_k"],
                                     temperature=0.0, top_p=0.95, max_new_frames=case["max_output_frames"],
                                     audio_prompts=prompts, reference_prompt_span=True, decode_audio=False)
            gen_ok += sum(np.array_equal(r.codes, data[f"{case['name']}/codes_{i}"]) for i, r in enumerate(results))
        requests = [Request(id=k, **fields) for k, (fields, _) in enumerate(rows)]
        streamed = {r.id: r for r in model.stream(requests, slots=3, decode_audio=False)}
        stream_ok = stream_checked = 0
        for k, (_, want) in enumerate(rows):
            if want["shared_span"]:
                continue  # the reference sizes this row's prompt span by its neighbours
            stream_checked += 1
            stream_ok += np.array_equal(streamed[k].codes, want["codes"])
        report[name] = {"rows": len(rows), "generate_identical": int(gen_ok), "stream_checked": stream_checked,
                        "stream_identical": int(stream_ok)}
        print(f"golden {name} on {device} fp32: generate {gen_ok}/{len(rows)}, stream {stream_ok}/{stream_checked}")
    return report


def sampled_workload(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    words = "the quick brown fox jumps over a lazy dog while people laugh and talk".split()
    out = []
    for i in range(n):
        text = " ".join(f"[S{1 + t % 2}] " + " ".join(rng.choice(words, rng.integers(3, 12))) + "."
                        for t in range(int(rng.integers(1, 4))))
        out.append(dict(text=text, cfg_scale=float(rng.uniform(2, 4)), temperature=float(rng.uniform(0.8, 1.4)),
                        top_p=0.95, top_k=int(rng.integers(20, 60)), max_new_frames=int(rng.integers(20, 120)),
                        seed=int(rng.integers(0, 2**31))))
    return out


def check_bf16(device: str, rows: int, slots: int) -> dict:
    """bf16 on the 0626 golden checkpoint: stream() rows against generate() alone (fraction identical),
    and bf16 against fp32 (fraction of identical rows, share of equal codes over the common length)."""
    from dia_model import Dia, Request

    work = sampled_workload(rows, 0)
    fp32 = Dia.from_pretrained(GOLDEN / "checkpoint-0626", device=device, dtype="float32", load_codec=False)
    bf16 = Dia.from_pretrained(GOLDEN / "checkpoint-0626", device=device, dtype="bfloat16", load_codec=False)

    def alone(model, w):
        fields = {k: v for k, v in w.items() if k != "text"}
        return model.generate(w["text"], decode_audio=False, **fields)[0].codes

    streamed = {r.id: r.codes for r in bf16.stream([Request(id=i, **w) for i, w in enumerate(work)], slots=slots,
                                                    decode_audio=False)}
    bf_alone = [alone(bf16, w) for w in work]
    fp_alone = [alone(fp32, w) for w in work]
    same_stream = sum(np.array_equal(streamed[i], bf_alone[i]) for i in range(rows))
    same_fp32 = sum(np.array_equal(fp_alone[i], bf_alone[i]) for i in range(rows))
    agree = []
    for a, b in zip(fp_alone, bf_alone):
        m = min(len(a), len(b))
        agree.append(float((a[:m] == b[:m]).mean()) if m else 1.0)
    out = {"rows": rows, "slots": slots, "stream_vs_alone_identical": same_stream / rows,
           "bf16_vs_fp32_identical_rows": same_fp32 / rows, "bf16_vs_fp32_code_agreement": float(np.mean(agree)),
           "bf16_vs_fp32_length_diff_frames": float(np.mean([abs(len(a) - len(b)) for a, b in zip(fp_alone, bf_alone)]))}
    print(f"bf16 on {device}: stream vs alone identical {out['stream_vs_alone_identical']:.3f}; "
          f"bf16 vs fp32 identical rows {out['bf16_vs_fp32_identical_rows']:.3f}, "
          f"code agreement {out['bf16_vs_fp32_code_agreement']:.3f}")
    return out


def check_graphs(device: str, rows: int, slots: int) -> dict:
    """stream() with captured CUDA graphs against the eager step, same fp32 and bf16 requests:
    the fraction of identical rows (the same kernels run, so 1.0 is expected) and the capture count."""
    from dia_model import Dia, Request, StreamStats

    if not device.startswith("cuda"):
        return {"skipped": "CUDA graphs need a CUDA device"}
    work = sampled_workload(rows, 1)
    out = {}
    for dtype in ("float32", "bfloat16"):
        model = Dia.from_pretrained(GOLDEN / "checkpoint-0626", device=device, dtype=dtype, load_codec=False)
        stats = StreamStats()
        runs = {}
        for graphs in (True, False):
            t0 = time.perf_counter()
            runs[graphs] = {r.id: r.codes for r in model.stream([Request(id=i, **w) for i, w in enumerate(work)],
                                                               slots=slots, decode_audio=False, cuda_graphs=graphs,
                                                               stats=stats if graphs else None)}
            out[f"{dtype}_{'graphs' if graphs else 'eager'}_s"] = round(time.perf_counter() - t0, 3)
        same = sum(np.array_equal(runs[True][i], runs[False][i]) for i in range(rows))
        out[dtype] = {"identical": same / rows, "captures": stats.graphs_captured, "replays": stats.graph_replays,
                      "fallback": stats.graph_fallback}
        print(f"graphs vs eager on {device} {dtype}: identical {same}/{rows}, {stats.graphs_captured} captures, "
              f"fallback {stats.graph_fallback}")
    return out


def check_codec(device: str, seconds: float = 10.0, batch: int = 8) -> dict:
    """The full-size DAC (random weights) decoding the same codes in fp32, fp16 and bf16: relative
    RMS error and peak error against fp32, and decode time per audio-second."""
    import torch

    from dia_model.audio.codec import DacCodec

    frames = int(seconds * 44100 / 512)
    rng = np.random.default_rng(0)
    codes = [rng.integers(0, 1024, size=(frames, 9)) for _ in range(batch)]
    fp32 = DacCodec.random(tiny=False, device=device)
    out: dict = {"audio_s": seconds * batch}
    reference = None
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        # the same seeded random weights, cast (as Dia.from_pretrained(codec_dtype=...) casts real ones)
        codec = fp32 if dtype == torch.float32 else DacCodec(DacCodec.random(tiny=False, device=device).model.to(dtype))
        codec.decode(codes[:1])  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        waves = codec.decode(codes)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        took = time.perf_counter() - t0
        name = str(dtype).replace("torch.", "")
        entry = {"s_per_audio_s": took / (seconds * batch)}
        if reference is None:
            reference = waves
        else:
            err = np.concatenate([w - r for w, r in zip(waves, reference)])
            ref = np.concatenate(reference)
            entry["rel_rms_error"] = float(np.sqrt(np.mean(err**2)) / np.sqrt(np.mean(ref**2)))
            entry["max_abs_error"] = float(np.abs(err).max())
            entry["speedup"] = out["float32"]["s_per_audio_s"] / entry["s_per_audio_s"]
        out[name] = entry
        print(f"codec {name} on {device}: {entry}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--codec", action="store_true", help="run the codec precision check on a CPU too (slow)")
    args = ap.parse_args()
    start = time.time()
    result = {"device": args.device}
    if args.device.startswith("cuda"):
        import torch

        result["gpu"] = torch.cuda.get_device_name()
        result["torch"] = torch.__version__
    result["golden_fp32"] = check_golden(args.device)
    result["bf16"] = check_bf16(args.device, args.rows, args.slots)
    result["graphs"] = check_graphs(args.device, args.rows, args.slots)
    if args.device.startswith("cuda") or args.codec:  # half-precision convolutions crawl on a CPU (~50x fp32)
        result["codec"] = check_codec(args.device, seconds=10.0 if args.device.startswith("cuda") else 0.2,
                                      batch=8 if args.device.startswith("cuda") else 1)
    result["wall_s"] = round(time.time() - start, 1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("golden_fp32", "bf16", "graphs", "codec")}))


if __name__ == "__main__":
    main()
