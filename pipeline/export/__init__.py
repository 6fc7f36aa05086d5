"""Exports of a job that training stacks read directly: WebDataset, Lhotse, Lhotse Shar, NeMo, HF Parquet.

    python -m pipeline.export runs/my-job --format webdataset --out s3://bucket/corpus/wds
    dia-export runs/my-job --format lhotse --out runs/my-job-lhotse --status ok,rejected

Only ``ok`` rows by default. The job may be finished or partial, local or a URI, and so may the
destination (pyarrow filesystems, as jobs use). Every file is written whole or not at all, names are
deterministic, and a re-run rewrites the same bytes and removes shards an earlier, larger export of
the same destination left. ``export.json`` (what was written, last) and a dataset card (README.md,
dataset.json) go beside the shards.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import PipelineError
from .card import card_bytes
from .formats import FORMATS, Options
from .sink import Destination, ShardSize
from .source import JobSource

READ_BACK = {
    "webdataset": """import webdataset as wds   # pip install webdataset
ds = wds.WebDataset("{out}/shard-{{000000..{last:06d}}}.tar", shardshuffle=False).decode(wds.torch_audio)
for sample in ds:  # sample["__key__"], sample["flac"] (audio), sample["json"] (metadata, turns)
    ...""",
    "lhotse": """from lhotse import CutSet   # pip install lhotse
cuts = CutSet.from_files(sorted(glob.glob("{out}/cuts.*.jsonl.gz")))  # one supervision per turn when timed
audio = cuts[0].load_audio()""",
    "lhotse-shar": """from lhotse import CutSet   # pip install lhotse
cuts = CutSet.from_shar(in_dir="{out}/shar")   # fields: cuts + recording (the audio is in the tar shards)
for cut in cuts: audio = cut.load_audio()""",
    "nemo": """# NeMo: model.setup_training_data({{"manifest_filepath": "{out}/manifest.000000.jsonl", ...}})
import json; lines = [json.loads(l) for l in open("{out}/manifest.000000.jsonl")]
# audio_filepath, offset, duration, text (and speaker with --split-turns)""",
    "hf": """from datasets import load_dataset, Audio   # pip install datasets
ds = load_dataset("parquet", data_files="{out}/data/*.parquet", split="train").cast_column("audio", Audio())""",
}


@dataclass
class ExportSummary:
    format: str
    out: str
    rows: int = 0
    bytes: int = 0
    files: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    no_audio: int = 0  # rows of the chosen statuses left out because they have no audio (errors)
    seconds: float = 0.0


def export_job(job: str, fmt: str, out: str, *, statuses: tuple[str, ...] = ("ok",),
               shard_size: Optional[ShardSize] = None, options: Options = Options()) -> ExportSummary:
    """Export the rows of ``job`` whose status is in ``statuses`` to ``out`` as ``fmt``."""
    if fmt not in FORMATS:
        raise PipelineError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    try:
        source = JobSource(job)
    except FileNotFoundError as e:
        raise PipelineError(str(e)) from None
    dest = Destination(out)
    _check_destination(source, dest)
    exporter = FORMATS[fmt](source, dest, shard_size, options)
    # speakers: named voices are few and kept by name; an unnamed voice is its row's own, so it is counted
    stats: dict[str, Any] = {"counts": {}, "rows": 0, "seconds": 0.0, "turns": 0, "timed_turns": 0}
    named: set[str] = set()
    unnamed = 0
    try:
        for row in source.rows(set(statuses)):
            if not row.audio_path:  # an error row has no audio: no training format has a place for it
                stats["no_audio"] = stats.get("no_audio", 0) + 1
                continue
            exporter.add(row)
            stats["counts"][row.status] = stats["counts"].get(row.status, 0) + 1
            stats["rows"] += 1
            stats["seconds"] += row.duration_s
            voices = {row.meta.get("voice_s1"), row.meta.get("voice_s2")}
            named.update(s for s in row.speakers if s in voices)
            unnamed += len({s for s in row.speakers if s not in voices})
            stats["turns"] += len(row.turns)
            stats["timed_turns"] += sum(1 for t in row.turns if t.start_s is not None)
            stats.setdefault("sample_rate", row.sample_rate)
            stats.setdefault("model_source", row.meta.get("model_source"))
            stats.setdefault("model_revision", row.meta.get("model_revision"))
        exporter.close()
    except FileNotFoundError as e:  # a row's audio is gone: stop, leaving only whole files
        exporter.abort()
        raise PipelineError(f"{e}; the export stopped (files written so far are whole)") from None
    except BaseException:
        exporter.abort()
        raise
    stats["speakers"] = len(named) + unnamed
    shards = sorted(f for f in dest.written)
    stats["files"] = len(shards)
    last = max(0, exporter.shard - 1)
    read_back = READ_BACK[fmt].format(out=str(dest).rstrip("/"), last=last)
    card_json, readme = card_bytes(source.info, stats, fmt, read_back)
    dest.put("dataset.json", card_json)
    dest.put("README.md", readme)
    summary = ExportSummary(fmt, str(dest), stats["rows"], exporter.bytes, shards, counts=dict(stats["counts"]),
                            seconds=stats["seconds"], no_audio=stats.get("no_audio", 0))
    dest.put("export.json", (json.dumps({"format": fmt, "job": str(source.storage), "statuses": list(statuses),
                                         "rows": summary.rows, "counts": summary.counts, "files": shards,
                                         "left_out_without_audio": summary.no_audio},
                                        indent=2, sort_keys=True) + "\n").encode())
    summary.removed = dest.remove_stale(exporter.patterns())
    summary.files = sorted(dest.written)
    return summary


def _check_destination(source: JobSource, dest: Destination) -> None:
    """The destination must not be the job itself, nor inside its audio/ or metadata/."""
    job, out = str(source.storage).rstrip("/"), str(dest).rstrip("/")
    if out == job or any(out == f"{job}/{d}" or out.startswith(f"{job}/{d}/") for d in ("audio", "metadata")):
        raise PipelineError(f"--out {out}: an export goes beside the job or in a folder of its own, not into the "
                            f"job's own folders (e.g. --out {job}-export or {job}/exports/<format>)")


__all__ = ["export_job", "ExportSummary", "FORMATS", "Options", "ShardSize"]
