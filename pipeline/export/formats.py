"""The export formats: each turns ``ExportRow``s into the files one training stack reads.

- ``webdataset``: tar shards of samples ``KEY.<ext>`` (the audio as the job wrote it) + ``KEY.json``.
- ``lhotse``: ``cuts.NNNNNN.jsonl.gz`` (MonoCuts with their Recording inline) beside
  ``recordings.NNNNNN.jsonl.gz`` and ``supervisions.NNNNNN.jsonl.gz``; recordings point at the job's
  audio where it is (a local path or the URI).
- ``lhotse-shar``: ``shar/cuts.NNNNNN.jsonl.gz`` + ``shar/recording.NNNNNN.tar`` (the audio inside),
  self-contained; ``shar/`` holds nothing else, since lhotse takes every name there as a field.
- ``nemo``: JSON-lines manifests ``manifest.NNNNNN.jsonl`` (``audio_filepath``, ``duration``, ``text``,
  ``offset``, ``speaker`` and our own keys); one line per turn with ``split_turns``.
- ``hf``: Parquet shards ``data/train-NNNNN.parquet`` with an ``audio`` column (bytes and name) that
  Hugging Face ``datasets`` reads as an Audio feature, and the metadata columns.

Files are deterministic (tar members with fixed owners and times, gzip without a time stamp), so a
re-export of the same job writes the same bytes. A shard closes at the ``ShardSize``; the manifest of
a shard is committed after its data (a reader that goes by manifests never sees a half shard).
"""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from dataclasses import dataclass
from typing import IO, Any, Callable, ClassVar, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .sink import Destination, ShardSize
from .source import ExportRow, JobSource

LANGUAGE = "en"


