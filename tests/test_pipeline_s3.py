"""Jobs on object storage: a real S3 API server (moto's server mode) on 127.0.0.1, a real local Ray
cluster, replicas that upload audio straight to the bucket, the driver writing only metadata."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipeline.errors import PipelineError
from pipeline.driver.job import run_job
from pipeline.replica.actor import Replica

from test_pipeline import scripts



def _put_parquet(client, bucket: str, key: str, rows: list[dict]) -> str:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    client.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
    return f"s3://{bucket}/{key}"


def _objects(client, bucket: str, prefix: str) -> dict[str, tuple[str, int, object]]:
    """key -> (ETag, size, LastModified): an object uploaded again shows a later LastModified even
    when its bytes (and so its ETag) are the same."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: (o["ETag"], o["Size"], o["LastModified"]) for page in pages for o in page.get("Contents", [])}


def _metadata(client, bucket: str, prefix: str) -> list[dict]:
    rows = []
    for key in sorted(_objects(client, bucket, f"{prefix}/metadata/")):
        if "/_parts/" not in key:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            rows += pq.read_table(io.BytesIO(body)).to_pylist()
    return rows


SHORT = ["generation.max_new_frames=30", "generation.batch_size=3", "cluster.unit_rows=2", "cluster.replicas=2"]


def test_input_and_output_on_s3_and_a_resume_uploads_nothing(s3_server, ray_local, pipeline_cfg, bucket):
    rows = scripts(6)
    data = _put_parquet(s3_server, bucket, "in/scripts.parquet", rows)
    out = f"s3://{bucket}/jobs/one"
    summary = run_job(pipeline_cfg(f"data.input={data}", f"output.dir={out}", *SHORT))
    assert summary["status_counts"] == {"ok": 6} and summary["job_dir"] == out
    assert summary["this_run"]["bytes_written"] > 0
    meta = _metadata(s3_server, bucket, "jobs/one")
    assert sorted(r["id"] for r in meta) == [r["id"] for r in rows]
    objects = _objects(s3_server, bucket, "jobs/one/")
    assert "jobs/one/job.json" in objects
    for r in meta:  # each audio object whole, written by a replica, described by its metadata row
        key = f"jobs/one/{r['audio_path']}"
        assert objects[key][1] == r["audio_bytes"]
        wave, sr = sf.read(io.BytesIO(s3_server.get_object(Bucket=bucket, Key=key)["Body"].read()))
        assert sr == 44100 and len(wave) == r["frames"] * 512 and r["replica"].startswith("replica-")
    audio_before = {k: v for k, v in objects.items() if "/audio/" in k}
    time.sleep(1.1)  # LastModified has whole seconds: an upload in the resume would show

    again = run_job(pipeline_cfg(f"data.input={data}", f"output.dir={out}", *SHORT))
    assert again["this_run"]["skipped"] == 6 and again["this_run"]["rows_done"] == 0
    audio_after = {k: v for k, v in _objects(s3_server, bucket, "jobs/one/").items() if "/audio/" in k}
    assert audio_after == audio_before  # nothing uploaded again


