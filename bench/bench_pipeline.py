"""Benchmark the pipeline's README command on the bundled example (20 scripts) with model=tiny-random.

    python bench/bench_pipeline.py                 # 1 replica and 2 replicas, 2 runs each
    python bench/bench_pipeline.py --repeats 3 --variants 1x1 1x2 2x1
    python bench/bench_pipeline.py --scale 10      # the example's rows 10 times over (200 rows)
    python bench/bench_pipeline.py --scale 10 --variants 2x1 --baseline 0c33670   # side by side with older code
    python bench/bench_pipeline.py --null 100000   # the driver alone: a null model, N rows, 2 replicas

Each run is the real command line (``python -m pipeline model=tiny-random ...``) in a fresh
process with its own in-process Ray, timed from just before the process starts. Reported:

- rows/s and audio-s per wall-s over the whole command (Ray start, replica start, generation);
- the same over the steady part (from the first replica being ready to the end of the job);
- time from command to first finished row (the job's ``first_row_at`` minus the launch time).

``--baseline REV`` runs every variant with the code of git revision REV too (a temporary worktree,
first on PYTHONPATH), alternating with this checkout's runs, so both see the same machine state.
``--null N`` replaces Dia with ``pipeline/model/null_model.py`` (every row comes back at once with a 93 ms
waveform; the replicas skip the signal metrics) and runs N rows (in Parquet shards of ``--shard-rows``)
through 2 replicas. Reported: rows/s over the command (here the replicas share the driver's CPUs),
the driver's peak RSS, and the driver's own CPU time, over the whole job and after the first replica
is ready (steady state: rows per driver CPU-second is what one driver can coordinate when the
replicas run elsewhere), and from that how many H100s at the engine goal (x250 real time, ~10 s rows
= 25 rows/s each) one driver could keep fed.

The tiny checkpoint is built once before timing (a cold cache adds ~5 s to the first run).
Results are printed as a table and saved to bench/results/pipeline-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def scaled_example(scale: int, folder: Path) -> Path:
    """The bundled example's rows ``scale`` times over, with distinct ids (prompt paths made absolute)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    examples = REPO / "pipeline" / "examples"
    rows = pq.read_table(examples / "dialogues.parquet").to_pylist()
    out = []
    for k in range(scale):
        for r in rows:
            prompt = r["audio_prompt"] and str(examples / r["audio_prompt"])
            out.append({**r, "id": f"{r['id']}-{k}", "audio_prompt": prompt})
    path = folder / f"example-x{scale}.parquet"
    pq.write_table(pa.Table.from_pylist(out, schema=pq.read_schema(examples / "dialogues.parquet")), path)
    return path


