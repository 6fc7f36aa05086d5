"""End-to-end pipeline tests: a real local Ray cluster, real Parquet, the tiny random Dia and its tiny DAC.

Fault tests subclass the real Replica inside the test (so Ray ships the class by value) and make
the replica process die with ``os._exit`` at a chosen moment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipeline import run_job
from pipeline.config import EXAMPLES_DIR
from pipeline.errors import InputError, PipelineError
from pipeline.replica.actor import Replica

REPO = Path(__file__).resolve().parents[1]
SHORT = ["generation.max_new_frames=40", "generation.batch_size=2", "cluster.unit_rows=3"]


def metadata_rows(job: Path) -> list[dict]:
    """Every merged metadata row of a job (metadata/*.parquet, not the parts)."""
    files = sorted((job / "metadata").glob("*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def assert_audio_matches(job: Path, row: dict) -> None:
    path = job / row["audio_path"]
    assert path.resolve().is_relative_to(job.resolve())
    data, sr = sf.read(path)
    assert sr == 44100 == row["sample_rate"] and data.ndim == 1
    assert len(data) == round(row["duration_s"] * 44100) > 0
    assert row["frames"] * 512 == len(data)


def scripts(n: int, prefix: str = "row") -> list[dict]:
    return [
        {
            "id": f"{prefix}{i:02d}",
            "text": f"[S1] Line number {i}. [S2] Reply {i}! (laughs)",
            "n": i,
        }
        for i in range(n)
    ]


def test_job_end_to_end_and_rerun_does_nothing(ray_local, pipeline_cfg, pipeline_parquet, tmp_path):
    shutil.copy(EXAMPLES_DIR / "prompt.flac", tmp_path / "data_prompt.flac")
    rows = scripts(6)
    rows[0].update(
        seed=42,
        cfg_scale=2.0,
        audio_prompt=str(tmp_path / "data_prompt.flac"),
        prompt_transcript="[S1] A reference clip.",
    )
    for r in rows[1:]:
        r.update(seed=None, cfg_scale=None, audio_prompt=None, prompt_transcript=None)
    data = pipeline_parquet(rows)
    job = tmp_path / "job"
    cfg = pipeline_cfg(f"data.input={data}", "cluster.replicas=2", "output=hf-dataset", *SHORT)
    summary = run_job(cfg)

    meta = metadata_rows(job)
    assert sorted(r["id"] for r in meta) == [r["id"] for r in rows]
    assert all(r["status"] == "ok" and r["error"] is None for r in meta), meta
    for r in meta:
        assert_audio_matches(job, r)
        assert r["ended_by_eos"] in (True, False) and r["generation_s"] > 0
        assert r["model_source"] == "tiny-random (seed 0)" and r["model_schema"] == "0626"
        assert r["replica"].startswith("replica-") and r["device"] == "cpu" and r["node"]
        assert r["n"] == int(r["id"][3:])  # carried-through column
        assert sf.read(__import__("io").BytesIO(r["audio"]["bytes"]))[1] == 44100  # embedded copy
    by_id = {r["id"]: r for r in meta}
    assert by_id["row00"]["seed"] == 42 and by_id["row00"]["cfg_scale"] == 2.0
    assert by_id["row00"]["prompt_frames"] == 259  # 3 s prompt at ~86.13 frames/s
    assert by_id["row01"]["cfg_scale"] == 3.0 and by_id["row01"]["max_new_frames"] == 40
    assert len({r["seed"] for r in meta}) == 6

    info = json.loads((job / "job.json").read_text())
    assert info["status"] == "completed" and info["summary"]["status_counts"] == {"ok": 6}
    assert info["config"]["data"]["input"] == str(data) and info["versions"]["ray"]
    assert set(summary["replicas"]) == {"replica-0", "replica-1"}
    assert sum(r["rows_ok"] for r in summary["replicas"].values()) == 6
    assert all(0 <= r["busy_fraction"] <= 1 for r in summary["replicas"].values())
    assert summary["this_run"]["audio_s"] == pytest.approx(
        sum(r["duration_s"] for r in meta), abs=2e-3
    )
    assert not (job / "metadata" / "_parts").exists()

    # the same job again: nothing left to do, nothing rewritten
    stamps = {r["id"]: (job / r["audio_path"]).stat().st_mtime_ns for r in meta}
    again = run_job(cfg)
    assert again["this_run"]["rows_done"] == 0 and again["this_run"]["skipped"] == 6
    assert {
        r["id"]: (job / r["audio_path"]).stat().st_mtime_ns for r in metadata_rows(job)
    } == stamps
    assert len(json.loads((job / "job.json").read_text())["runs"]) == 2

    # other generation settings in the same directory are refused; overwrite=true starts over
    with pytest.raises(PipelineError, match="generation.cfg_scale"):
        run_job(pipeline_cfg(f"data.input={data}", "generation.cfg_scale=2", *SHORT))
    (job / "audio" / "scripts" / "stale.flac").write_bytes(b"old")
    fresh = run_job(
        pipeline_cfg(f"data.input={data}", "generation.cfg_scale=2", "overwrite=true", *SHORT)
    )
    assert (
        fresh["this_run"]["rows_done"] == 6
        and not (job / "audio" / "scripts" / "stale.flac").exists()
    )
    assert {r["cfg_scale"] for r in metadata_rows(job)} == {2.0}


def test_bad_rows_and_unsafe_ids_never_stop_the_job(
    ray_local, pipeline_cfg, pipeline_parquet, tmp_path
):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notaudio.wav").write_text("this is not audio")
    good = "[S1] Hello there. [S2] Hi!"
    rows = [
        {"id": "good", "text": good, "top_k": None, "audio_prompt": None, "max_new_frames": None},
        {"id": "empty", "text": "", "top_k": None, "audio_prompt": None, "max_new_frames": None},
        {
            "id": "toolong",
            "text": "[S1] " + "word " * 400,
            "top_k": None,
            "audio_prompt": None,
            "max_new_frames": None,
        },
        {
            "id": "badtag",
            "text": "[S3] Who am I?",
            "top_k": None,
            "audio_prompt": None,
            "max_new_frames": None,
        },
        {
            "id": "nonnumeric",
            "text": good,
            "top_k": "lots",
            "audio_prompt": None,
            "max_new_frames": None,
        },
        {
            "id": "noprompt",
            "text": good,
            "top_k": None,
            "audio_prompt": "missing.wav",
            "max_new_frames": None,
        },
        {
            "id": "badprompt",
            "text": good,
            "top_k": None,
            "audio_prompt": "notaudio.wav",
            "max_new_frames": None,
        },
        {
            "id": "toomany",
            "text": good,
            "top_k": None,
            "audio_prompt": None,
            "max_new_frames": "5000",
        },
        {
            "id": "../escape",
            "text": good,
            "top_k": None,
            "audio_prompt": None,
            "max_new_frames": None,
        },
        {
            "id": "/etc/passwd",
            "text": good,
            "top_k": None,
            "audio_prompt": None,
            "max_new_frames": None,
        },
        {
            "id": "nul\x00byte",
            "text": good,
            "top_k": None,
            "audio_prompt": None,
            "max_new_frames": None,
        },
        {
            "id": "x" * 300,
            "text": good,
            "top_k": None,
            "audio_prompt": None,
            "max_new_frames": None,
        },
        {"id": "dup", "text": good, "top_k": None, "audio_prompt": None, "max_new_frames": None},
        {
            "id": "dup",
            "text": "[S2] The other dup.",
            "top_k": None,
            "audio_prompt": None,
            "max_new_frames": None,
        },
        {"id": "DUP", "text": good, "top_k": None, "audio_prompt": None, "max_new_frames": None},
    ]
    data = pipeline_parquet(rows)
    job = tmp_path / "out" / "job"
    run_job(pipeline_cfg(f"data.input={data}", *SHORT, out=job))

    meta = metadata_rows(job)
    assert len(meta) == len(rows)  # exactly one metadata row per input row
    status = {}
    for r in meta:
        status.setdefault(r["id"], []).append(r)
    errors = {i: rs[0]["error"] for i, rs in status.items() if rs[0]["status"] == "error"}
    assert set(errors) == {
        "empty",
        "toolong",
        "badtag",
        "nonnumeric",
        "noprompt",
        "badprompt",
        "toomany",
    }
    assert "top_k" in errors["nonnumeric"] and "not found" in errors["noprompt"]
    assert (
        "not a readable audio file" in errors["badprompt"] and "max_new_frames" in errors["toomany"]
    )
    ok = [r for r in meta if r["status"] == "ok"]
    assert len(ok) == 8 and len(status["dup"]) == 2
    paths = [r["audio_path"] for r in ok]
    assert len(set(paths)) == len(paths) and len({p.lower() for p in paths}) == len(paths)
    for r in ok:
        assert_audio_matches(job, r)
        assert (job / r["audio_path"]).resolve().parent == (job / "audio" / "scripts").resolve()
    # nothing was written outside the job directory
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["job"]
    assert not list(tmp_path.glob("**/passwd*")) or all(
        p.resolve().is_relative_to(job.resolve()) for p in tmp_path.glob("**/passwd*")
    )


