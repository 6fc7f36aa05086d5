"""The metadata table: one row per output row, written in parts while the job runs, merged at the end.

Layout under the job directory::

    metadata/<shard>.parquet                     merged result, one row per input row (and sweep point)
    metadata/_parts/<shard>/<time>-<pid>-<n>.parquet   rows finished since the last merge

Parts are named so that sorting them sorts them by time; when a row appears more than once, the
last one wins. pyarrow and Hugging Face ``datasets`` skip ``_parts`` when reading the folder.
"""
from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Optional

import numpy as np
import pyarrow as pa

from ..storage import Storage

if TYPE_CHECKING:
    from ..planning.scan import JobPlan, ShardIndex
    from ..planning.rows import RowSpec

STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_REJECTED = "rejected"  # audio came out, but its best attempt failed a quality gate

OWN_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("key", pa.string()),
    ("shard", pa.string()),
    ("row_index", pa.int64()),
    ("sweep_point", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("attempts", pa.int32()),
    ("audio_path", pa.string()),
    ("sample_rate", pa.int32()),
    ("duration_s", pa.float64()),
    ("frames", pa.int64()),
    ("ended_by_eos", pa.bool_()),
    ("seed", pa.int64()),
    ("cfg_scale", pa.float64()),
    ("temperature", pa.float64()),
    ("top_p", pa.float64()),
    ("top_k", pa.int64()),
    ("max_new_frames", pa.int64()),
    ("max_seconds", pa.float64()),
    ("audio_prompt", pa.string()),
    ("prompt_transcript", pa.string()),
    ("prompt_frames", pa.int64()),
    ("voice_s1", pa.string()),
    ("voice_s2", pa.string()),
    ("long_form", pa.bool_()),
    ("chunks", pa.int32()),
    ("chunk_frames", pa.list_(pa.int64())),
    ("end_tag_applied", pa.bool_()),
    ("speaking_rate_wps", pa.float64()),
    ("leading_silence_s", pa.float64()),
    ("trailing_silence_s", pa.float64()),
    ("max_inner_silence_s", pa.float64()),
    ("clipping_ratio", pa.float64()),
    ("loudness_lufs", pa.float64()),
    ("asr_text", pa.string()),
    ("cer", pa.float64()),
    ("wer", pa.float64()),
    ("speaker_sim", pa.float64()),
    ("quality_attempts", pa.int32()),
    ("quality_seeds", pa.list_(pa.int64())),
    ("text", pa.string()),
    ("model_source", pa.string()),
    ("model_revision", pa.string()),
    ("model_schema", pa.string()),
    ("model_dtype", pa.string()),
    ("audio_bytes", pa.int64()),
    ("replica", pa.string()),
    ("node", pa.string()),
    ("device", pa.string()),
    ("batch_rows", pa.int32()),
    ("generation_s", pa.float64()),
    ("decode_s", pa.float64()),
    ("finished_at", pa.timestamp("ms", tz="UTC")),
])
AUDIO_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
OWN_COLUMNS = frozenset(OWN_SCHEMA.names) | {"audio"}
# Lets Hugging Face datasets read the embedded column as an Audio feature.
_HF_METADATA = {b"huggingface": json.dumps({"info": {"features": {"audio": {"_type": "Audio"}}}}).encode()}


def base_record(row: "RowSpec", model: dict[str, Any]) -> dict[str, Any]:
    """The metadata fields known before generation (settings, text, model)."""
    return {
        "id": row.id, "key": row.key, "shard": row.shard, "row_index": row.row_index,
        "sweep_point": row.sweep_point, "seed": row.seed, "cfg_scale": row.cfg_scale,
        "temperature": row.temperature, "top_p": row.top_p, "top_k": row.top_k,
        "max_new_frames": row.max_new_frames, "max_seconds": row.max_seconds,
        "audio_prompt": row.audio_prompt, "prompt_transcript": row.prompt_transcript, "text": row.text,
        "voice_s1": row.voices[0] if row.voices else None, "voice_s2": row.voices[1] if row.voices else None,
        "long_form": row.long_form,
        "model_source": model.get("source"), "model_revision": model.get("revision"),
        "model_schema": model.get("schema"), "model_dtype": model.get("dtype"),
    }


def error_record(row: "RowSpec", message: str, model: dict[str, Any], attempts: int = 0,
                 **extra: Any) -> dict[str, Any]:
    """A status=error row."""
    rec = base_record(row, model)
    rec.update(status=STATUS_ERROR, error=message, attempts=attempts, finished_at=datetime.now(timezone.utc))
    rec.update(extra)
    return rec