def run_once(replicas: int, threads: int, out: Path, cache: Path, data: Path | None, code: Path = REPO,
             extra: tuple[str, ...] = ()) -> dict:
    """One timed run of the README command (with the code in ``code``); the job summary plus outside timings."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(code)}
    cmd = [sys.executable, "-m", "pipeline", "model=tiny-random", f"model.cache_dir={cache}",
           *([f"data.input={data}"] if data else []),
           f"output.dir={out}", "overwrite=true", "output.progress=false",
           f"cluster.replicas={replicas}", f"cluster.cpus_per_replica={threads}", f"cluster.torch_threads={threads}",
           f"cluster.num_cpus={max(2, replicas * threads)}", *extra]
    start = time.time()
    proc = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    end = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    summary = json.loads((out / "job.json").read_text())["summary"]
    run = summary["this_run"]
    wall = end - start
    return {
        "replicas": replicas, "threads": threads, "rows": run["rows_done"], "ok": run["ok"],
        "audio_s": run["audio_s"], "command_s": wall,
        "rows_per_s": run["rows_done"] / wall, "audio_s_per_wall_s": run["audio_s"] / wall,
        "steady_rows_per_s": run["steady_rows_per_s"], "steady_audio_s_per_wall_s": run["steady_audio_s_per_wall_s"],
        "first_row_s": run["first_row_at"] - start if run["first_row_at"] else None,
        "busy": {k: v["busy_fraction"] for k, v in summary["replicas"].items()},
        "driver_peak_rss_mb": run.get("driver_peak_rss_mb"), "code": "this checkout" if code == REPO else str(code),
    }


ROWS_PER_S_PER_H100 = 25.0  # x250 real time on ~10 s rows


def run_null(rows: int, tmp: Path, shard_rows: int = 100_000) -> dict:
    """``rows`` short rows through the null model and 2 replicas; driver rows/s and peak RSS."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp / "null-input"
    data.mkdir()
    for start in range(0, rows, shard_rows):  # shards of shard_rows, as corpora are usually split
        ids = range(start, min(rows, start + shard_rows))
        pq.write_table(pa.table({"id": [f"r{i:08d}" for i in ids],
                                 "text": [f"[S1] Row number {i}. [S2] Yes." for i in ids]}),
                       data / f"part-{start // shard_rows:05d}.parquet")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = tmp / "null-job"
    cmd = [sys.executable, "-m", "pipeline", "model.source=null-model", "model.name=null-model", f"data.input={data}",
           f"output.dir={out}", "output.progress=false", "cluster.replicas=2", "cluster.num_cpus=4",
           "generation.batch_size=256", "cluster.unit_rows=256", "quality.metrics=false"]
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"null run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    run = json.loads((out / "job.json").read_text())["summary"]["this_run"]
    steady = run["steady_rows_per_s"] or 0.0
    capacity = rows / run["driver_cpu_s"] if run.get("driver_cpu_s") else None
    steady_cpu = run.get("driver_steady_cpu_s")
    steady_capacity = rows / steady_cpu if steady_cpu else None
    loop_cpu = run.get("driver_steady_loop_cpu_s")
    return {"rows": rows, "shard_rows": shard_rows, "command_s": time.time() - start, "rows_per_s": run["rows_per_s"],
            "steady_rows_per_s": steady, "driver_peak_rss_mb": run["driver_peak_rss_mb"],
            "driver_cpu_s": run.get("driver_cpu_s"), "driver_rows_per_cpu_s": capacity,
            "driver_steady_cpu_s": steady_cpu, "driver_steady_rows_per_cpu_s": steady_capacity,
            "driver_steady_loop_cpu_s": loop_cpu, "driver_steady_rows_per_loop_cpu_s": rows / loop_cpu if loop_cpu else None,
            "h100s_one_driver_core_serves": (capacity or 0) / ROWS_PER_S_PER_H100,
            "h100s_one_driver_serves": steady / ROWS_PER_S_PER_H100, "targets": {"rows_per_s": 20000, "rss_mb": 1024}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["1x1", "2x1"],
                    help="REPLICASxTHREADS per replica, e.g. 1x1 1x2 2x1")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--scale", type=int, default=1, help="repeat the example's rows this many times")
    ap.add_argument("--baseline", default=None, help="git revision to run side by side with this checkout")
    ap.add_argument("--null", type=int, default=0, metavar="ROWS", help="the null-model driver benchmark")
    ap.add_argument("--shard-rows", type=int, default=100_000, help="rows per input shard for --null")
    args = ap.parse_args()
    if args.null:
        with tempfile.TemporaryDirectory(prefix="bench-pipeline-null-") as tmp:
            r = run_null(args.null, Path(tmp), args.shard_rows)
        steady = r["driver_steady_rows_per_cpu_s"]
        print(f"null model, {r['rows']} rows in shards of {r['shard_rows']}, 2 replicas, {os.cpu_count()} CPUs")
        print(f"{'measure':<58} | {'value':>10} | target")
        print("-" * 82)
        for name, value, target in [
            ("rows/s over the command (replicas share these CPUs)", f"{r['rows_per_s']:.0f}", ""),
            ("rows/s steady, wall clock (same)", f"{r['steady_rows_per_s']:.0f}", ""),
            ("driver CPU-s, whole job (Ray start, planning, merging)", f"{r['driver_cpu_s']:.1f}", ""),
            ("rows per driver CPU-s, whole job", f"{r['driver_rows_per_cpu_s']:.0f}", ">= 20,000"),
            ("driver CPU-s after the first replica is ready", f"{r['driver_steady_cpu_s'] or 0:.1f}", ""),
            ("rows per driver CPU-s, steady (what one driver coordinates)", f"{steady or 0:.0f}", ">= 20,000"),
            ("... of which the scheduling loop's thread, CPU-s", f"{r['driver_steady_loop_cpu_s'] or 0:.1f}", ""),
            ("rows per loop-thread CPU-s (the single-core ceiling)", f"{r['driver_steady_rows_per_loop_cpu_s'] or 0:.0f}", ""),
            ("driver peak RSS, MB", f"{r['driver_peak_rss_mb']:.0f}", "<= 1,024 at 1M rows"),
            ("H100s at x250 (25 rows/s each) one driver serves, steady", f"{(steady or 0) / ROWS_PER_S_PER_H100:.0f}", ""),
        ]:
            print(f"{name:<58} | {value:>10} | {target}")
        save_results("pipeline-null", r)
        return

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        cache = Path(tmp) / "cache"
        sys.path.insert(0, str(REPO))
        from pipeline.model.loader import ensure_tiny_checkpoint

        ensure_tiny_checkpoint(str(cache), 0)
        data = scaled_example(args.scale, Path(tmp)) if args.scale > 1 else None
        codes = [REPO]
        if args.baseline:
            base = Path(tmp) / "baseline"
            subprocess.run(["git", "worktree", "add", "--detach", str(base), args.baseline], cwd=REPO, check=True,
                           capture_output=True)
            codes.append(base)
        results = []
        try:
            for variant in args.variants:
                replicas, threads = (int(x) for x in variant.split("x"))
                for i in range(args.repeats):
                    for code in codes:  # alternate: both see the same machine state
                        r = run_once(replicas, threads, Path(tmp) / f"job-{variant}-{i}-{len(results)}", cache, data,
                                     code)
                        r["code"] = "this checkout" if code == REPO else f"baseline {args.baseline}"
                        results.append(r)
                        print(f"  {variant} run {i + 1} ({r['code']}): {r['rows']} rows, {r['command_s']:.1f} s",
                              file=sys.stderr)
        finally:
            if args.baseline:
                subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, capture_output=True)

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    header = (f"{'code':>18} | {'replicas x threads':>18} | {'rows':>4} | {'audio s':>7} | {'command s':>9} | {'rows/s':>6} | "
              f"{'audio-s/wall-s':>14} | {'steady rows/s':>13} | {'steady audio-s/s':>16} | {'first row s':>11}")
    what = "bundled example" if args.scale == 1 else f"bundled example x{args.scale}"
    print(f"{what}, model=tiny-random, median of {args.repeats} run(s); CPU: {os.cpu_count()} cores")
    print(header)
    print("-" * len(header))
    for variant, code in [(v, c) for v in args.variants for c in dict.fromkeys(r["code"] for r in results)]:
        rows = [r for r in results if f"{r['replicas']}x{r['threads']}" == variant and r["code"] == code]
        print(f"{code:>18} | {variant:>18} | {rows[0]['rows']:>4} | {med(rows, 'audio_s'):>7.2f} | {med(rows, 'command_s'):>9.1f} | "
              f"{med(rows, 'rows_per_s'):>6.2f} | {med(rows, 'audio_s_per_wall_s'):>14.3f} | "
              f"{med(rows, 'steady_rows_per_s'):>13.2f} | {med(rows, 'steady_audio_s_per_wall_s'):>16.3f} | "
              f"{med(rows, 'first_row_s'):>11.1f}")
    save_results("pipeline", results)


def save_results(prefix: str, data: Any) -> None:
    out = REPO / "bench" / "results" / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))
    print(f"saved {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