@dataclass(frozen=True)
class Options:
    split_turns: bool = False  # nemo: one manifest line per timed turn
    speaker_audio: bool = False  # also one file per speaker: its turns, silence elsewhere, same length


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def _json_line(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


class _Counter(io.RawIOBase):
    """Counts what passes through to ``inner`` (a gzip stream's size before compression is not ours to ask)."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner, self.count = inner, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.inner.write(data)
        self.count += len(data)
        return len(data)


class _File:
    """One file of a shard: opened on the destination, wrapped as its kind needs, committed on close."""

    def __init__(self, dest: Destination, rel: str, kind: str) -> None:
        self._ctx = dest.open(rel)
        self.raw = self._ctx.__enter__()
        self.kind = kind
        self.counter = _Counter(self.raw)
        self.tar: Optional[tarfile.TarFile] = None
        self.gz: Optional[gzip.GzipFile] = None
        self.members_bytes = 0
        if kind == "tar":
            self.tar = tarfile.open(fileobj=self.counter, mode="w|", format=tarfile.USTAR_FORMAT)
        elif kind == "jsonl.gz":
            self.gz = gzip.GzipFile(fileobj=self.counter, mode="wb", mtime=0, filename="")
        self.parquet: Optional[pq.ParquetWriter] = None

    @property
    def size(self) -> int:
        return max(self.counter.count, self.members_bytes)  # a tar stream holds back up to 10 KB

    def member(self, name: str, data: bytes) -> None:
        assert self.tar is not None
        _tar_member(self.tar, name, data)
        self.members_bytes += 512 + -(-len(data) // 512) * 512  # header + padded data

    def line(self, obj: Any) -> None:
        (self.gz if self.kind == "jsonl.gz" else self.counter).write(_json_line(obj))

    def commit(self) -> None:
        if self.kind == "tar" and self.tar is not None:
            self.tar.close()
        elif self.kind == "jsonl.gz" and self.gz is not None:
            self.gz.close()
        elif self.parquet is not None:
            self.parquet.close()
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        try:
            self._ctx.__exit__(RuntimeError, RuntimeError("export stopped"), None)
        except RuntimeError:
            pass


class Exporter:
    """Base: rows in (``add``), shards out. Subclasses say which files a shard has and what a row adds."""

    name: ClassVar[str]
    default_size: ClassVar[ShardSize]
    files: ClassVar[dict[str, tuple[str, str]]]  # field -> (pattern with %d, kind); data first, manifest last
    needs_audio: ClassVar[bool] = True

    def __init__(self, source: JobSource, dest: Destination, size: Optional[ShardSize], options: Options) -> None:
        self.source, self.dest, self.options = source, dest, options
        self.size = size or self.default_size
        self.shard = 0
        self.rows_in_shard = 0
        self.open: dict[str, _File] = {}
        self.rows = 0
        self.bytes = 0
        self.extra: list[str] = []  # files outside the shards (per-speaker audio)

    @classmethod
    def patterns(cls) -> list[str]:
        """Globs of every file name this format writes (stale ones of an earlier export are removed)."""
        globs = [pattern.replace("%06d", "*").replace("%05d", "*") for pattern, _ in cls.files.values()]
        return globs + ["speakers/*"]

    def _ensure(self) -> dict[str, _File]:
        if not self.open:
            for field_name, (pattern, kind) in self.files.items():
                self.open[field_name] = _File(self.dest, pattern % self.shard, kind)
        return self.open

    def add(self, row: ExportRow) -> None:
        files = self._ensure()
        self.write_row(files, row)
        self.rows += 1
        self.rows_in_shard += 1
        if self.size.full(self.rows_in_shard, sum(f.size for f in files.values())):
            self._close_shard()

    def _close_shard(self) -> None:
        for f in self.open.values():  # in field order: the data before its manifest
            self.bytes += f.size
            f.commit()
        self.open = {}
        self.shard += 1
        self.rows_in_shard = 0

    def close(self) -> None:
        if self.open:
            self._close_shard()

    def abort(self) -> None:
        for f in self.open.values():
            f.abort()
        self.open = {}

    def write_row(self, files: dict[str, _File], row: ExportRow) -> None:  # pragma: no cover (abstract)
        raise NotImplementedError

    # -- shared pieces -------------------------------------------------------------------------
    def sample_meta(self, row: ExportRow) -> dict[str, Any]:
        """What goes in a format's metadata slot: every metadata column and the turns."""
        return {**row.meta, "turns": row.turn_records(), "sample_key": row.sample_key}

    def speaker_tracks(self, row: ExportRow, audio: bytes) -> dict[str, bytes]:
        """With ``speaker_audio``: per speaker tag, the row's audio with only that speaker's turns kept."""
        if not self.options.speaker_audio or not row.timed:
            return {}
        import soundfile as sf

        from ..audio import FORMATS, encode

        wave, rate = sf.read(io.BytesIO(audio), dtype="float32", always_2d=False)
        fmt = row.audio_ext if row.audio_ext in FORMATS else "flac"
        tracks = {}
        for tag in sorted({t.speaker for t in row.turns}):
            keep = np.zeros(len(wave), dtype=bool)
            for t in row.turns:
                if t.speaker == tag:
                    keep[int(t.start_s * rate): int(np.ceil(t.end_s * rate))] = True
            tracks[tag.lower()] = encode(np.where(keep, wave, 0.0), rate, fmt)
        return tracks

    def write_speaker_files(self, row: ExportRow, audio: bytes) -> dict[str, str]:
        """Per-speaker tracks as files under ``speakers/`` (formats whose shards hold no extra members)."""
        paths = {}
        for tag, data in self.speaker_tracks(row, audio).items():
            rel = f"speakers/{row.sample_key}.{tag}.{row.audio_ext}"
            self.dest.put(rel, data)
            paths[tag] = self.dest.storage.uri(rel)
        return paths


class WebDataset(Exporter):
    name = "webdataset"
    default_size = ShardSize(bytes=1 << 30)
    files = {"tar": ("shard-%06d.tar", "tar")}

    def write_row(self, files: dict[str, _File], row: ExportRow) -> None:
        audio = self.source.audio(row)
        tar = files["tar"]
        tar.member(f"{row.sample_key}.{row.audio_ext}", audio)
        tracks = self.speaker_tracks(row, audio)
        for tag, data in tracks.items():
            tar.member(f"{row.sample_key}.{tag}.{row.audio_ext}", data)
        tar.member(f"{row.sample_key}.json", _json_line(self.sample_meta(row)))


def _supervisions(row: ExportRow, recording_id: str) -> list[dict[str, Any]]:
    """One supervision per timed turn; without times one for the whole clip, its turns in ``custom``."""
    if row.timed:
        return [{"id": f"{recording_id}-{k:03d}", "recording_id": recording_id, "start": t.start_s,
                 "duration": round(max(0.0, t.end_s - t.start_s), 3), "channel": 0, "text": t.text,
                 "language": LANGUAGE, "speaker": s, "custom": {"tag": t.speaker}}
                for k, (t, s) in enumerate(zip(row.turns, row.speakers))]
    speakers = sorted(set(row.speakers))
    return [{"id": f"{recording_id}-all", "recording_id": recording_id, "start": 0.0, "duration": row.duration_s,
             "channel": 0, "text": " ".join(t.text for t in row.turns), "language": LANGUAGE,
             "speaker": speakers[0] if len(speakers) == 1 else None, "custom": {"turns": row.turn_records()}}]


def _recording(row: ExportRow, source: dict[str, Any]) -> dict[str, Any]:
    return {"id": row.sample_key, "sources": [{"type": source["type"], "channels": [0], "source": source["source"]}],
            "sampling_rate": row.sample_rate, "num_samples": row.num_samples, "duration": row.duration_s,
            "channel_ids": [0]}


def _cut(row: ExportRow, recording: dict[str, Any], custom: dict[str, Any]) -> dict[str, Any]:
    sups = [{k: v for k, v in s.items() if v is not None} for s in _supervisions(row, recording["id"])]
    return {"id": row.sample_key, "start": 0.0, "duration": row.duration_s, "channel": 0, "supervisions": sups,
            "recording": recording, "custom": custom, "type": "MonoCut"}


class Lhotse(Exporter):
    name = "lhotse"
    default_size = ShardSize(rows=10_000)
    files = {"recordings": ("recordings.%06d.jsonl.gz", "jsonl.gz"),
             "supervisions": ("supervisions.%06d.jsonl.gz", "jsonl.gz"), "cuts": ("cuts.%06d.jsonl.gz", "jsonl.gz")}
    needs_audio = False

    def write_row(self, files: dict[str, _File], row: ExportRow) -> None:
        ref = self.source.audio_ref(row)
        recording = _recording(row, {"type": "url" if "://" in ref else "file", "source": ref})
        custom = {k: v for k, v in self.sample_meta(row).items() if v is not None}
        if self.options.speaker_audio:
            custom["speaker_audio"] = self.write_speaker_files(row, self.source.audio(row))
        cut = _cut(row, recording, custom)
        files["recordings"].line(recording)
        for sup in cut["supervisions"]:
            files["supervisions"].line(sup)
        files["cuts"].line(cut)


class LhotseShar(Exporter):
    name = "lhotse-shar"
    default_size = ShardSize(rows=1000, bytes=1 << 30)
    # in a folder of their own: lhotse reads every name in an in_dir as a field of the cuts
    files = {"recording": ("shar/recording.%06d.tar", "tar"), "cuts": ("shar/cuts.%06d.jsonl.gz", "jsonl.gz")}

    def write_row(self, files: dict[str, _File], row: ExportRow) -> None:
        audio = self.source.audio(row)
        placeholder = _recording(row, {"type": "shar", "source": ""})
        files["recording"].member(f"{row.sample_key}.{row.audio_ext}", audio)
        files["recording"].member(f"{row.sample_key}.json", _json_line(placeholder))
        custom = {k: v for k, v in self.sample_meta(row).items() if v is not None}
        if self.options.speaker_audio:
            custom["speaker_audio"] = self.write_speaker_files(row, audio)
        files["cuts"].line(_cut(row, placeholder, custom))


class NeMo(Exporter):
    name = "nemo"
    default_size = ShardSize(rows=100_000)
    files = {"manifest": ("manifest.%06d.jsonl", "jsonl")}
    needs_audio = False

    def write_row(self, files: dict[str, _File], row: ExportRow) -> None:
        ref = self.source.audio_ref(row)
        meta = {k: v for k, v in row.meta.items() if k not in ("text", "duration_s") and v is not None}
        extra = {"id": row.meta.get("id"), "key": row.key, "script": row.text, "sample_key": row.sample_key}
        if self.options.speaker_audio:
            extra["speaker_audio"] = self.write_speaker_files(row, self.source.audio(row))
        if self.options.split_turns and row.timed:
            for k, (t, s) in enumerate(zip(row.turns, row.speakers)):
                files["manifest"].line({"audio_filepath": ref, "offset": t.start_s,
                                        "duration": round(max(0.0, t.end_s - t.start_s), 3), "text": t.text,
                                        "speaker": s, "turn": k, "tag": t.speaker, **extra, "metadata": meta})
            return
        speakers = sorted(set(row.speakers))
        line = {"audio_filepath": ref, "offset": 0.0, "duration": row.duration_s,
                "text": " ".join(t.text for t in row.turns), **extra, "turns": row.turn_records(), "metadata": meta}
        if len(speakers) == 1:
            line["speaker"] = speakers[0]
        files["manifest"].line(line)


class HuggingFace(Exporter):
    name = "hf"
    default_size = ShardSize(bytes=512 << 20)
    files = {"data": ("data/train-%05d.parquet", "parquet")}
    FEATURES = {b"huggingface": json.dumps({"info": {"features": {"audio": {"_type": "Audio"}}}}).encode()}
    GROUP_ROWS = 256  # rows per Parquet row group: bounds what is held before it is written
    AUDIO = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[dict[str, Any]] = []
        self._pending_bytes = 0
        self._schema: Optional[pa.Schema] = None

    def _schema_for(self, row: ExportRow) -> pa.Schema:
        fields = [pa.field("audio", self.AUDIO), *(row.schema or pa.schema([])),
                  pa.field("turns", pa.list_(pa.struct([("speaker", pa.string()), ("text", pa.string()),
                                                        ("start_s", pa.float64()), ("end_s", pa.float64()),
                                                        ("speaker_id", pa.string())]))),
                  pa.field("sample_key", pa.string())]
        if self.options.speaker_audio:
            fields.append(pa.field("speaker_audio", pa.map_(pa.string(), pa.string())))
        return pa.schema(fields, metadata=self.FEATURES)

    def add(self, row: ExportRow) -> None:
        schema = self._schema_for(row)
        if self.open and schema != self._schema:  # another input shard's carried columns: a new file
            self._close_shard()
        files = self._ensure()
        self._schema = schema
        audio = self.source.audio(row)
        record = {"audio": {"bytes": audio, "path": f"{row.sample_key}.{row.audio_ext}"}, **row.raw,
                  "turns": row.turn_records(), "sample_key": row.sample_key}
        if self.options.speaker_audio:
            record["speaker_audio"] = list(self.write_speaker_files(row, audio).items())
        self._pending.append(record)
        self._pending_bytes += len(audio)
        if len(self._pending) >= self.GROUP_ROWS:
            self._flush(files["data"])
        self.rows += 1
        self.rows_in_shard += 1
        if self.size.full(self.rows_in_shard, files["data"].size + self._pending_bytes):
            self._close_shard()

    def _flush(self, f: _File) -> None:
        if not self._pending:
            return
        assert self._schema is not None
        if f.parquet is None:
            f.parquet = pq.ParquetWriter(f.counter, self._schema)
        f.parquet.write_table(pa.Table.from_pylist(self._pending, schema=self._schema))
        self._pending = []
        self._pending_bytes = 0

    def _close_shard(self) -> None:
        if self.open:
            self._flush(self.open["data"])
        super()._close_shard()


FORMATS: dict[str, type[Exporter]] = {e.name: e for e in (WebDataset, Lhotse, LhotseShar, NeMo, HuggingFace)}
Factory = Callable[[JobSource, Destination, Optional[ShardSize], Options], Exporter]