def outcome_record(row: "RowSpec", r: Any, model: dict[str, Any], replica: dict[str, Any], attempts: int,
                   batch_rows: int) -> dict[str, Any]:
    """The metadata row of a row a replica finished (``r``: its ``replica.RowResult``). A row whose
    audio came out is written before this record exists: the record is the commit."""
    record = base_record(row, model)
    record.update(
        status=STATUS_REJECTED if r.rejected else STATUS_OK if r.ok else STATUS_ERROR, error=r.error,
        attempts=attempts, sample_rate=r.sample_rate, duration_s=r.duration_s, frames=r.frames,
        ended_by_eos=r.ended_by_eos, seed=r.seed if r.seed is not None else row.seed, prompt_frames=r.prompt_frames,
        max_new_frames=r.max_new_frames if r.max_new_frames is not None else row.max_new_frames,
        replica=replica.get("name"), node=replica.get("node"), device=replica.get("device"), batch_rows=batch_rows,
        generation_s=r.generation_s, decode_s=r.write_s, chunks=r.chunks, chunk_frames=r.chunk_frames,
        end_tag_applied=r.end_tag_applied, quality_seeds=r.quality_seeds,
        quality_attempts=len(r.quality_seeds) if r.quality_seeds else None,
        **{k: v for k, v in (r.metrics or {}).items() if k != "duration_s"},  # that one is there
        finished_at=datetime.now(timezone.utc), audio_bytes=r.audio_bytes if r.ok else None,
    )
    if r.ok:
        record["audio_path"] = r.audio_path or row.audio_path
    return record


def records_table(records: list[dict[str, Any]], carried: Optional[pa.Table],
                  audio: Optional[list[Optional[bytes]]] = None) -> pa.Table:
    """Metadata rows as a table: our columns, then the shard's carried-through input columns (taken
    by ``row_index``), then with ``audio`` the embedded audio column."""
    table = pa.Table.from_pylist(records, schema=OWN_SCHEMA)
    if carried is not None and carried.num_columns:
        picked = carried.take(pa.array([r["row_index"] for r in records], pa.int64()))
        for name, column in zip(picked.column_names, picked.columns):
            table = table.append_column(name, column)
    if audio is not None:
        cells = [None if b is None else {"bytes": b, "path": os.path.basename(r.get("audio_path") or "")}
                 for r, b in zip(records, audio)]
        table = table.append_column(pa.field("audio", AUDIO_TYPE), pa.array(cells, AUDIO_TYPE))
    return table


def _newest_in_order(merged: pa.Table, index: "ShardIndex") -> np.ndarray:
    """Which records of ``merged`` (the shard's merged file, then its parts, oldest first) to keep:
    the newest of each key, in input order (row, then sweep point). A record whose key is not in
    this run's plan is kept unless a planned row holds its input cell under another key. Column-wise
    (Arrow hashing, numpy sorting): a shard of 100,000 rows merges in well under a second."""
    import pyarrow.compute as pc

    n = merged.num_rows
    keys = merged.column("key")
    rows = np.arange(n)
    key_id = pc.index_in(keys, value_set=pc.unique(keys)).to_numpy(zero_copy_only=False)
    by_key = np.lexsort((rows, key_id))
    newest = by_key[np.append(key_id[by_key][1:] != key_id[by_key][:-1], True)]  # the last of each key
    planned = pc.fill_null(pc.index_in(keys, value_set=pa.array(index.keys, pa.string())), -1)
    position = planned.to_numpy().astype(np.int64)[newest]  # -1: not in this run's plan
    row_index = merged.column("row_index").to_numpy(zero_copy_only=False)[newest]
    outside = np.nonzero(position < 0)[0]
    if len(outside):  # records of rows this run did not plan (another run's data.limit, older keys)
        tags = set(index.points)
        planned_rows = len(index.keys) // len(index.points)
        sweep = merged.column("sweep_point").take(pa.array(newest[outside], pa.int64())).to_pylist()
        owned = np.array([0 <= row_index[k] < planned_rows and tag in tags for k, tag in zip(outside, sweep)], bool)
        keep = np.ones(len(newest), bool)
        keep[outside[owned]] = False
        newest, position, row_index = newest[keep], position[keep], row_index[keep]
    secondary = np.where(position >= 0, position, len(index.keys))
    return newest[np.lexsort((newest, secondary, row_index))]


@dataclass
class Existing:
    """What an earlier run recorded for a row."""

    status: str
    audio_path: Optional[str]


