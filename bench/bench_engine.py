"""Continuous batching (``Dia.stream``) against static batches (``Dia.generate``) on one fixed workload.

    python bench/bench_engine.py                                  # CPU: tiny and 100m, 16 slots
    python bench/bench_engine.py --device cuda --shape 1.6b       # a GPU, full-size random weights
    python bench/bench_engine.py --shape tiny --rows 32 --seconds 3 10

The workload is drawn once from ``--seed``: scripts whose lengths spread uniformly over
``--seconds`` of audio (text length proportional to it), 10% of them with a voice prompt
(DAC codes of a synthetic signal, with a transcript). Every row has its own sampling seed
(temperature 1.2, top-p 0.95, top-k 45, CFG 3) and ends by its ``max_new_frames`` (the random
weights never sample EOS: the checkpoint is written with the EOS logit weights zeroed), so the
work is the same in every run. It goes through

* static: ``generate()`` on consecutive batches of ``--slots`` rows, in workload order;
* stream: ``stream(slots=--slots)`` over the whole workload;

each once with codes only (``decode_audio=False``) and once end to end with the codec
(``decode_audio=True``), same weights, same device, one process (order: static, stream,
stream, static, so slow drift of the machine hits both alike). Every stream row's codes are
compared with the static batch's codes for the same request.

Figures: x real time = seconds of audio generated / wall seconds. Steps: a static batch runs
max(max_new + prompt + 15) - min(prompt) decode steps (15 = the delay countdown) and drops rows as
they finish; stream's steps, computed slot-steps, CUDA graph captures and codec-thread time come
from the ``StreamStats`` that ``stream(stats=...)`` fills in. Step ms = wall / steps (includes encoder, prefill and
host work). cpu s = process CPU time (all threads), less disturbed than wall time by other
processes. Two occupancies, for both modes, with useful row-steps = sum over rows of (max_new + 15):

* seats = useful / (steps x slots): how full the nominal batch of ``--slots`` was; empty seats,
  and prompt frames a static batch teacher-forces step by step, count as waste;
* computed = useful / row-steps actually computed: a static batch drops finished rows, and
  stream() on a CPU drops free slots once no request is waiting (the engine's own
  ``StreamStats.occupancy`` is the same ratio, but counts the step a finish takes to reach the host).

Peak memory: RSS high-water mark of the phase on CPU (reset through /proc/self/clear_refs), and
``torch.cuda.max_memory_allocated`` on CUDA. On a CPU, the time stream() spends in SlotState's
admit / step / compact / output is printed too (those methods are wrapped for the call).

Random checkpoints are written once to ``--cache/<shape>`` (the same files bench_model.py writes
and reuses); the codec is a random DAC built in memory (``--codec tiny``: 0.5 M parameters, the one
tiny checkpoints carry; ``full``: the real 76.7 M-parameter architecture, random weights).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

# Before torch loads: spinning OpenMP threads make small ops up to 20x slower when other processes
# share the cores (README, "Speed on CPUs"); static batches, whose ops shrink with the batch, suffer most.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FRAME_RATE = 44100 / 512
MAX_DELAY = 15  # the countdown after a row's last frame (delay pattern's largest delay)
CHARS_PER_S = 15.0  # script bytes per second of speech (about 2.5 words a second)
PROMPT_SHARE = 0.10
PROMPT_SECONDS = (2.0, 3.0)  # voice-prompt length at the nominal 3-30 s spread (scaled with --seconds)
NOMINAL_MAX_S = 30.0
SAMPLING = {"cfg_scale": 3.0, "temperature": 1.2, "top_p": 0.95, "top_k": 45}
# CPU, 16 slots (issue 17): stream() over static batches, by shape; slot occupancy of seats x steps
TARGETS = {"stream_over_static": {"tiny": 1.3, "100m": 1.0, "1.6b": 1.0}, "occupancy": 0.90}

# Defaults per shape, sized so that `--shape tiny 100m` runs in about 10 minutes on 2 CPU cores. A 100m
# step at 16 slots takes ~230 ms there (~15x tiny), so on a CPU its lengths are scaled down by 20 (same
# 10:1 spread, prompts scaled alike); say --seconds 3 30 (and --rows) for the real spread.
DEFAULT_ROWS = {"tiny": 32, "100m": 24, "1.6b": 64}
DEFAULT_SECONDS_CPU = {"tiny": (3.0, 30.0), "100m": (0.15, 1.5), "1.6b": (0.15, 1.5)}
DEFAULT_SECONDS_GPU = (3.0, 30.0)

WORDS = (
    "the quiet harbour lights were fading as we walked along the old stone wall and talked about "
    "everything that had changed since spring we should have left earlier she said but nobody "
    "listened because the music was still playing somewhere behind the market square and the "
    "smell of bread drifted over the water honestly I think it was the best evening of the year "
    "maybe we can come back next week if the weather holds and bring the others along too"
).split()


# ---------------------------------------------------------------------------------------- workload
@dataclass
class Row:
    id: int
    text: str
    max_new_frames: int
    seed: int
    prompt: np.ndarray | None
    transcript: str | None

    @property
    def prompt_frames(self) -> int:
        return 0 if self.prompt is None else len(self.prompt)


def script_of(rng: np.random.Generator, n_bytes: int) -> str:
    """A two-speaker script of about ``n_bytes`` bytes."""
    parts, speaker, size = [], 1, 0
    while size < n_bytes:
        turn = [str(w) for w in rng.choice(WORDS, size=int(rng.integers(5, 14)))]
        piece = f"[S{speaker}] " + " ".join(turn).capitalize() + "."
        parts.append(piece)
        size += len(piece) + 1
        speaker = 3 - speaker
    return " ".join(parts)


def synthetic_voice(seconds: float, sample_rate: int = 44100) -> np.ndarray:
    """A voice-like test signal: a vibrato tone with harmonics under a syllable envelope, plus a little noise."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 140 + 25 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.5 * t) ** 2
    noise = np.random.default_rng(1).standard_normal(t.shape) * 0.01
    return (0.2 * wave * envelope + noise).astype(np.float32)


