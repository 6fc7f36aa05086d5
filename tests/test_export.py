"""Exports read back with the real libraries: a tiny-random job (real Ray, real Parquet) exported to
WebDataset, Lhotse, Lhotse Shar, NeMo and HF Parquet; partial jobs, idempotent re-exports, shard
sizes, hostile text, and the loopback S3 server both as source and destination."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipeline.errors import PipelineError
from pipeline.export import ShardSize, export_job
from pipeline.export.formats import Options

REPO = Path(__file__).resolve().parents[1]
HOSTILE = ("[S1] <!--<script> é 日本語 🎙 & \"quotes\". " + "This is a long line of speech, said once more. " * 30
           + "[S2] Right </script>.")
FORMATS = ["webdataset", "lhotse", "lhotse-shar", "nemo", "hf"]


def run_tiny_job(base: Path, rows: list[dict], cache: Path, *overrides: str) -> dict:
    """A real job (tiny random model, real Ray and Parquet) of ``rows`` into ``base/job``; its summary."""
    from hydra import compose, initialize_config_dir

    from pipeline import run_job

    data = base / "scripts.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data)
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny-random", f"model.cache_dir={cache}", f"output.dir={base / 'job'}",
                                           "output.progress=false", "data=parquet", f"data.input={data}",
                                           "voices=example", "output.report=false", *overrides])
    return run_job(cfg)


@pytest.fixture(scope="module")
def job(ray_local, tmp_path_factory, pipeline_cache_dir) -> Path:
    """One finished job: 4 plain rows, a named-voice row, a long row with hostile text, an error row."""
    base = tmp_path_factory.mktemp("export-job")
    rows = [{"id": f"row{i}", "text": f"[S1] Line number {i}. [S2] Reply {i}! (laughs)", "lang": "en",
             "voice_s1": None} for i in range(4)]  # (from_pylist takes its columns from the first row)
    rows += [{"id": "voiced", "text": "[S1] My own voice. [S2] And mine.", "voice_s1": "example", "lang": "en"},
             {"id": "hostile<1>", "text": HOSTILE, "lang": "xx"}, {"id": "bad", "text": "[S9] no such tag", "lang": "en"}]
    summary = run_tiny_job(base, rows, pipeline_cache_dir, "generation.max_new_frames=40")
    assert summary["status_counts"] == {"ok": 6, "error": 1}, summary["status_counts"]
    return base / "job"


def ok_rows(job: Path) -> dict[str, dict]:
    rows = [r for f in (job / "metadata").glob("*.parquet") for r in pq.read_table(f).to_pylist()]
    return {r["id"]: r for r in rows if r["status"] == "ok"}


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read_back(fmt: str, out: Path) -> dict[str, dict]:
    """id -> what the format's own reader gives for it: samples, duration, the metadata slot, turns."""
    got: dict[str, dict] = {}
    if fmt == "webdataset":
        import webdataset as wds

        shards = sorted(glob.glob(str(out / "shard-*.tar")))
        for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
            audio, rate = sf.read(io.BytesIO(sample["flac"]))
            meta = json.loads(sample["json"])
            got[meta["id"]] = {"samples": len(audio), "rate": rate, "meta": meta, "turns": meta["turns"]}
    elif fmt in ("lhotse", "lhotse-shar"):
        from lhotse import CutSet

        cuts = (CutSet.from_files(sorted(glob.glob(str(out / "cuts.*.jsonl.gz")))) if fmt == "lhotse"
                else CutSet.from_shar(in_dir=str(out / "shar")))
        for cut in cuts:
            audio = cut.load_audio()
            got[cut.custom["id"]] = {"samples": audio.shape[1], "rate": cut.sampling_rate, "meta": cut.custom,
                                     "expected": cut.num_samples, "supervisions": cut.supervisions}
    elif fmt == "nemo":
        for manifest in sorted(out.glob("manifest.*.jsonl")):
            for line in manifest.read_text(encoding="utf-8").splitlines():
                d = json.loads(line)
                info = sf.info(d["audio_filepath"])
                got.setdefault(d["id"], {"samples": info.frames, "rate": info.samplerate, "meta": d, "lines": []})
                got[d["id"]]["lines"].append(d)
    elif fmt == "hf":
        import datasets

        ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train",
                                   cache_dir=str(out.parent / f".hf-cache-{out.name}"))
        assert type(ds.features["audio"]).__name__ == "Audio"
        for row in ds.cast_column("audio", datasets.Audio(decode=False)):
            audio, rate = sf.read(io.BytesIO(row["audio"]["bytes"]))
            got[row["id"]] = {"samples": len(audio), "rate": rate, "meta": row, "turns": row["turns"]}
    return got


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_ok_row_reads_back_with_the_real_library(job, tmp_path, fmt):
    out = tmp_path / fmt
    summary = export_job(str(job), fmt, str(out))
    expected = ok_rows(job)
    assert summary.rows == len(expected) == 6 and summary.counts == {"ok": 6}
    got = read_back(fmt, out)
    assert sorted(got) == sorted(expected)
    for row_id, row in expected.items():
        g = got[row_id]
        assert g["rate"] == 44100 and g["samples"] == round(row["duration_s"] * 44100) > 0, (row_id, g["samples"])
        if "expected" in g:
            assert g["expected"] == g["samples"]
        meta = g["meta"] if fmt != "nemo" else {**g["meta"], **g["meta"]["metadata"]}
        assert meta["id"] == row_id and meta["seed"] == row["seed"] and meta["lang"] == row["lang"]
        if fmt != "nemo":
            assert meta["text"] == row["text"] and meta["cfg_scale"] == row["cfg_scale"]
        else:
            assert meta["script"] == row["text"]
    hostile = got["hostile<1>"]
    if fmt in ("lhotse", "lhotse-shar"):
        assert hostile["supervisions"][0].text.startswith("<!--<script> é 日本語 🎙")
        voiced = got["voiced"]["supervisions"][0]
        assert voiced.custom["turns"][0]["speaker_id"] == "example"  # the voice name is the speaker id
        assert voiced.custom["turns"][1]["speaker_id"] == f"{got['voiced']['meta']['key']}:S2"
    card = json.loads((out / "dataset.json").read_text())
    assert card["synthetic"] is True and card["counts"] == {"ok": 6} and card["generator"]["license"] == "Apache-2.0"
    assert "synthetic speech" in (out / "README.md").read_text()