def test_in_job_sweep_shares_one_job(ray_local, pipeline_cfg, pipeline_parquet, tmp_path):
    data = pipeline_parquet(scripts(2))
    job = tmp_path / "job"
    run_job(
        pipeline_cfg(
            f"data.input={data}", "sweep.cfg_scale=[1.5,4]", "sweep.temperature=[0.8,1.2]", *SHORT
        )
    )
    meta = metadata_rows(job)
    assert len(meta) == 8 and all(r["status"] == "ok" for r in meta)
    assert {(r["id"], r["cfg_scale"], r["temperature"]) for r in meta} == {
        (i, c, t) for i in ("row00", "row01") for c in (1.5, 4.0) for t in (0.8, 1.2)
    }
    assert {r["sweep_point"] for r in meta} == {
        "cfg_scale-1.5__temperature-0.8",
        "cfg_scale-1.5__temperature-1.2",
        "cfg_scale-4.0__temperature-0.8",
        "cfg_scale-4.0__temperature-1.2",
    }
    assert len({r["audio_path"] for r in meta}) == 8
    assert len({r["seed"] for r in meta if r["id"] == "row00"}) == 1  # paired across the grid


def test_replica_killed_mid_job_requeues_its_rows(
    ray_local, pipeline_cfg, pipeline_parquet, tmp_path
):
    marker = tmp_path / "crashed-once"

    class CrashOnce(Replica):
        """Dies (the whole process) as its third row takes a slot, once per test."""

        admitted = 0

        def _admitted(self, p):
            type(self).admitted += 1
            if type(self).admitted == 3 and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)

    rows = scripts(10)
    data = pipeline_parquet(rows)
    job = tmp_path / "job"
    summary = run_job(
        pipeline_cfg(f"data.input={data}", "cluster.replicas=1", *SHORT), replica_cls=CrashOnce
    )
    assert marker.exists()
    meta = metadata_rows(job)
    assert sorted(r["id"] for r in meta) == [r["id"] for r in rows]  # no losses, no duplicates
    assert all(r["status"] == "ok" for r in meta)
    assert any(r["attempts"] == 1 for r in meta)  # the rows in flight were re-queued once
    assert summary["replicas"]["replica-0"]["crashes"] == 1
    for r in meta:
        assert_audio_matches(job, r)


