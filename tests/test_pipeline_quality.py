"""Quality gates and retries through the real pipeline (local Ray, Parquet, tiny Dia)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from pipeline import run_job
from pipeline.quality.gates import retry_seed

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


def test_asr_and_speaker_judges_measure_and_gate_rows(ray_local, pipeline_cfg, pipeline_parquet, tmp_path):
    from pipeline.config import EXAMPLES_DIR
    from tiny_judges import tiny_asr, tiny_speaker

    asr, speaker = tiny_asr(tmp_path / "asr"), tiny_speaker(tmp_path / "sv")
    data = pipeline_parquet([{"id": "plain", "text": "[S1] Hello there. [S2] Hi.", "voice": None},
                             {"id": "voiced", "text": "[S1] My own voice.", "voice": "ann"}])
    summary = run_job(pipeline_cfg(
        f"data.input={data}", *SHORT, f"quality.asr_model={asr}", f"quality.speaker_model={speaker}",
        "quality.max_cer=0.0", "quality.retries=1", f"voices.ann.audio={EXAMPLES_DIR / 'prompt.flac'}",
        "voices.ann.transcript=A short reference clip."))
    m = meta(tmp_path / "job")
    assert summary["status_counts"] == {"rejected": 2}  # random ASR never hears the script exactly
    for r in m.values():
        assert r["cer"] > 0 and r["wer"] > 0 and isinstance(r["asr_text"], str) and r["quality_attempts"] == 2
        assert "cer" in r["error"]
    assert m["plain"]["speaker_sim"] is None  # no prompt to compare with
    assert -1.0 <= m["voiced"]["speaker_sim"] <= 1.0