def make_workload(dia: Any, rows: int, seconds: tuple[float, float], seed: int) -> list[Row]:
    rng = np.random.default_rng(seed)
    lo, hi = seconds
    scale = hi / NOMINAL_MAX_S
    prompt_lo, prompt_hi = (max(1, round(s * scale * FRAME_RATE)) for s in PROMPT_SECONDS)
    prompted = set(rng.choice(rows, size=max(1, round(PROMPT_SHARE * rows)), replace=False).tolist()) if rows else set()
    if dia.codec is not None:  # one encode of a synthetic signal; each prompted row takes a slice
        source = dia.encode_audio([synthetic_voice(prompt_hi / FRAME_RATE + 0.1)])[0]
        how = "codec-encoded synthetic voice"
    else:
        source = rng.integers(0, dia.config.eos_token, size=(prompt_hi, dia.config.channels))
        how = "random codes"
    out = []
    for i in range(rows):
        duration = float(rng.uniform(lo, hi))
        prompt = transcript = None
        if i in prompted:
            prompt = np.ascontiguousarray(source[: int(rng.integers(prompt_lo, prompt_hi + 1))])
            transcript = "[S1] This is how I sound."
        limit = dia.max_new_frames_limit(0 if prompt is None else len(prompt))
        frames = max(1, min(limit, round(duration * FRAME_RATE)))
        text_bytes = min(max(20, round(duration * CHARS_PER_S)), dia.config.text_length - 64)
        out.append(Row(i, script_of(rng, text_bytes), frames, int(rng.integers(0, 2**62)), prompt, transcript))
    make_workload.prompt_source = how  # type: ignore[attr-defined]
    return out