def test_a_re_export_is_idempotent_and_removes_what_a_larger_one_left(job, tmp_path):
    out = tmp_path / "wds"
    export_job(str(job), "webdataset", str(out), shard_size=ShardSize(rows=2))
    first = digest(out)
    assert sorted(n for n in first if n.startswith("shard-")) == [f"shard-00000{i}.tar" for i in range(3)]
    export_job(str(job), "webdataset", str(out), shard_size=ShardSize(rows=2))
    assert digest(out) == first  # the same bytes
    summary = export_job(str(job), "webdataset", str(out), shard_size=ShardSize(rows=4))
    assert sorted(n for n in digest(out) if n.startswith("shard-")) == ["shard-000000.tar", "shard-000001.tar"]
    assert "shard-000002.tar" in summary.removed
    assert not [p for p in out.rglob(".*")]  # no temporary left


def test_shards_close_at_their_byte_size(job, tmp_path):
    out = tmp_path / "wds"
    export_job(str(job), "webdataset", str(out), shard_size=ShardSize(bytes=1))  # every row closes a shard
    assert len(list(out.glob("shard-*.tar"))) == 6
    assert ShardSize.parse("1000,1GB") == ShardSize(1000, 1 << 30) and ShardSize.parse("512MB").bytes == 512 << 20
    with pytest.raises(ValueError):
        ShardSize.parse("lots")


def test_statuses_choose_rows_and_nemo_splits_turns_only_when_timed(job, tmp_path):
    out = tmp_path / "nemo"
    summary = export_job(str(job), "nemo", str(out), statuses=("ok", "error"), options=Options(split_turns=True))
    assert summary.counts == {"ok": 6} and summary.no_audio == 1  # an error row has no audio to train on
    lines = [json.loads(line) for line in (out / "manifest.000000.jsonl").read_text().splitlines()]
    assert len(lines) == 6  # no alignment model: one line per row, its turns listed
    assert lines[0]["turns"][0]["start_s"] is None


def test_a_partial_job_exports_the_newest_record_of_each_row(job, tmp_path):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(job, partial)
    merged = next((partial / "metadata").glob("*.parquet"))
    table = pq.read_table(merged)
    shard = merged.stem
    parts = partial / "metadata" / "_parts" / shard
    parts.mkdir(parents=True)
    stale = table.slice(0, 3).to_pylist()
    for r in stale:
        r.update(status="error", error="an older attempt")
    pq.write_table(pa.Table.from_pylist(stale, schema=table.schema), parts / "00000000000000000001-1-000001.parquet")
    pq.write_table(table, parts / "00000000000000000002-1-000002.parquet")  # the newer records: ok
    merged.unlink()  # as while the job runs: parts only
    out = tmp_path / "out"
    summary = export_job(str(partial), "nemo", str(out))
    assert summary.counts == {"ok": 6}
    only_errors = export_job(str(partial), "nemo", str(tmp_path / "errors"), statuses=("error",))
    assert only_errors.no_audio == 1 and not only_errors.counts  # the stale errors lost to their newer records


