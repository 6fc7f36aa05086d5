"""Export throughput and memory: a null-model job of N rows exported to every format, one process each.

    python bench/bench_export.py                    # 100,000 rows (the job takes ~2 min here, each export less)
    python bench/bench_export.py --rows 20000 --formats webdataset,nemo
    python bench/bench_export.py --job runs/some-job  # an existing job instead

Each export runs in a fresh process, so its peak RSS (``ru_maxrss``) is the export's own: the claim
to check is that memory stays flat however many rows the job has (the metadata is streamed in
batches). Rows/s and MB/s are of the export command, on this machine's local disk; the null model's
rows are 93 ms clips (~8 KB of FLAC), so MB/s here is bounded by per-row work, not by bandwidth.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from bench_pipeline import run_null, save_results  # noqa: E402

FORMATS = ["webdataset", "lhotse", "lhotse-shar", "nemo", "hf"]
_CHILD = """
import json, resource, sys, time
from pipeline.export import export_job
started = time.perf_counter()
s = export_job(sys.argv[1], sys.argv[2], sys.argv[3])
took = time.perf_counter() - started
print(json.dumps({"rows": s.rows, "seconds": took, "shard_bytes": s.bytes, "files": len(s.files),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def export_once(job: Path, fmt: str, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(job), fmt, str(out)], env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"export {fmt} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    r.update(format=fmt, written_mb=written / 2**20, rows_per_s=r["rows"] / r["seconds"],
             mb_per_s=written / 2**20 / r["seconds"])
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--job", type=Path, default=None, help="export this job instead of making a null one")
    ap.add_argument("--formats", default=",".join(FORMATS))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        job = args.job
        if job is None:
            started = time.time()
            run_null(args.rows, Path(tmp))
            job = Path(tmp) / "null-job"
            print(f"null job of {args.rows} rows made in {time.time() - started:.0f} s", file=sys.stderr)
        results = []
        for fmt in args.formats.split(","):
            results.append(export_once(job, fmt, Path(tmp) / f"out-{fmt}"))
            print(f"  {fmt}: done", file=sys.stderr)
    print(f"export of a null-model job, {results[0]['rows']} rows, {os.cpu_count()} CPUs, local disk")
    print(f"{'format':<12} {'rows':>8} {'s':>7} {'rows/s':>8} {'MB out':>8} {'MB/s':>7} {'files':>6} {'peak RSS MB':>12}")
    for r in results:
        print(f"{r['format']:<12} {r['rows']:>8} {r['seconds']:>7.1f} {r['rows_per_s']:>8.0f} {r['written_mb']:>8.1f} "
              f"{r['mb_per_s']:>7.1f} {r['files']:>6} {r['peak_rss_mb']:>12.0f}")
    save_results("export", results)


if __name__ == "__main__":
    main()