# ---------------------------------------------------------------------------------------- measuring
class Memory:
    """Peak memory of a phase: RSS high-water mark on CPU, max allocated on CUDA."""

    def __init__(self, device: Any):
        import torch

        self.torch, self.cuda = torch, device.type == "cuda"
        self.device = device

    @staticmethod
    def _status(key: str) -> float:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) * 1024 / 2**30
        except OSError:
            pass
        return float("nan")

    def reset(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            self.torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:  # Linux: "5" resets VmHWM to the current RSS
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def peak_gb(self) -> float:
        if self.cuda:
            return self.torch.cuda.max_memory_allocated(self.device) / 2**30
        hwm = self._status("VmHWM")
        if hwm != hwm:  # no /proc: process-wide maximum
            import resource

            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        return hwm

    def now_gb(self) -> float:
        if self.cuda:
            return self.torch.cuda.memory_allocated(self.device) / 2**30
        return self._status("VmRSS")


@contextlib.contextmanager
def stream_breakdown(enabled: bool) -> Iterator[dict[str, float]]:
    """Wall time inside the SlotState methods (host clock; meaningful on CPU only)."""
    names = ("admit", "step", "compact", "output")
    times: dict[str, float] = {f"{n}_{k}": 0 for n in names for k in ("s", "calls")}
    if not enabled:
        yield times
        return
    from dia_model.engine.slot_state import SlotState

    saved = {name: getattr(SlotState, name) for name in names if hasattr(SlotState, name)}

    def timed(name: str) -> Any:
        inner = saved[name]

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return inner(self, *args, **kwargs)
            finally:
                times[f"{name}_s"] += time.perf_counter() - t
                times[f"{name}_calls"] += 1

        return wrapper

    for name in saved:
        setattr(SlotState, name, timed(name))
    try:
        yield times
    finally:
        for name, fn in saved.items():
            setattr(SlotState, name, fn)


def static_steps(batch: list[Row]) -> int:
    """Decode steps ``generate()`` runs for one batch (it stops when its longest row's countdown ends)."""
    return max(r.max_new_frames + r.prompt_frames + MAX_DELAY for r in batch) - min(r.prompt_frames for r in batch)


def run_static(dia: Any, work: list[Row], slots: int, decode: bool) -> tuple[dict[int, Any], dict[str, Any]]:
    results: dict[int, Any] = {}
    steps = 0
    computed = 0
    cpu, t = time.process_time(), time.perf_counter()
    for b in range(0, len(work), slots):
        batch = work[b : b + slots]
        out = dia.generate(
            [r.text for r in batch], **SAMPLING, max_new_frames=[r.max_new_frames for r in batch],
            seed=[r.seed for r in batch], audio_prompts=[r.prompt for r in batch],
            prompt_transcripts=[r.transcript for r in batch], decode_audio=decode,
        )
        results.update({r.id: o for r, o in zip(batch, out)})
        steps += static_steps(batch)
        start = min(r.prompt_frames for r in batch)
        computed += sum(r.max_new_frames + r.prompt_frames + MAX_DELAY - start for r in batch)
    _sync(dia)
    return results, {"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - cpu, "steps": steps,
                     "computed_row_steps": computed, "engine_occupancy": None}


def run_stream(dia: Any, work: list[Row], slots: int, decode: bool,
               breakdown: bool) -> tuple[dict[int, Any], dict[str, Any]]:
    from dia_model import Request, StreamStats

    requests = (
        Request(id=r.id, text=r.text, **SAMPLING, max_new_frames=r.max_new_frames, seed=r.seed,
                audio_prompt=r.prompt, prompt_transcript=r.transcript)
        for r in work
    )
    results: dict[int, Any] = {}
    stats = StreamStats()
    with stream_breakdown(breakdown) as parts:
        cpu, t = time.process_time(), time.perf_counter()
        for res in dia.stream(requests, slots=slots, decode_audio=decode, stats=stats):
            results[res.id] = res
        _sync(dia)
        wall = time.perf_counter() - t
        cpu = time.process_time() - cpu
    info: dict[str, Any] = {
        "wall_s": wall, "cpu_s": cpu, "steps": stats.steps, "engine_occupancy": stats.occupancy,
        "computed_row_steps": stats.slot_steps, "engine_busy_slot_steps": stats.busy_slot_steps,
        "admissions": stats.admissions, "compactions": stats.compactions,
        "graphs_captured": stats.graphs_captured, "graph_fallback": stats.graph_fallback,
        "codec_s": stats.codec_s, "codec_share": stats.codec_s / wall if wall else 0.0,
    }
    if breakdown:
        info["breakdown"] = {**parts, "other_s": wall - sum(v for k, v in parts.items() if k.endswith("_s"))}
    return results, info


def _sync(dia: Any) -> None:
    if dia.device.type == "cuda":
        import torch

        torch.cuda.synchronize(dia.device)


def check(work: list[Row], results: dict[int, Any], decode: bool, dia: Any) -> list[str]:
    """Problems with one run's results: missing rows, errors, wrong lengths, missing audio."""
    problems = []
    for r in work:
        res = results.get(r.id)
        if res is None:
            problems.append(f"row {r.id}: no result")
        elif getattr(res, "error", None):
            problems.append(f"row {r.id}: {res.error}")
        elif res.frames != r.max_new_frames:
            problems.append(f"row {r.id}: {res.frames} frames, expected {r.max_new_frames} "
                            f"(ended_by_eos={res.ended_by_eos})")
        elif decode and dia.codec is not None and (res.audio is None or len(res.audio) == 0):
            problems.append(f"row {r.id}: no audio")
    return problems


def mismatches(work: list[Row], static: dict[int, Any], stream: dict[int, Any]) -> list[str]:
    out = []
    for r in work:
        a, b = static.get(r.id), stream.get(r.id)
        if a is None or b is None:
            continue
        if a.codes.shape != b.codes.shape:
            out.append(f"row {r.id}: static {a.codes.shape} vs stream {b.codes.shape}")
        elif not np.array_equal(a.codes, b.codes):
            diff = np.argwhere(a.codes != b.codes)
            out.append(f"row {r.id}: {len(diff)} of {a.codes.size} codes differ, first at frame {diff[0][0]} "
                       f"channel {diff[0][1]} (prompt {r.prompt_frames} frames)")
    return out


# ---------------------------------------------------------------------------------------- one shape
def load(shape: str, args: argparse.Namespace) -> Any:
    import torch

    from dia_model import Dia
    from dia_model.config import SHAPES
    from dia_model.tiny import save_random_checkpoint

    folder = args.cache / shape
    if not ((folder / "model.safetensors").exists() and (folder / "config.json").exists()):
        print(f"# writing a random {shape} checkpoint to {folder} ...", file=sys.stderr, flush=True)
        save_random_checkpoint(folder, SHAPES[shape], seed=0, eos_boost=0.0)  # as bench_model.py: rows never end early
    dia = Dia.from_pretrained(folder, device=args.device, dtype=args.dtype, load_codec=False, compile=args.compile)
    codec = args.codec if args.codec != "auto" else ("full" if dia.device.type == "cuda" else "tiny")
    if codec != "none":
        from dia_model.audio.codec import DacCodec

        dia.codec = DacCodec.random(seed=0, tiny=codec == "tiny", device=str(dia.device))
    dia.info["bench_codec"] = codec
    torch.manual_seed(0)
    return dia


def warm_up(dia: Any, slots: int) -> None:
    """Both paths once on short rows (kernel builds, allocator, codec), one of them prompted."""
    prompt = np.random.default_rng(0).integers(0, 1024, size=(5, dia.config.channels))
    warm = [Row(i, "[S1] Warm up. [S2] Fine.", 4 + i % 3, i, prompt if i == 0 else None, None)
            for i in range(min(slots, 4) + 1)]
    for decode in (False, True):
        run_static(dia, warm, slots, decode)
        run_stream(dia, warm, slots, decode, breakdown=False)


def bench_shape(shape: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    mem = None
    t0 = time.perf_counter()
    dia = load(shape, args)
    mem = Memory(dia.device)
    load_s = time.perf_counter() - t0
    rows = args.rows or DEFAULT_ROWS[shape]
    seconds = tuple(args.seconds) if args.seconds else (
        DEFAULT_SECONDS_GPU if dia.device.type == "cuda" else DEFAULT_SECONDS_CPU[shape])
    work = make_workload(dia, rows, seconds, args.seed)
    warm_up(dia, args.slots)
    after_load_gb = mem.now_gb()
    frames = sum(r.max_new_frames for r in work)
    useful = sum(r.max_new_frames + MAX_DELAY for r in work)
    out: dict[str, Any] = {
        "shape": shape, "device": str(dia.device), "dtype": args.dtype, "slots": args.slots, "rows": rows,
        "seconds": list(seconds), "codec": dia.info["bench_codec"], "load_s": load_s,
        "prompted_rows": sum(r.prompt is not None for r in work),
        "prompt_source": getattr(make_workload, "prompt_source", "?"),
        "prompt_frames": [r.prompt_frames for r in work if r.prompt is not None],
        "frames": frames, "audio_s": frames / FRAME_RATE, "useful_row_steps": useful,
        "text_bytes_min_max": [min(len(r.text.encode()) for r in work), max(len(r.text.encode()) for r in work)],
        "memory_after_load_gb": after_load_gb, "runs": [], "mismatches": {}, "problems": {},
    }
    print(f"# {shape}: {rows} rows, {frames} frames = {frames / FRAME_RATE:.0f} s of audio, "
          f"{out['prompted_rows']} prompted, lengths {seconds[0]:g}-{seconds[1]:g} s, slots {args.slots}",
          file=sys.stderr, flush=True)

    results: dict[tuple[str, str], dict[int, Any]] = {}
    plan = [("static", False), ("stream", False)]
    if dia.codec is not None:
        plan += [("stream", True), ("static", True)]
    for mode, decode in plan:
        output = "end to end" if decode else "codes"
        gc.collect()
        if dia.device.type == "cuda":
            torch.cuda.empty_cache()
        mem.reset()
        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        if mode == "static":
            res, info = run_static(dia, work, args.slots, decode)
        else:
            res, info = run_stream(dia, work, args.slots, decode, breakdown=dia.device.type == "cpu")
        results[(mode, output)] = res
        wall = info["wall_s"]
        run = {
            "mode": mode, "output": output, **info, "peak_gb": mem.peak_gb(), "load_average_before": load_before,
            "x_real_time": frames / FRAME_RATE / wall, "rows_per_s": rows / wall, "frames_per_s": frames / wall,
            "step_ms": wall / info["steps"] * 1e3 if info["steps"] else float("nan"),
            "occupancy": useful / (info["steps"] * args.slots) if info["steps"] else float("nan"),
            "computed_occupancy": useful / info["computed_row_steps"] if info["computed_row_steps"] else float("nan"),
        }
        problems = check(work, res, decode, dia)
        if problems:
            out["problems"][f"{mode} {output}"] = problems
        out["runs"].append(run)
        print(f"#   {mode:6s} {output:10s} {wall:7.1f} s  x{run['x_real_time']:.2f} real time  "
              f"{info['steps']} steps  {run['step_ms']:.1f} ms/step  occupancy {run['occupancy']:.1%} seats, "
              f"{run['computed_occupancy']:.1%} computed"
              + (f"  ({len(problems)} problems)" if problems else ""), file=sys.stderr, flush=True)
        del res

    for output in ("codes", "end to end"):
        if ("static", output) in results and ("stream", output) in results:
            out["mismatches"][output] = mismatches(work, results[("static", output)], results[("stream", output)])
    del results, dia
    gc.collect()
    return out


# ---------------------------------------------------------------------------------------- report
def summary(r: dict[str, Any]) -> dict[str, Any]:
    by = {(x["mode"], x["output"]): x for x in r["runs"]}
    s: dict[str, Any] = {}
    for output in ("codes", "end to end"):
        if ("static", output) in by and ("stream", output) in by:
            static, stream = by[("static", output)], by[("stream", output)]
            s[f"stream_over_static[{output}]"] = static["wall_s"] / stream["wall_s"]
            s[f"stream_over_static_cpu_time[{output}]"] = static["cpu_s"] / stream["cpu_s"]
    if ("stream", "codes") in by:
        s["stream_occupancy"] = by[("stream", "codes")]["occupancy"]
        s["stream_computed_occupancy"] = by[("stream", "codes")]["computed_occupancy"]
        s["stream_engine_occupancy"] = by[("stream", "codes")].get("engine_occupancy")
    return s


def print_report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    import torch

    print(f"\nDia engine benchmark: stream() vs static generate() batches, device={args.device}, dtype={args.dtype}, "
          f"slots={args.slots}, threads={torch.get_num_threads()}, seed={args.seed}, random weights, CFG on, "
          f"temperature {SAMPLING['temperature']}, rows end by max_new_frames, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    head = ("shape", "mode", "output", "rows", "audio s", "wall s", "cpu s", "x real time", "rows/s", "frames/s",
            "steps",
            "step ms", "occupancy: seats", "computed", "peak GB", "mismatches")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        for x in r["runs"]:
            mism = r["mismatches"].get(x["output"])
            mism_s = "-" if x["mode"] == "static" or mism is None else f"{len(mism)}/{r['rows']}"
            occ = f"{x['occupancy']:.1%} | {x['computed_occupancy']:.1%}"
            print(f"| {r['shape']} | {x['mode']} | {x['output']} | {r['rows']} | {r['audio_s']:.0f} | "
                  f"{x['wall_s']:.1f} | {x['cpu_s']:.1f} | "
                  f"{x['x_real_time']:.2f} | {x['rows_per_s']:.3f} | {x['frames_per_s']:.0f} | {x['steps']} | "
                  f"{x['step_ms']:.1f} | {occ} | {x['peak_gb']:.2f} | {mism_s} |")
    print()
    for r in results:
        s = summary(r)
        lo, hi = r["seconds"]
        print(f"{r['shape']}: {r['rows']} rows of {lo:g}-{hi:g} s ({r['audio_s']:.0f} s of audio, "
              f"{r['prompted_rows']} with {min(r['prompt_frames'], default=0)}-"
              f"{max(r['prompt_frames'], default=0)}-frame "
              f"prompts from {r['prompt_source']}), codec {r['codec']}")
        for output in ("codes", "end to end"):
            key = f"stream_over_static[{output}]"
            if key in s:
                target = TARGETS["stream_over_static"][r["shape"]]
                verdict = "met" if s[key] >= target else "NOT met"
                by_cpu = s[f"stream_over_static_cpu_time[{output}]"]
                print(f"  stream/static throughput, {output}: x{s[key]:.2f} by wall time   (target >= "
                      f"x{target}: {verdict}); x{by_cpu:.2f} by process CPU time")
        if "stream_occupancy" in s:
            met = lambda v: "met" if v >= TARGETS["occupancy"] else "NOT met"  # noqa: E731
            eng = s.get("stream_engine_occupancy")
            print(f"  stream slot occupancy (target >= {TARGETS['occupancy']:.0%}): "
                  f"{s['stream_occupancy']:.1%} of {r['slots']} seats x steps ({met(s['stream_occupancy'])}); "
                  f"{s['stream_computed_occupancy']:.1%} of computed slot-steps ({met(s['stream_computed_occupancy'])})"
                  + (f"; engine StreamStats.occupancy {eng:.1%}" if eng is not None else ""))
        for x in r["runs"]:
            if x["mode"] == "stream":
                graphs = (f"{x['graphs_captured']} CUDA graphs captured" if x.get("graphs_captured")
                          else "eager step" + (f" (graph fallback: {x['graph_fallback']})" if x.get("graph_fallback") else ""))
                codec = f", codec thread busy {x['codec_s']:.1f} s = {x['codec_share']:.0%} of wall" \
                    if x["output"] != "codes" else ""
                print(f"  stream {x['output']}: {x['admissions']} admissions, {x['compactions']} compactions, "
                      f"{graphs}{codec}")
        for x in r["runs"]:
            b = x.get("breakdown")
            if b:
                print(f"  stream {x['output']}: {b['step_s']:.1f} s in {b['step_calls']} steps "
                      f"({b['step_s'] / max(b['step_calls'], 1) * 1e3:.1f} ms each), {b['admit_s']:.1f} s in "
                      f"{b['admit_calls']} admissions, {b['compact_s']:.1f} s in {b['compact_calls']} compactions, "
                      f"{b['output_s']:.1f} s reading results, {b['other_s']:.1f} s other (host loop, codec hand-off"
                      + (", waiting for the codec thread" if x["output"] != "codes" else "") + ")")
        for output, mism in r["mismatches"].items():
            print(f"  stream vs static codes ({output}): {len(mism)} of {r['rows']} rows differ")
            for m in mism[:10]:
                print(f"    {m}")
        for run, problems in r["problems"].items():
            print(f"  PROBLEMS in {run}: {len(problems)}")
            for p in problems[:10]:
                print(f"    {p}")
    loads = [x.get("load_average_before") for r in results for x in r["runs"]]
    if any(v is not None for v in loads):
        busy = max(v for v in loads if v is not None) > (os.cpu_count() or 1) + 0.5
        print(f"\n1-minute load average before each run: {', '.join(f'{v:.1f}' for v in loads if v is not None)} "
              f"on {os.cpu_count()} CPUs (this bench itself adds about {torch.get_num_threads()})"
              + ("; OTHER PROCESSES WERE COMPETING FOR THE CPUS: wall times are inflated, compare the cpu s column"
                 if busy else ""))
    if args.device == "cpu":
        t = TARGETS["stream_over_static"]
        print(f"\ntargets (CPU, 16 slots): stream >= x{t['tiny']} (tiny) / x{t['100m']} (100m) the static "
              f"throughput in the same run; slot occupancy >= {TARGETS['occupancy']:.0%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ap.add_argument("--shape", nargs="+", default=["tiny", "100m"], choices=["tiny", "100m", "1.6b"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--rows", type=int, default=None,
                    help=f"requests in the workload (default per shape: {DEFAULT_ROWS})")
    ap.add_argument("--slots", type=int, default=16, help="stream() slots, and the static batch size")
    ap.add_argument("--seconds", type=float, nargs=2, metavar=("MIN", "MAX"), default=None,
                    help="spread of row lengths in seconds of audio (default 3 30; on a CPU 0.3 3 for 100m and 1.6b)")
    ap.add_argument("--codec", default="auto", choices=["auto", "tiny", "full", "none"],
                    help="random DAC for the end-to-end runs: tiny (0.5 M params), full (76.7 M), none (codes only); "
                         "auto: tiny on CPU, full on CUDA")
    ap.add_argument("--compile", action="store_true", help="Dia.from_pretrained(compile=True)")
    ap.add_argument("--seed", type=int, default=0, help="workload seed (lengths, texts, prompts, sampling seeds)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--cache", type=Path, default=REPO / "bench" / "results" / "checkpoints")
    ap.add_argument("--json", type=Path, default=None,
                    help="where to write the results (default bench/results/engine-<time>.json)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.slots < 1:
        ap.error("--slots must be at least 1")
    results = []
    t0 = time.perf_counter()
    for shape in args.shape:
        results.append(bench_shape(shape, args))
    print_report(results, args)
    total = time.perf_counter() - t0
    path = args.json or REPO / "bench" / "results" / time.strftime("engine-%Y%m%d-%H%M%S.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"argv": sys.argv[1:], "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "total_s": total, "targets": TARGETS,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if args.device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    for r in results:
        r["summary"] = summary(r)
    path.write_text(json.dumps({"meta": meta, "shapes": results}, indent=2, default=float))
    print(f"\nwrote {path} (total {total:.0f} s)")


if __name__ == "__main__":
    main()