def test_the_destination_cannot_be_the_job_itself(job):
    for out in (job, job / "audio", job / "metadata" / "x"):
        with pytest.raises(PipelineError, match="not into the job's own folders"):
            export_job(str(job), "nemo", str(out))


def test_the_command_line(job, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "pipeline.export", str(job), "--format", "lhotse-shar", "--out",
                          str(tmp_path / "shar"), "--shard-size", "4"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert "6 rows (ok 6)" in run.stdout and len(list((tmp_path / "shar" / "shar").glob("recording.*.tar"))) == 2
    bad = subprocess.run([sys.executable, "-m", "pipeline.export", str(tmp_path / "nothing"), "--format", "nemo",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("dia-export: error:") and "Traceback" not in bad.stderr


def test_from_and_to_the_s3_server(job, tmp_path, s3_server, bucket):
    """The job read from a bucket and the export written to one, then downloaded and read back."""
    for path in job.rglob("*"):
        if path.is_file():
            s3_server.upload_file(str(path), bucket, f"jobs/one/{path.relative_to(job)}")
    for fmt in ("webdataset", "lhotse-shar"):
        summary = export_job(f"s3://{bucket}/jobs/one", fmt, f"s3://{bucket}/exports/{fmt}")
        assert summary.rows == 6
        local = tmp_path / fmt
        listing = s3_server.list_objects_v2(Bucket=bucket, Prefix=f"exports/{fmt}/")["Contents"]
        for obj in listing:
            target = local / obj["Key"][len(f"exports/{fmt}/"):]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3_server.download_file(bucket, obj["Key"], str(target))
        assert sorted(read_back(fmt, local)) == sorted(ok_rows(job))



@pytest.fixture(scope="module")
def aligned_job(ray_local, tmp_path_factory, pipeline_cache_dir) -> Path:
    """A job with a (tiny random) CTC alignment model and exports at its end."""
    from tiny_judges import tiny_asr

    base = tmp_path_factory.mktemp("aligned-job")
    ctc = tiny_asr(base / "ctc")
    rows = [{"id": f"a{i}", "text": f"[S1] Hello there number {i}. [S2] Oh, hi! (laughs) [S1] Bye now.",
             "voice_s1": "example" if i == 0 else None} for i in range(3)]
    summary = run_tiny_job(base, rows, pipeline_cache_dir, "generation.max_new_frames=80",
                           f"quality.align_model={ctc}", "output.export=[lhotse,nemo]")
    assert summary["status_counts"] == {"ok": 3}, summary["status_counts"]
    assert set(summary["exports"]) == {"lhotse", "nemo"} and summary["exports"]["nemo"]["rows"] == 3
    return base / "job"


def test_aligned_turns_become_supervisions_and_manifest_lines(aligned_job, tmp_path):
    from lhotse import CutSet

    rows = [r for f in (aligned_job / "metadata").glob("*.parquet") for r in pq.read_table(f).to_pylist()]
    for r in rows:
        assert r["align_problem"] is None and [t["speaker"] for t in r["turns"]] == ["S1", "S2", "S1"]
        times = [(t["start_s"], t["end_s"]) for t in r["turns"]]
        assert all(0 <= s < e <= r["duration_s"] + 1e-6 for s, e in times) and times == sorted(times), times
    cuts = CutSet.from_files(sorted(glob.glob(str(aligned_job / "exports" / "lhotse" / "cuts.*.jsonl.gz"))))
    by_id = {c.custom["id"]: c for c in cuts}
    first = by_id["a0"]
    assert [s.speaker for s in first.supervisions] == ["example", f"{first.custom['key']}:S2", "example"]
    assert [round(s.start, 3) for s in first.supervisions] == [t["start_s"] for t in
                                                                next(r for r in rows if r["id"] == "a0")["turns"]]
    assert first.load_audio().shape[1] == first.num_samples

    out = tmp_path / "nemo"
    export_job(str(aligned_job), "nemo", str(out), options=Options(split_turns=True, speaker_audio=True))
    lines = [json.loads(line) for line in (out / "manifest.000000.jsonl").read_text().splitlines()]
    assert len(lines) == 9 and {line["tag"] for line in lines} == {"S1", "S2"}
    for line in lines:
        info = sf.info(line["audio_filepath"])
        assert 0 <= line["offset"] and line["offset"] + line["duration"] <= info.duration + 1e-3
        tracks = line["speaker_audio"]
        assert sorted(tracks) == ["s1", "s2"]
        s1, rate = sf.read(tracks["s1"])
        assert len(s1) == info.frames  # same length as the clip, silence outside [S1]'s turns
        row = next(r for r in rows if r["id"] == line["id"])
        s2_turn = row["turns"][1]
        inside = s1[int(s2_turn["start_s"] * rate) + 1: int(s2_turn["end_s"] * rate) - 1]
        assert len(inside) and not inside.any()