def test_a_replica_killed_mid_upload_leaves_nothing_counted(s3_server, ray_local, pipeline_cfg, bucket, tmp_path):
    marker = tmp_path / "died-mid-upload"

    class DieMidUpload(Replica):
        """Uploads half of row03's audio, then its process dies (once)."""

        def __init__(self, settings, ledger=None):
            super().__init__(settings, ledger)
            real = self.storage

            class HalfThenDie:
                def put(self, rel, data):
                    if "row03" in rel and not marker.exists():
                        marker.write_text(str(os.getpid()))
                        out = real.fs.open_output_stream(real.path(rel))
                        out.write(data[: len(data) // 2])
                        os._exit(1)
                    real.put(rel, data)

            if real is not None:
                self.storage = HalfThenDie()

    rows = scripts(5)
    data = _put_parquet(s3_server, bucket, "in/scripts.parquet", rows)
    out = f"s3://{bucket}/jobs/two"
    summary = run_job(pipeline_cfg(f"data.input={data}", f"output.dir={out}", *SHORT), replica_cls=DieMidUpload)
    assert marker.exists() and summary["status_counts"] == {"ok": 5}
    meta = {r["id"]: r for r in _metadata(s3_server, bucket, "jobs/two")}
    assert sorted(meta) == [r["id"] for r in rows]  # once each
    assert meta["row03"]["attempts"] == 1  # the death was charged to the row being uploaded
    objects = _objects(s3_server, bucket, "jobs/two/audio/")
    assert len(objects) == 5
    for r in meta.values():
        assert objects[f"jobs/two/{r['audio_path']}"][1] == r["audio_bytes"]  # no half object anywhere


def test_wrong_credentials_or_a_missing_bucket_fail_before_any_model_loads(s3_server, ray_local, pipeline_cfg,
                                                                           bucket, tmp_path, monkeypatch):
    data = _put_parquet(s3_server, bucket, "in/scripts.parquet", scripts(2))
    loaded = tmp_path / "a-model-was-loaded"

    class Marking(Replica):
        def __init__(self, settings, ledger=None):
            loaded.write_text("yes")
            super().__init__(settings, ledger)

    with pytest.raises(PipelineError, match=r"cannot write to output.dir=s3://no-such-bucket/x: .*NO_SUCH_BUCKET"
                                            r".*bucket exists"):
        run_job(pipeline_cfg(f"data.input={data}", "output.dir=s3://no-such-bucket/x"), replica_cls=Marking)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(PipelineError, match=r"cannot write to output.dir=s3://.*INVALID_ACCESS_KEY_ID.*credentials"):
        run_job(pipeline_cfg(f"data.input=s3://{bucket}/in/scripts.parquet", f"output.dir=s3://{bucket}/y"),
                replica_cls=Marking)
    assert not loaded.exists()
    assert not _objects(s3_server, bucket, "y/")


def test_the_driver_killed_mid_job_then_resumed(s3_server, ray_local, pipeline_cfg, bucket):
    """The driver dies (SIGKILL) while replicas upload; the same command again finishes the job:
    every row once, the rows recorded before the kill kept (their objects not uploaded again)."""
    rows = scripts(16)
    data = _put_parquet(s3_server, bucket, "in/scripts.parquet", rows)
    out = f"s3://{bucket}/jobs/killed"
    overrides = [f"data.input={data}", f"output.dir={out}", "cluster.replicas=1", "generation.max_new_frames=30"]
    cfg = pipeline_cfg(*overrides)
    slow = ["generation.batch_size=1", "cluster.unit_rows=1", "cluster.units_in_flight=1", "output.flush_rows=1"]
    cmd = [sys.executable, "-m", "pipeline", *overrides, *slow, "model=tiny-random",
           f"model.cache_dir={cfg.model.cache_dir}", "output.progress=false",
           f"cluster.address={ray_local.get_runtime_context().gcs_address}"]
    repo = Path(__file__).resolve().parents[1]
    driver = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and not _objects(s3_server, bucket, "jobs/killed/metadata/_parts/"):
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)  # mid-job: some rows recorded, others in flight
    driver.wait()
    recorded = []
    for key in _objects(s3_server, bucket, "jobs/killed/metadata/_parts/"):
        body = s3_server.get_object(Bucket=bucket, Key=key)["Body"].read()
        recorded += pq.read_table(io.BytesIO(body)).to_pylist()
    assert 1 <= len(recorded) < len(rows)
    before = _objects(s3_server, bucket, "jobs/killed/audio/")
    time.sleep(1.1)  # LastModified has whole seconds: an upload in the resume would show

    summary = run_job(cfg)
    meta = {r["id"]: r for r in _metadata(s3_server, bucket, "jobs/killed")}
    assert sorted(meta) == [r["id"] for r in rows] and summary["status_counts"] == {"ok": 16}
    assert summary["this_run"]["skipped"] >= len({r["id"] for r in recorded})
    after = _objects(s3_server, bucket, "jobs/killed/audio/")
    for r in recorded:  # kept as they were: not generated or uploaded again
        key = f"jobs/killed/{r['audio_path']}"
        assert after[key] == before[key] and meta[r["id"]]["audio_bytes"] == r["audio_bytes"]
    assert len(after) == 16
