"""Fault cases on a real local Ray cluster: replica deaths charged only to the rows being generated,
each death counted once, hostile rows that end as row errors, and random SIGKILLs that lose nothing.

Replicas die for real: the process exits (``os._exit``) at a chosen moment, or is sent SIGKILL from
outside (the fault-injection bench, run small).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import run_job
from pipeline.replica.actor import Replica

from test_pipeline import assert_audio_matches, metadata_rows

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def crashing_replica(markers: dict[str, Path]) -> type:
    """A Replica whose process dies the first time one of ``markers``' rows takes a slot."""

    class CrashOnRows(Replica):
        def _admitted(self, p):
            marker = markers.get(p.row.id)
            if marker is not None and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)

    return CrashOnRows


def texts(*pairs: tuple[str, int]) -> list[dict]:
    """Rows with texts of the given lengths (the queue takes the longest first)."""
    return [{"id": i, "text": "[S1] " + "word " * n} for i, n in pairs]


def test_rows_a_replica_had_not_started_are_not_charged_for_its_death(
    ray_local, pipeline_cfg, pipeline_parquet, tmp_path
):
    # one replica holds two units at once: [a1, a2] and [b1, b2]. It dies as a1 takes a slot, and
    # later, once, as b1 does. Only the rows in its slots are charged each time; charging the queued
    # rows too would spend b1's (or a1's) two attempts and mark it error.
    rows = texts(("a1", 12), ("a2", 11), ("b1", 8), ("b2", 7), ("c1", 2))
    data = pipeline_parquet(rows)
    markers = {"a1": tmp_path / "crash-a1", "b1": tmp_path / "crash-b1"}
    summary = run_job(
        pipeline_cfg(f"data.input={data}", "cluster.replicas=1", "cluster.units_in_flight=2",
                     "cluster.unit_rows=2", "generation.batch_size=2", "cluster.max_attempts=2",
                     "generation.max_new_frames=20"),
        replica_cls=crashing_replica(markers),
    )
    assert all(m.exists() for m in markers.values())
    meta = {r["id"]: r for r in metadata_rows(tmp_path / "job")}
    assert sorted(meta) == sorted(r["id"] for r in rows)
    assert {i: r["status"] for i, r in meta.items()} == {i: "ok" for i in meta}, {
        i: r["error"] for i, r in meta.items()}
    # each crash charges the rows seated in the engine then (the crashing row, and its neighbour if it
    # had a slot at that moment), never the rows still queued
    attempts = {i: r["attempts"] for i, r in meta.items()}
    assert attempts["a1"] == attempts["b1"] == 1 and max(attempts.values()) == 1, attempts
    assert summary["replicas"]["replica-0"]["crashes"] == 2
    for r in meta.values():
        assert_audio_matches(tmp_path / "job", r)


def test_each_death_counts_once_and_a_restarted_replica_is_kept(
    ray_local, pipeline_cfg, pipeline_parquet, tmp_path
):
    # max_replica_failures=2 used to give the replica up after one death with two units in flight
    rows = texts(*((f"r{i}", 10 - i) for i in range(8)))
    data = pipeline_parquet(rows)
    markers = {i: tmp_path / f"crash-{i}" for i in ("r0", "r3", "r6")}
    summary = run_job(
        pipeline_cfg(f"data.input={data}", "cluster.replicas=1", "cluster.units_in_flight=2",
                     "cluster.unit_rows=2", "generation.batch_size=2", "cluster.max_replica_failures=2",
                     "cluster.max_restarts=-1", "generation.max_new_frames=20"),
        replica_cls=crashing_replica(markers),
    )
    assert all(m.exists() for m in markers.values())
    assert summary["status_counts"] == {"ok": 8}
    assert summary["replicas"]["replica-0"]["crashes"] == 3
    assert summary["replicas"]["replica-0"]["state"] == "active"


