"""Fault injection as numbers: replica processes and drivers killed with SIGKILL while a job runs.

    python bench/fault_injection.py                     # 200 rows, 2 replicas, 20 replica kills; 2 driver kills
    python bench/fault_injection.py --rows 40 --replica-kills 4 --driver-kills 1

Phase A runs one job (a real ``python -m pipeline`` process on a local Ray cluster started here)
and SIGKILLs a random working replica process (up for at least 4 s, so past its model load) every
0.3-1.5 s once rows are flowing, until the kill count is reached. Phase B kills the driver process group twice mid-job, then runs the same
command to the end (resume). Both report: rows planned, rows with metadata, rows lost, rows
recorded twice, good rows marked ``error`` (every row here is good), audio files on disk versus
ok rows, and whether each audio file matches its metadata. Printed as a table and saved as JSON
in bench/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]


def _age_s(pid: int) -> float:
    """Seconds since process ``pid`` started."""
    ticks = os.sysconf("SC_CLK_TCK")
    start = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - start


def replica_pids(marker: bytes = b"ray::Replica", min_age_s: float = 0.0) -> list[int]:
    """PIDs of replica actor processes on this machine (Ray titles them ``ray::Replica...``) that have
    lived at least ``min_age_s`` (a restarted replica first loads its model: killing it then tests
    restarts, not the rows it holds)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "cmdline").read_bytes().startswith(marker) and _age_s(int(entry.name)) >= min_age_s:
                pids.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def write_rows(path: Path, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": f"row{i:04d}", "text": f"[S1] Line number {i}. [S2] Reply {i}!"} for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


FRAMES = 40  # max_new_frames of every row by default (--frames): longer rows make a longer job


def driver_cmd(data: Path, job: Path, cache: Path, address: str, extra: list[str], frames: int = FRAMES) -> list[str]:
    return [sys.executable, "-m", "pipeline", "model=tiny-random", f"model.cache_dir={cache}",
            "data=parquet", f"data.input={data}", f"output.dir={job}", "output.progress=false",
            f"cluster.address={address}", f"generation.max_new_frames={frames}", *extra]


def check_job(job: Path, rows: int) -> dict[str, Any]:
    """What the job directory holds, against what it should."""
    import pyarrow.parquet as pq
    import soundfile as sf

    meta = [r for f in sorted((job / "metadata").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    ids = Counter(r["id"] for r in meta)
    ok = [r for r in meta if r["status"] == "ok"]
    bad_audio = 0
    for r in ok:
        try:
            info = sf.info(job / r["audio_path"])
            bad_audio += info.frames != r["frames"] * 512
        except Exception:
            bad_audio += 1
    files = [p for p in (job / "audio").rglob("*") if p.is_file()]
    status = json.loads((job / "job.json").read_text()).get("status") if (job / "job.json").is_file() else None
    return {
        "rows": rows, "with_metadata": len(ids), "lost": rows - len(ids),
        "recorded_twice": sum(c - 1 for c in ids.values() if c > 1),
        "good_rows_error": sum(r["status"] == "error" for r in meta),
        "audio_files": len(files), "ok_rows": len(ok), "audio_mismatch": bad_audio,
        "attempts": dict(sorted(Counter(r["attempts"] for r in meta).items())), "job_status": status,
    }


def replica_kills(data: Path, job: Path, cache: Path, address: str, kills: int, rows: int,
                  seed: int = 0, min_age_s: float = 4.0, frames: int = FRAMES) -> dict[str, Any]:
    """Phase A: one job, ``kills`` random replica SIGKILLs while it runs, each at a replica process
    that has been up ``min_age_s`` (so it had its model loaded and rows in hand)."""
    rng = random.Random(seed)
    cmd = driver_cmd(data, job, cache, address, ["cluster.replicas=2", "generation.batch_size=4",
                                                 "cluster.unit_rows=8", "output.flush_rows=4"], frames)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    start = time.time()
    driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    done = 0
    stop = threading.Event()

    def killer() -> None:
        nonlocal done
        parts = job / "metadata" / "_parts"
        while not stop.is_set() and not list(parts.glob("*/*.parquet")):
            time.sleep(0.05)
        while not stop.is_set() and done < kills:
            time.sleep(rng.uniform(0.3, 1.5))
            pids = replica_pids(min_age_s=min_age_s)
            if pids:
                try:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    done += 1
                except ProcessLookupError:
                    pass

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    output, _ = driver.communicate(timeout=1800)
    stop.set()
    thread.join(5)
    result = check_job(job, rows)
    summary = json.loads((job / "job.json").read_text()).get("summary") or {}
    result.update(phase="replica SIGKILLs", kills=done, exit_code=driver.returncode,
                  wall_s=round(time.time() - start, 1),
                  crashes=sum(r.get("crashes", 0) for r in summary.get("replicas", {}).values()))
    if driver.returncode != 0:
        result["driver_output_tail"] = output.decode(errors="replace")[-2000:]
    return result


def driver_kills(data: Path, job: Path, cache: Path, address: str, kills: int, rows: int,
                 frames: int = FRAMES) -> dict[str, Any]:
    """Phase B: the driver is SIGKILLed ``kills`` times mid-job, then the same command resumes to the end."""
    cmd = driver_cmd(data, job, cache, address, ["cluster.replicas=2", "generation.batch_size=2",
                                                 "cluster.unit_rows=2", "output.flush_rows=2"], frames)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    start = time.time()
    done = 0
    for k in range(kills):
        parts = job / "metadata" / "_parts"
        before = len(list(parts.glob("*/*.parquet")))
        driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and len(list(parts.glob("*/*.parquet"))) < before + 3 and driver.poll() is None:
            time.sleep(0.05)
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            done += 1
        driver.wait()
    final = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    result = check_job(job, rows)
    runs = json.loads((job / "job.json").read_text()).get("runs", [])
    result.update(phase="driver SIGKILLs + resume", kills=done, exit_code=final.returncode,
                  wall_s=round(time.time() - start, 1), runs=[r["status"] for r in runs])
    if final.returncode != 0:
        result["driver_output_tail"] = (final.stdout + final.stderr)[-2000:]
    return result


def run(rows: int, replica_kill_count: int, driver_kill_count: int, workdir: Path,
        cache: Optional[Path] = None, address: Optional[str] = None, min_age_s: float = 4.0,
        frames: int = FRAMES) -> list[dict[str, Any]]:
    """Both phases in ``workdir``; uses the running Ray at ``address`` or starts a local one.
    ``frames``: max_new_frames of every row; longer rows give the kills time."""
    import ray

    cache = cache or workdir / "cache"
    sys.path.insert(0, str(REPO))
    from pipeline.model.loader import ensure_tiny_checkpoint

    ensure_tiny_checkpoint(str(cache), 0)
    data = workdir / "data" / "rows.parquet"
    write_rows(data, rows)
    started = False
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        address, started = ray.get_runtime_context().gcs_address, True
    try:
        results = [replica_kills(data, workdir / "job-a", cache, address, replica_kill_count, rows,
                                 min_age_s=min_age_s, frames=frames)]
        if driver_kill_count:
            results.append(driver_kills(data, workdir / "job-b", cache, address, driver_kill_count, rows, frames))
    finally:
        if started:
            ray.shutdown()
    return results


COLUMNS = ["phase", "rows", "kills", "lost", "recorded_twice", "good_rows_error", "ok_rows", "audio_files",
           "audio_mismatch", "exit_code", "wall_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--replica-kills", type=int, default=20)
    ap.add_argument("--driver-kills", type=int, default=2)
    ap.add_argument("--frames", type=int, default=FRAMES, help="max_new_frames of every row")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fault-injection-") as tmp:
        results = run(args.rows, args.replica_kills, args.driver_kills, Path(tmp), frames=args.frames)
    print(f"fault injection, model=tiny-random, 2 replicas; CPU: {os.cpu_count()} cores")
    print(" | ".join(f"{c:>16}" for c in COLUMNS))
    for r in results:
        print(" | ".join(f"{str(r.get(c)):>16}" for c in COLUMNS))
    for r in results:
        print(f"{r['phase']}: attempts {r['attempts']}, job {r['job_status']}"
              + (f", replica crashes {r['crashes']}" if "crashes" in r else "")
              + (f", runs {r['runs']}" if "runs" in r else ""))
    out = REPO / "bench" / "results" / f"fault-injection-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"saved {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
