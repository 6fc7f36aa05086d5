"""The command line as a user meets it: typos and missing settings, jobs whose rows all fail, where
job folders go, and what a finished job leaves outside its folder. Each test runs the real
``python -m pipeline`` in a fresh process (with its own in-process Ray where one is needed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import EXAMPLES_DIR

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    base = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("typo, hint", [
    ("+generation.cfg_scal=2", "did you mean generation.cfg_scale"),
    ("+foo=1", "foo"),
    ("+cluster.replica=2", "did you mean cluster.replicas"),
])
def test_unknown_keys_are_errors_however_spelt_and_leave_no_folder(typo, hint, tmp_path, pipeline_cache_dir):
    out = run_cli("model=tiny-random", f"model.cache_dir={pipeline_cache_dir}", typo, cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "unknown setting" in text and hint in text
    assert "Traceback" not in text
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no half-made job folder


def test_parquet_data_without_input_says_what_to_set(tmp_path, pipeline_cache_dir):
    out = run_cli("model=tiny-random", f"model.cache_dir={pipeline_cache_dir}", "data=parquet", cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "data.input is not set: add data.input=" in text and "Traceback" not in text
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_job_whose_rows_all_fail_lists_them_and_exits_3(tmp_path, pipeline_cache_dir):
    data = tmp_path / "bad.parquet"
    rows = [{"id": f"empty{i}", "text": ""} for i in range(3)]
    rows += [{"id": "badtag", "text": "[S3] Who am I?"}, {"id": "null", "text": None}]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("text", pa.string())])), data)
    out = run_cli("model=tiny-random", f"model.cache_dir={pipeline_cache_dir}", "data=parquet",
                  f"data.input={data}", "output.progress=false", "generation.cfg_scale=2", cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 3, text
    assert "errors: 5 rows, by reason:" in text
    assert "'empty0', 'empty1', 'empty2'" in text and "'badtag'" in text and "'null'" in text
    assert "Traceback" not in text
    # default job folders are siblings: <data>-<model> and <data>-<model>__<overrides>
    job = tmp_path / "runs" / "scripts-tiny-random__generation.cfg_scale=2"
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [job.name]
    log = (job / "pipeline.log").read_text()
    assert "errors: 5 rows, by reason:" in log and "'badtag'" in log  # the log says which rows, too


def test_nothing_is_left_in_the_temp_folder_after_a_job(pipeline_cache_dir):
    """A replica used to keep prompt copies in /tmp/dia-prompts-* and never remove them. With TMPDIR
    pointing at a private folder, only Ray's own session folder may remain there."""
    private = Path(tempfile.mkdtemp(prefix="dt-", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        work = private / "work"
        work.mkdir()
        shutil.copy(EXAMPLES_DIR / "prompt.flac", work / "voice.flac")
        data = work / "rows.parquet"
        pq.write_table(pa.Table.from_pylist([
            {"id": "clone", "text": "[S1] Hello again.", "audio_prompt": "voice.flac",
             "prompt_transcript": "[S1] A reference clip."},
            {"id": "plain", "text": "[S2] And hello to you.", "audio_prompt": None, "prompt_transcript": None},
        ]), data)
        job = work / "job"
        out = run_cli("model=tiny-random", f"model.cache_dir={pipeline_cache_dir}", "data=parquet",
                      f"data.input={data}", f"output.dir={job}", "output.progress=false",
                      "generation.max_new_frames=20", "cluster.num_cpus=2",
                      cwd=REPO, env={"TMPDIR": str(private), "RAY_TMPDIR": str(private)})
        assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
        assert "rows: 2 (ok=2)" in out.stdout + out.stderr
        assert sorted(p.name for p in private.iterdir()) == ["ray", "work"]
    finally:
        shutil.rmtree(private, ignore_errors=True)
