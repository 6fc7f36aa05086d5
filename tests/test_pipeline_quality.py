"""Quality gates and retries through the real pipeline (local Ray, Parquet, tiny Dia)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from pipeline import run_job
from pipeline.quality import retry_seed

SHORT = ["generation.batch_size=4", "cluster.unit_rows=2", "generation.max_new_frames=40"]


def meta(job: Path) -> dict[str, dict]:
    rows = [r for f in sorted((job / "metadata").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return {r["id"]: r for r in rows}


def rows(n: int) -> list[dict]:
    return [{"id": f"q{i}", "text": f"[S1] Quality row {i}. [S2] Is it good?"} for i in range(n)]


def test_a_gate_that_always_fails_rejects_after_its_retries(ray_local, pipeline_cfg, pipeline_parquet, tmp_path):
    data = pipeline_parquet(rows(3))
    job = tmp_path / "job"
    cfg = pipeline_cfg(f"data.input={data}", *SHORT, "quality.duration_s=[1000,2000]", "quality.retries=2")
    summary = run_job(cfg)
    assert summary["status_counts"] == {"rejected": 3}
    for r in meta(job).values():
        assert r["status"] == "rejected" and "quality gates failed after 3 attempts: duration_s" in r["error"]
        own = r["quality_seeds"][0]
        assert r["quality_seeds"] == [retry_seed(own, k) for k in range(3)] and r["quality_attempts"] == 3
        assert r["seed"] in r["quality_seeds"]  # the kept attempt's own seed
        assert (job / r["audio_path"]).exists() and r["duration_s"] > 0  # kept to listen to
    again = run_job(cfg)  # resume: rejected rows are done, nothing runs again
    assert again["this_run"]["rows_done"] == 0 and again["status_counts"] == {"rejected": 3}


def test_metrics_land_in_the_metadata_and_passing_rows_take_one_attempt(ray_local, pipeline_cfg, pipeline_parquet,
                                                                       tmp_path):
    data = pipeline_parquet(rows(2))
    summary = run_job(pipeline_cfg(f"data.input={data}", *SHORT, "quality.duration_s=[0,1000]", "quality.retries=3"))
    assert summary["status_counts"] == {"ok": 2}
    for r in meta(tmp_path / "job").values():
        assert r["quality_attempts"] == 1 and r["quality_seeds"] == [r["seed"]]
        assert r["speaking_rate_wps"] > 0 and r["clipping_ratio"] >= 0.0
        assert r["leading_silence_s"] is not None and r["max_inner_silence_s"] is not None