class MetadataStore:
    """Buffers finished rows and writes them as metadata parts; merges parts per shard at the end."""

    def __init__(self, storage: Storage, plan: "JobPlan", *, embed_audio: bool = False,
                 flush_rows: int = 256, flush_seconds: float = 10.0) -> None:
        self.storage = storage
        self.plan = plan
        self.embed_audio = embed_audio
        self.flush_rows = max(1, flush_rows)
        self.flush_seconds = flush_seconds
        self._buffer: dict[str, list[pa.Table]] = defaultdict(list)
        self._buffered = 0
        self._last_flush = time.monotonic()
        self._seq = 0

    # -- reading ---------------------------------------------------------------------------
    def _parts(self, shard: str) -> list[str]:
        return self.storage.files(f"metadata/_parts/{shard}", ".parquet")

    def _sources(self, shard: str) -> list[str]:
        """The merged file (if any) and then the parts, oldest first."""
        merged = f"metadata/{shard}.parquet"
        return ([merged] if self.storage.exists(merged) else []) + self._parts(shard)

    def existing(self, shards: Optional[Iterable[str]] = None) -> dict[str, Existing]:
        """The last recorded status of every row an earlier run finished (default: in the shards
        planned now)."""
        found: dict[str, Existing] = {}
        for shard in (self.plan.index if shards is None else shards):
            for path in self._sources(shard):
                table = self.storage.read_table(path, columns=["key", "status", "audio_path"])
                for key, status, audio in zip(*(table.column(c).to_pylist() for c in table.column_names)):
                    found[key] = Existing(status, audio)
        return found

    # -- writing ---------------------------------------------------------------------------
    def add(self, record: dict[str, Any], audio: Optional[bytes] = None) -> None:
        """Queue one finished row (a driver-side record, e.g. a row given up after its attempts)."""
        shard = record["shard"]
        self.add_table(shard, records_table([record], self.plan.carried.get(shard),
                                            [audio] if self.embed_audio else None))

    def add_table(self, shard: str, table: pa.Table) -> None:
        """Queue finished rows of one shard as a table (``records_table``, as replicas build them);
        write a part when the buffer is big or old enough."""
        if not table.num_rows:
            return
        self._buffer[shard].append(table)
        self._buffered += table.num_rows
        if self._buffered >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write every buffered row to part files now."""
        for shard, tables in self._buffer.items():
            if tables:
                self._seq += 1
                name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.parquet"
                table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
                # one chunk per column: Parquet writes it ~2.5x faster than hundreds of small ones
                self._write(f"metadata/_parts/{shard}/{name}", table.combine_chunks())
        self._buffer.clear()
        self._buffered = 0
        self._last_flush = time.monotonic()

    def _write(self, rel: str, table: pa.Table) -> None:
        if "audio" in table.column_names:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **_HF_METADATA})
        self.storage.put_table(rel, table)

    # -- merging ---------------------------------------------------------------------------
    def consolidate(self, shards: Optional[Iterable[str]] = None) -> None:
        """Merge each shard's file and parts into ``metadata/<shard>.parquet``: one row per row key,
        the newest record winning, in input order; then delete the merged parts.

        Records of rows outside this run's plan are kept: a run over a subset of the job
        (``data.limit``) must never drop what other runs finished. Such a record goes only when a
        planned row now holds the same input cell (shard, row index, sweep point) under another key.
        """
        self.flush()
        for shard in list(self.plan.index if shards is None else shards):
            index = self.plan.index[shard]
            parts = self._parts(shard)
            sources = self._sources(shard)
            if not sources:
                continue
            tables = [self.storage.read_table(p) for p in sources]
            merged = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
            picked = _newest_in_order(merged, index)
            self._write(f"metadata/{shard}.parquet", merged.take(pa.array(picked, pa.int64())).combine_chunks())
            for p in parts:
                self.storage.delete(p)
            self._remove_empty_parts(shard)

    def _remove_empty_parts(self, shard: str) -> None:
        """Local folders ``_parts/<shard>`` and ``_parts`` once empty (object stores have no folders)."""
        if not self.storage.local:
            return
        for rel in (f"metadata/_parts/{shard}", "metadata/_parts"):
            try:
                os.rmdir(self.storage.path(rel))  # only when empty
            except OSError:
                pass

    def read_all(self, shards: Optional[Iterable[str]] = None, columns: Optional[list[str]] = None) -> pa.Table:
        """Every merged metadata row of the given shards (default: all of the job's), all or some columns."""
        tables = [self.storage.read_table(f"metadata/{s}.parquet", columns)
                  for s in (shards or [shard.name for shard in self.plan.shards])
                  if self.storage.exists(f"metadata/{s}.parquet")]
        return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