def test_an_engine_error_costs_no_rows(ray_local, pipeline_cfg, pipeline_parquet, tmp_path):
    """The replica's stream raises (not a process death) as row r2 takes a slot: the rows it held are
    each generated alone, the rows it had staged go back to its queue, and the engine starts again."""
    marker = tmp_path / "raised"

    class RaiseOnce(Replica):
        def _admitted(self, p):
            if p.row.id == "r2" and not marker.exists():
                marker.write_text("x")
                raise RuntimeError("CUDA error: an illegal memory access was encountered")

    rows = texts(*((f"r{i}", 8 - i) for i in range(6)))
    data = pipeline_parquet(rows)
    summary = run_job(pipeline_cfg(f"data.input={data}", "cluster.replicas=1", "generation.batch_size=3",
                                   "cluster.unit_rows=2", "generation.max_new_frames=20"), replica_cls=RaiseOnce)
    assert marker.exists() and summary["status_counts"] == {"ok": 6}
    meta = {r["id"]: r for r in metadata_rows(tmp_path / "job")}
    assert sorted(meta) == sorted(r["id"] for r in rows) and all(r["attempts"] == 0 for r in meta.values())
    for r in meta.values():
        assert_audio_matches(tmp_path / "job", r)


def test_hostile_rows_end_as_row_errors_and_the_rest_run(ray_local, pipeline_cfg, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    os.mkfifo(folder / "pipe.wav")  # reading it would block forever
    long_id = "speaker-" + "x" * 300
    good = "[S1] Hello there. [S2] Hi!"
    ids = ["good", "badutf8", "fifo", "bigseed", "floatseed", long_id, "blocked"]
    raw_texts = [good.encode(), b"[S1] caf\xe9", *[good.encode()] * 5]
    offsets = pa.array([0, *__import__("itertools").accumulate(len(t) for t in raw_texts)], pa.int32())
    text = pa.Array.from_buffers(pa.string(), len(raw_texts), [None, offsets.buffers()[1],
                                                                pa.py_buffer(b"".join(raw_texts))])
    table = pa.table({
        "id": ids, "text": text,
        "audio_prompt": [None, None, "pipe.wav", None, None, None, None],
        "seed": [None, None, None, "9007199254740993", "3.5", None, None],
    })
    pq.write_table(table, folder / "hostile.parquet")
    job = tmp_path / "job"
    # a folder where a row's audio file must go: writing that one file fails, the job does not
    sweep = ["sweep.cfg_scale=[3.0]", "sweep.top_k=[45]"]
    (job / "audio" / "hostile" / "blocked__cfg_scale-3.0__top_k-45.flac").mkdir(parents=True)
    summary = run_job(pipeline_cfg(f"data.input={folder / 'hostile.parquet'}", "generation.max_new_frames=20",
                                   "data.prompt_timeout_s=5", *sweep))
    meta = {r["id"]: r for r in metadata_rows(job)}
    assert sorted(meta) == sorted(ids)
    status = {i: (r["status"], r["error"]) for i, r in meta.items()}
    assert status["good"] == ("ok", None) and status[long_id][0] == "ok"
    assert status["badutf8"] == ("error", "column 'text' is not valid UTF-8 (bad byte at offset 8)")
    assert status["fifo"][0] == "error" and "not a regular file" in status["fifo"][1]
    assert status["bigseed"][0] == "ok" and meta["bigseed"]["seed"] == 9007199254740993
    assert status["floatseed"] == ("error", "seed='3.5' is not an integer")
    assert status["blocked"][0] == "error" and "cannot write the audio file" in status["blocked"][1]
    assert summary["status_counts"] == {"ok": 3, "error": 4}
    assert {g["reason"] for g in summary["errors"]} >= {"seed='…' is not an integer"}
    for i in ("good", "bigseed", long_id):
        assert_audio_matches(job, meta[i])
        assert len(Path(meta[i]["audio_path"]).name) <= 210


def test_random_replica_sigkills_lose_nothing(ray_local, pipeline_cache_dir, tmp_path):
    """The fault-injection bench, small: SIGKILLs sent to replica processes from outside."""
    import fault_injection

    address = ray_local.get_runtime_context().gcs_address
    # (bench/fault_injection.py runs the full-size version: 200 rows, 20 kills). 120 rows: the tiny random
    # model ends most rows early by EOS, and an idle machine finished 30 of them ~1 s after the first
    # metadata part, before the killer (which waits for that part) had sent a kill.
    [result] = fault_injection.run(rows=120, replica_kill_count=2, driver_kill_count=0, workdir=tmp_path,
                                   cache=pipeline_cache_dir, address=address, min_age_s=1.0)
    assert result["kills"] == 2, repr(result)
    assert result["exit_code"] == 0 and result["job_status"] == "completed", result
    assert (result["lost"], result["recorded_twice"], result["good_rows_error"], result["audio_mismatch"]) == (
        0, 0, 0, 0), result
    assert result["ok_rows"] == result["audio_files"] == 120
