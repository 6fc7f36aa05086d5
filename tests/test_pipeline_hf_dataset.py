"""``output=hf-dataset`` round trip: a real job's metadata Parquet loads with Hugging Face ``datasets``.

The job embeds each row's FLAC in an ``audio`` struct column ``{bytes, path}`` and marks it as an
Audio feature. ``datasets`` (4.x and later) decodes Audio cells with torchcodec + FFmpeg, which a
CPU box often lacks; ``Audio(decode=False)`` gives the raw bytes, which soundfile decodes, and
that way must work everywhere.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline import run_job
from test_pipeline import SHORT, metadata_rows, scripts

datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is not installed (pip install -e '.[test]')")


def _torchcodec_decoding_skip_reason() -> str | None:
    """Why ``datasets`` cannot decode Audio cells here (None: it can)."""
    try:
        import torchcodec.decoders  # noqa: F401  (loads the FFmpeg libraries)
    except ImportError as e:
        return f"decoding Audio cells needs torchcodec: {type(e).__name__}: {e}"
    except Exception as e:  # installed, but FFmpeg's shared libraries (or its torch/CUDA ones) do not load
        cause = e.__cause__ or e
        detail = (str(cause).splitlines() or [""])[0]
        return (f"torchcodec is installed but does not load (it needs FFmpeg's shared libraries and a build "
                f"matching this torch): {type(cause).__name__}: {detail}")
    return None


@pytest.fixture
def hf_job(ray_local, pipeline_cfg, pipeline_parquet, tmp_path):
    """A small ``output=hf-dataset`` job: two ok rows and one error row (empty text, so no audio)."""
    rows = scripts(2) + [{"id": "empty", "text": "", "n": 99}]
    data = pipeline_parquet(rows)
    run_job(pipeline_cfg(f"data.input={data}", "output=hf-dataset", *SHORT))
    return tmp_path / "job", rows


def _load(job: Path, cache: Path):
    files = sorted(str(p) for p in (job / "metadata").glob("*.parquet"))
    assert files, "the job wrote no merged metadata"
    return datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(cache))


def test_loads_with_an_audio_feature_and_decodes_without_ffmpeg(hf_job, tmp_path):
    job, rows = hf_job
    cache = tmp_path / "hf-cache"
    ds = _load(job, cache)

    assert isinstance(ds.features["audio"], datasets.Audio), ds.features
    assert ds.num_rows == len(rows) == len(metadata_rows(job))
    assert sorted(ds["id"]) == sorted(r["id"] for r in rows)
    for name in ("key", "status", "error", "audio_path", "sample_rate", "duration_s", "n"):
        assert name in ds.column_names, name

    raw = ds.cast_column("audio", datasets.Audio(decode=False))
    assert raw.features["audio"].decode is False
    by_id = {row["id"]: row for row in raw}
    assert {i: r["status"] for i, r in by_id.items()} == {"row00": "ok", "row01": "ok", "empty": "error"}
    assert {i: r["n"] for i, r in by_id.items()} == {"row00": 0, "row01": 1, "empty": 99}  # carried column

    error = by_id.pop("empty")
    assert error["audio"] is None and error["audio_path"] is None and error["error"]
    for row in by_id.values():
        assert row["error"] is None and row["sample_rate"] == 44100
        on_disk = job / row["audio_path"]
        assert row["audio"]["path"] == on_disk.name
        embedded, sr = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="int32")
        expected, sr_disk = sf.read(on_disk, dtype="int32")
        assert sr == sr_disk == 44100
        assert embedded.ndim == 1 and len(embedded) == round(row["duration_s"] * 44100) > 0
        np.testing.assert_array_equal(embedded, expected)  # sample for sample

    # the datasets cache stayed in tmp_path
    assert any(cache.iterdir())


_NO_DECODING = _torchcodec_decoding_skip_reason()


@pytest.mark.skipif(_NO_DECODING is not None, reason=f"{_NO_DECODING} (Audio(decode=False) + soundfile is tested above)")
def test_decodes_with_torchcodec_when_ffmpeg_is_present(hf_job, tmp_path):
    job, _ = hf_job
    ds = _load(job, tmp_path / "hf-cache")
    for row in ds:
        if row["status"] != "ok":
            assert row["audio"] is None
            continue
        samples = row["audio"].get_all_samples()  # datasets >= 4: a torchcodec AudioDecoder
        assert samples.sample_rate == 44100
        decoded = samples.data.numpy()
        assert decoded.shape[0] == 1  # mono
        expected, _ = sf.read(job / row["audio_path"], dtype="float32")
        np.testing.assert_allclose(decoded[0], expected, atol=1e-6)
