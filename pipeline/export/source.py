"""A job's rows as a stream, for exports: finished or partial, local or in an object store.

A finished job has one merged ``metadata/<shard>.parquet`` per input shard. A partial one (still
running, or stopped) has its rows in ``metadata/_parts/<shard>/`` too, where a row may appear more
than once: the newest record wins, as when the job itself merges. Memory stays bounded by one shard's
keys (rows stream in batches of ``BATCH_ROWS``), so a job of a million rows exports like one of ten.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..quality.align import Turn, script_turns, speaker_id
from ..records.store import shard_sources
from ..storage import Storage

BATCH_ROWS = 512
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
# columns kept out of a row's metadata slot: the embedded audio, and bookkeeping that says nothing of the sample
_NOT_METADATA = {"audio", "turns"}


@dataclass
class ExportRow:
    """One row as the exporters see it: where its audio is, what it says, its turns and its metadata."""

    key: str
    sample_key: str  # tar-member- and file-name-safe, unique in the job, stable across exports
    text: str
    status: str
    audio_path: Optional[str]  # relative to the job
    audio_ext: str
    sample_rate: int
    num_samples: int
    duration_s: float
    turns: list[Turn]
    speakers: list[str]  # one per turn
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-able metadata columns
    raw: dict[str, Any] = field(default_factory=dict)  # the same, as Arrow gave them (for Parquet exports)
    schema: Optional[pa.Schema] = None  # of ``raw``

    @property
    def timed(self) -> bool:
        return bool(self.turns) and all(t.start_s is not None for t in self.turns)

    def turn_records(self) -> list[dict[str, Any]]:
        return [{**t.as_dict(), "speaker_id": s} for t, s in zip(self.turns, self.speakers)]


def sample_key(key: str) -> str:
    """A name made of ``[A-Za-z0-9_-]`` for ``key``: readable prefix plus a hash, so two keys that clean
    up to the same text stay apart (WebDataset splits a member name at its first dot)."""
    clean = _UNSAFE.sub("_", key).strip("_")[:80] or "row"
    return f"{clean}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def _plain(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, bytes):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class JobSource:
    """Reads one job (a folder or a URI) for export."""

    def __init__(self, job: str) -> None:
        self.storage = Storage(job)
        raw = self.storage.get("job.json")
        self.info: dict[str, Any] = json.loads(raw) if raw else {}
        self.shards = self._shards()
        if not self.info and not self.shards:
            raise FileNotFoundError(f"{job} holds no job (no job.json, no metadata/): give a job's output.dir")

    def _shards(self) -> list[str]:
        names = set()
        for rel in self.storage.files("metadata", ".parquet"):
            parts = rel.split("/")
            if len(parts) == 2 and not parts[1].startswith("_"):
                names.add(parts[1][: -len(".parquet")])
            elif len(parts) == 4 and parts[1] == "_parts":
                names.add(parts[2])
        return sorted(names)

    def _open(self, rel: str) -> pq.ParquetFile:
        return pq.ParquetFile(self.storage.fs.open_input_file(self.storage.path(rel)))

    def _winners(self, sources: list[str]) -> Optional[list[np.ndarray]]:
        """Per source, the row numbers that are the newest record of their key; None: keep every row
        (a lone merged file has each key once)."""
        if len(sources) == 1:
            return None
        keys, origin = [], []
        for n, rel in enumerate(sources):
            column = self._open(rel).read(columns=["key"]).column("key")
            keys.append(column)
            origin.append(np.full(len(column), n, dtype=np.int32))
        allkeys = pa.chunked_array([c for col in keys for c in col.chunks], pa.string())
        src = np.concatenate(origin) if origin else np.zeros(0, np.int32)
        rows = np.concatenate([np.arange(len(c)) for c in keys]) if keys else np.zeros(0, np.int64)
        key_id = pc.index_in(allkeys, value_set=pc.unique(allkeys)).to_numpy(zero_copy_only=False)
        order = np.lexsort((np.arange(len(key_id)), key_id))
        last = order[np.append(key_id[order][1:] != key_id[order][:-1], True)] if len(order) else order
        return [np.sort(rows[last[src[last] == n]]) for n in range(len(sources))]

    def batches(self, statuses: Optional[set[str]] = None) -> Iterator[pa.Table]:
        """The job's rows (newest record of each key), shard by shard, in batches; only ``statuses``."""
        for shard in self.shards:
            sources = shard_sources(self.storage, shard)
            winners = self._winners(sources)
            for n, rel in enumerate(sources):
                start = 0
                for batch in self._open(rel).iter_batches(batch_size=BATCH_ROWS):
                    table = pa.Table.from_batches([batch])
                    if winners is not None:
                        keep = winners[n][(winners[n] >= start) & (winners[n] < start + table.num_rows)] - start
                        table = table.take(pa.array(keep, pa.int64()))
                    start += batch.num_rows
                    if statuses is not None and table.num_rows:
                        table = table.filter(pc.is_in(table.column("status"), value_set=pa.array(sorted(statuses))))
                    if table.num_rows:
                        yield table

    def rows(self, statuses: Optional[set[str]] = None) -> Iterator[ExportRow]:
        for table in self.batches(statuses):
            columns = [c for c in table.column_names if c not in _NOT_METADATA]
            data = {c: table.column(c).to_pylist() for c in columns}
            turns_col = table.column("turns").to_pylist() if "turns" in table.column_names else None
            schema = pa.schema([table.schema.field(c) for c in columns])
            for i in range(table.num_rows):
                raw = {c: data[c][i] for c in columns}
                row = self._row({c: _plain(v) for c, v in raw.items()}, turns_col[i] if turns_col is not None else None)
                row.raw, row.schema = raw, schema
                yield row

    def _row(self, meta: dict[str, Any], stored_turns: Optional[list[dict[str, Any]]]) -> ExportRow:
        key = str(meta.get("key") or meta.get("id"))
        text = meta.get("text") or ""
        if stored_turns:
            turns = [Turn(t["speaker"], t["text"], t.get("start_s"), t.get("end_s")) for t in stored_turns]
        else:
            turns = script_turns(text)
        voices = (meta.get("voice_s1"), meta.get("voice_s2"))
        rate = int(meta.get("sample_rate") or 44100)
        duration = float(meta.get("duration_s") or 0.0)
        path = meta.get("audio_path")
        ext = path.rsplit(".", 1)[-1].lower() if path and "." in path.rsplit("/", 1)[-1] else "flac"
        return ExportRow(key=key, sample_key=sample_key(key), text=text, status=str(meta.get("status")),
                         audio_path=path, audio_ext=ext, sample_rate=rate, num_samples=int(round(duration * rate)),
                         duration_s=duration, turns=turns, speakers=[speaker_id(t.speaker, voices, key) for t in turns],
                         meta=meta)

    def audio(self, row: ExportRow) -> bytes:
        """The row's audio file bytes (a row counted ok whose file is gone is an error, not a blank)."""
        data = self.storage.get(row.audio_path) if row.audio_path else None
        if data is None:
            raise FileNotFoundError(f"row {row.meta.get('id')!r}: its audio file {row.audio_path} is missing")
        return data

    def audio_ref(self, row: ExportRow) -> str:
        """Where a manifest should point for this row's audio: an absolute local path or the URI."""
        return self.storage.uri(row.audio_path or "")
