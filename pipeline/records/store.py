"""Where metadata rows are kept: written in parts while the job runs, merged per shard at the end.

Layout under the job directory::

    metadata/<shard>.parquet                     merged result, one row per input row (and sweep point)
    metadata/_parts/<shard>/<time>-<pid>-<n>.parquet   rows finished since the last merge

Parts are named so that sorting them sorts them by time; when a row appears more than once, the
last one wins. pyarrow and Hugging Face ``datasets`` skip ``_parts`` when reading the folder.
"""
from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..storage import Storage
from .schema import HF_METADATA, records_table

if TYPE_CHECKING:
    from ..planning.scan import JobPlan, ShardIndex

def _newest_in_order(merged: pa.Table, index: "ShardIndex") -> np.ndarray:
    """Which records of ``merged`` (the shard's merged file, then its parts, oldest first) to keep:
    the newest of each key, in input order (row, then sweep point). A record whose key is not in
    this run's plan is kept unless a planned row holds its input cell under another key. Column-wise
    (Arrow hashing, numpy sorting): a shard of 100,000 rows merges in well under a second."""
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


def shard_sources(storage: Storage, shard: str) -> list[str]:
    """A shard's metadata files, oldest first: the merged file (if any), then its parts. Where a key
    appears more than once, the last record wins."""
    merged = f"metadata/{shard}.parquet"
    parts = storage.files(f"metadata/_parts/{shard}", ".parquet")
    return ([merged] if storage.exists(merged) else []) + parts


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
        return shard_sources(self.storage, shard)

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
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **HF_METADATA})
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
