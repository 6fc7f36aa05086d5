"""Decode speed and load memory of dia_model with random weights, printed as a table.

    python bench/bench_model.py                       # tiny, 100m, 1.6b x fp32, bf16 x batch 1, 4, 16
    python bench/bench_model.py --shapes tiny 100m --batches 1 4 --frames 32

Each (shape, dtype) runs in a fresh subprocess so that its peak RSS while loading is
its own.  Random checkpoints are written once to --cache (1.6b: 6.4 GB in fp32).
The decode step time is the slope between two runs of different length, so encoder,
prefill and start-up costs cancel out.  Rows never end early (EOS weights zeroed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FRAME_RATE = 44100 / 512
TEXT = "[S1] Benchmarks measure what users feel. [S2] And the table says how fast it goes. (laughs)"


def _rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1e6
    return 0.0


def run_one(shape: str, dtype: str, batches: list[int], frames: int, cache: Path, threads: int, device: str) -> dict:
    """Runs inside the subprocess: load, then time decode steps at each batch size."""
    import torch

    torch.set_num_threads(threads)
    from dia_model import Dia
    from dia_model.config import SHAPES
    from dia_model.tiny import save_random_checkpoint

    folder = cache / shape
    if not (folder / "model.safetensors").exists():
        save_random_checkpoint(folder, SHAPES[shape], seed=0, eos_boost=0.0)
    base = _rss_gb()
    t0 = time.perf_counter()
    model = Dia.from_pretrained(folder, dtype=dtype, device=device, load_codec=False)
    load_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    weights = sum(p.numel() * p.element_size() for p in model.model.parameters()) / 1e9
    decoder = sum(p.numel() * p.element_size() for p in model.model.decoder.parameters()) / 1e9
    out = {"shape": shape, "dtype": dtype, "load_s": load_s, "weights_gb": weights, "decoder_gb": decoder,
           "load_peak_ratio": (peak - base) / weights, "rows": []}

    def timed(batch: int, n: int) -> float:
        t = time.perf_counter()
        res = model.generate([TEXT] * batch, max_new_frames=n, seed=list(range(batch)), temperature=1.2)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        assert all(r.frames == n for r in res), [r.frames for r in res]
        return time.perf_counter() - t

    for batch in batches:
        timed(batch, 2)  # warm-up
        short, long = max(2, frames // 4), frames
        t_short, t_long = timed(batch, short), timed(batch, long)
        step = (t_long - t_short) / (long - short)
        out["rows"].append({
            "batch": batch, "step_ms": step * 1e3, "frames_per_s": 1 / step,
            "audio_x": batch / step / FRAME_RATE, "first_call_s": t_short,
        })
        print(json.dumps(out["rows"][-1]), file=sys.stderr, flush=True)
    return out


def copy_bandwidth_gbs(gb: float = 1.0, repeats: int = 5) -> float:
    """STREAM-style copy bandwidth: bytes read + bytes written per second (best of a few), all threads."""
    import torch

    src = torch.ones(int(gb * 1e9) // 4)
    dst = torch.zeros_like(src)  # touched, so page faults are not timed
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * gb / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["tiny", "100m", "1.6b"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--frames", type=int, default=24, help="decode steps in the longer timing run")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache", type=Path, default=REPO / "bench" / "results" / "checkpoints")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one (shape, dtype) and print JSON
    args = ap.parse_args()

    if args.one:
        shape, dtype = args.one.split(":")
        print(json.dumps(run_one(shape, dtype, args.batches, args.frames, args.cache, args.threads, args.device)))
        return

    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    bandwidth = copy_bandwidth_gbs()
    results = []
    for shape in args.shapes:
        for dtype in args.dtypes:
            cmd = [sys.executable, __file__, "--one", f"{shape}:{dtype}", "--batches", *map(str, args.batches),
                   "--frames", str(args.frames), "--threads", str(args.threads), "--device", args.device,
                   "--cache", str(args.cache)]
            print(f"# {shape} {dtype} ...", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
            if proc.returncode:
                print(f"# {shape} {dtype} failed (exit {proc.returncode})", file=sys.stderr)
                continue
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    print(f"\nDia decode benchmark, device={args.device}, threads={args.threads}, random weights, "
          f"CFG on (2 rows per request), step time = slope over {args.frames} frames")
    print(f"measured copy bandwidth: {bandwidth:.1f} GB/s read+written (memory floor of a step = decoder weight "
          "bytes / that)")
    head = ("shape", "dtype", "load s", "load peak/weights", "batch", "step ms", "floor ms", "frames/s/row",
            "audio s per s")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        for row in r["rows"]:
            print(f"| {r['shape']} | {r['dtype']} | {r['load_s']:.1f} | {r['load_peak_ratio']:.2f} | {row['batch']} | "
                  f"{row['step_ms']:.1f} | {r['decoder_gb'] / bandwidth * 1e3:.1f} | {row['frames_per_s']:.1f} | "
                  f"{row['audio_x']:.3f} |")


if __name__ == "__main__":
    main()