def test_poison_row_is_given_up_and_the_job_goes_on(
    ray_local, pipeline_cfg, pipeline_parquet, tmp_path
):
    class Poisoned(Replica):
        """The POISON script kills the replica process as it takes a slot."""

        def _admitted(self, p):
            if "POISON" in (p.row.text or ""):
                os._exit(1)

    rows = scripts(7)
    rows.insert(3, {"id": "poison", "text": "[S1] POISON pill.", "n": 99})
    data = pipeline_parquet(rows)
    job = tmp_path / "job"
    summary = run_job(
        pipeline_cfg(
            f"data.input={data}",
            "cluster.replicas=2",
            "cluster.max_attempts=2",
            "cluster.unit_rows=4",
            "generation.batch_size=4",
            "generation.max_new_frames=40",
        ),
        replica_cls=Poisoned,
    )
    meta = {r["id"]: r for r in metadata_rows(job)}
    assert len(meta) == len(rows)
    assert meta["poison"]["status"] == "error" and meta["poison"]["attempts"] == 2
    assert "replica failed 2 times" in meta["poison"]["error"]
    assert all(r["status"] == "ok" for i, r in meta.items() if i != "poison")
    assert summary["status_counts"] == {"ok": 7, "error": 1}


def test_resume_after_the_driver_is_killed(ray_local, pipeline_cfg, pipeline_parquet, tmp_path):
    rows = scripts(24)
    data = pipeline_parquet(rows)
    job = tmp_path / "job"
    overrides = [f"data.input={data}", "cluster.replicas=1", "generation.max_new_frames=40"]
    # first run: one row per batch, metadata written after every row, so a kill lands mid-job
    slow = [
        "generation.batch_size=1",
        "cluster.unit_rows=1",
        "cluster.units_in_flight=1",
        "output.flush_rows=1",
    ]
    # the resume below batches differently: execution settings do not change the audio
    cfg = pipeline_cfg(*overrides)
    address = ray_local.get_runtime_context().gcs_address
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        *overrides,
        *slow,
        "model=tiny-random",
        f"model.cache_dir={cfg.model.cache_dir}",
        f"output.dir={job}",
        "output.progress=false",
        f"cluster.address={address}",
    ]
    driver = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    parts = job / "metadata" / "_parts"
    deadline = time.time() + 120
    while time.time() < deadline and not list(parts.glob("*/*.parquet")):
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver dies mid-job
    driver.wait()
    done_before = {
        r["id"]: r for f in parts.glob("*/*.parquet") for r in pq.read_table(f).to_pylist()
    }
    assert 1 <= len(done_before) < len(rows)
    stamps = {i: (job / r["audio_path"]).stat().st_mtime_ns for i, r in done_before.items()}

    summary = run_job(cfg)
    meta = metadata_rows(job)
    assert sorted(r["id"] for r in meta) == [r["id"] for r in rows]
    assert all(r["status"] == "ok" for r in meta)
    assert summary["this_run"]["skipped"] == len(done_before)
    assert summary["this_run"]["rows_done"] == len(rows) - len(done_before)
    for i, stamp in stamps.items():  # finished rows were not generated again
        assert (job / done_before[i]["audio_path"]).stat().st_mtime_ns == stamp
    runs = json.loads((job / "job.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["aborted", "completed"]


def test_missing_text_column_fails_before_any_model_loads(pipeline_cfg, pipeline_parquet, tmp_path):
    data = pipeline_parquet([{"id": "a", "script": "[S1] hi"}])
    with pytest.raises(InputError, match="'text'"):
        run_job(pipeline_cfg(f"data.input={data}"))
    assert not (tmp_path / "job").exists()  # failed before writing anything


def test_a_model_that_cannot_load_fails_the_job_with_its_reason(
    ray_local, pipeline_cfg, pipeline_parquet, tmp_path
):
    data = pipeline_parquet(scripts(2))
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(PipelineError, match="no-such-checkpoint"):
        run_job(pipeline_cfg(f"data.input={data}", f"model.source={missing}"))
    info = json.loads((tmp_path / "job" / "job.json").read_text())
    assert info["status"] == "failed" and "no-such-checkpoint" in info["runs"][-1]["error"]


def test_readme_main_command_runs_the_bundled_example(pipeline_cache_dir, tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "model=tiny-random",
        f"model.cache_dir={pipeline_cache_dir}",
        f"output.dir={tmp_path / 'job'}",
        "output.progress=false",
        "cluster.num_cpus=2",
    ]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "rows: 20 (ok=20)" in out.stdout and "throughput:" in out.stdout
    meta = metadata_rows(tmp_path / "job")
    assert len(meta) == 20 and {r["topic"] for r in meta} >= {"voice-clone", "smalltalk"}
    clone = next(r for r in meta if r["id"] == "clone")
    assert clone["status"] == "ok" and clone["prompt_frames"] > 0


def test_hydra_multirun_gives_each_point_its_own_job(ray_local, pipeline_cache_dir, tmp_path):
    address = ray_local.get_runtime_context().gcs_address
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "-m",
        "model=tiny-random",
        f"model.cache_dir={pipeline_cache_dir}",
        "generation.cfg_scale=2,4",
        "data.limit=2",
        "generation.max_new_frames=30",
        "output.progress=false",
        f"cluster.address={address}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # each point gets the folder a single run with its overrides would get; jobs are siblings
    names = {f"example-tiny-random__generation.cfg_scale={s},generation.max_new_frames=30" for s in (2, 4)}
    assert {p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()} == names
    for scale in (2, 4):
        job = tmp_path / "sweep" / f"example-tiny-random__generation.cfg_scale={scale},generation.max_new_frames=30"
        assert not [p for p in job.iterdir() if p.is_dir() and (p / "job.json").exists()]  # nothing nested
        meta = metadata_rows(job)
        assert len(meta) == 2 and {r["cfg_scale"] for r in meta} == {float(scale)}
        assert json.loads((job / "job.json").read_text())["config"]["output"]["dir"] == str(job)


def test_shards_are_planned_as_the_queue_needs_them(ray_local, pipeline_cfg, pipeline_parquet, tmp_path, monkeypatch):
    """The driver holds the rows of the shards in flight, not the job's: with a small queue, each shard
    is planned when the queue runs low and released once its rows are recorded. An id used in two
    shards still gets one key per row, and a resume skips everything."""
    import pipeline.driver.job as job_module

    loaded_at_plan = []
    real = job_module.index_shard

    def watching(cfg, plan, shard, *args):
        loaded_at_plan.append(len(plan.index))
        return real(cfg, plan, shard, *args)

    monkeypatch.setattr(job_module, "index_shard", watching)
    monkeypatch.setattr(job_module, "QUEUE_ROWS", 2)
    for k in range(4):
        rows = scripts(3, prefix=f"s{k}-")
        if k == 3:
            rows[0]["id"] = "s0-00"  # the same id as a row of shard 0
        pipeline_parquet(rows, name=f"part-{k}.parquet")
    folder = tmp_path / "data"
    summary = run_job(pipeline_cfg(f"data.input={folder}", *SHORT))
    assert summary["status_counts"] == {"ok": 12} and summary["planned"] == 12
    assert loaded_at_plan[0] == 0 and max(loaded_at_plan) <= 2  # never the whole job at once
    meta = metadata_rows(tmp_path / "job")
    assert len(meta) == 12 and len({r["key"] for r in meta}) == 12
    assert sorted(r["key"] for r in meta if r["id"] == "s0-00") == ["s0-00@part-0:0", "s0-00@part-3:0"]
    again = run_job(pipeline_cfg(f"data.input={folder}", *SHORT))
    assert again["this_run"]["skipped"] == 12 and again["this_run"]["rows_done"] == 0
