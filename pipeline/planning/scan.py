"""The driver's side of planning: from input shards and config to the job's shards, sizes and keys,
without parsing a cell.

``scan_plan`` reads only the id column of every shard (to find ids used more than once, which get
shard-qualified keys) and fixes each shard's row count. The driver then indexes a shard when its
queue needs rows (``index_shard``: keys and script lengths, read column-wise, no cell parsed), and
``JobPlan.release`` drops the index once the shard is done, so it holds the keys of the shards in
flight, not the whole job. Cells are parsed and checked where the rows run: see ``planner``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from ..config import JobConfig
from ..errors import PipelineError
from .cells import is_text, read_cells, read_shard
from .inputs import Shard, check_schemas, resolve_inputs
from .keys import base_keys, output_keys, row_id, shard_ids
from .rows import OVERRIDES, RowSpec, parse_number
from .sweep import sweep_points


@dataclass
class JobPlan:
    """The job's shards and how many rows each holds; the RowSpecs and carried-through columns of the
    shards planned now (``planner.plan_shard``) until they are released."""

    shards: list[Shard]
    sizes: dict[str, int] = field(default_factory=dict)  # shard -> input rows used (after data.limit)
    points: list[tuple[Optional[str], dict[str, Any]]] = field(default_factory=lambda: [(None, {})])
    duplicates: set[str] = field(default_factory=set)  # ids that occur more than once in the job
    loaded: dict[str, list[RowSpec]] = field(default_factory=dict)  # shard -> its rows, input order
    carried: dict[str, pa.Table] = field(default_factory=dict)  # shard -> carried-through columns
    renamed: dict[str, str] = field(default_factory=dict)  # input column -> metadata column, on clashes
    index: dict[str, "ShardIndex"] = field(default_factory=dict)  # shard -> its keys (shards open now)

    @property
    def rows(self) -> list[RowSpec]:
        """The rows of the shards planned now, in input order."""
        return [r for s in self.shards for r in self.loaded.get(s.name, [])]

    @property
    def total_rows(self) -> int:
        """Output rows of the whole job (input rows x sweep points)."""
        return sum(self.sizes.values()) * len(self.points)

    def by_key(self) -> dict[str, RowSpec]:
        return {r.key: r for r in self.rows}

    def release(self, shard: str) -> None:
        self.loaded.pop(shard, None)
        self.carried.pop(shard, None)
        self.index.pop(shard, None)


def check_defaults(cfg: JobConfig) -> None:
    """Fail early on job-wide generation defaults that no row could use."""
    for name in OVERRIDES:
        value = getattr(cfg.generation, name)
        if value is None:
            continue
        _, problem = parse_number(name, value)
        if problem:
            raise PipelineError(f"generation.{name}: {problem}")
    if cfg.generation.batch_size is not None and cfg.generation.batch_size < 1:
        raise PipelineError("generation.batch_size must be at least 1 (or null: sized from free GPU memory)")


def _id_hashes(values: list[Any], shard: Shard) -> list[bytes]:
    return [hashlib.blake2b(row_id(v, shard, i).encode("utf-8", "surrogatepass"), digest_size=8).digest()
            for i, v in enumerate(values)]


def scan_plan(cfg: JobConfig) -> JobPlan:
    """Check the inputs and find each shard's size and the ids used more than once, reading only the
    id column (8 bytes a row are kept, whatever the job's size)."""
    check_defaults(cfg)
    shards = resolve_inputs(cfg.data.input)
    check_schemas(shards, cfg.data.text_column)
    plan = JobPlan(shards=[], points=sweep_points(cfg.sweep))
    remaining: Optional[int] = cfg.data.limit
    hashes: list[np.ndarray] = []
    for shard in shards:
        if remaining is not None and remaining <= 0:
            break
        try:
            with shard.filesystem.open_input_file(shard.path) as f:
                pf = pq.ParquetFile(f)
                size = pf.metadata.num_rows if remaining is None else min(pf.metadata.num_rows, remaining)
                has_id = cfg.data.id_column in pf.schema_arrow.names
                ids = (read_cells(pf.read(columns=[cfg.data.id_column]).slice(0, size), cfg.data.id_column)[0]
                       if has_id else [None] * size)
        except Exception as e:
            raise PipelineError(f"cannot read {shard.uri}: {e}") from e
        if remaining is not None:
            remaining -= size
        plan.shards.append(shard)
        plan.sizes[shard.name] = size
        hashes.append(np.frombuffer(b"".join(_id_hashes(ids, shard)), dtype=np.uint64))
    every = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    values, counts = np.unique(every, return_counts=True)
    repeated = values[counts > 1]
    if len(repeated):  # a second look at the shards that hold them, for the ids themselves
        for shard, h in zip(plan.shards, hashes):
            hits = np.nonzero(np.isin(h, repeated))[0]
            if len(hits):
                table = read_shard(shard, plan.sizes[shard.name])
                ids = (read_cells(table, cfg.data.id_column)[0] if cfg.data.id_column in table.column_names
                       else [None] * table.num_rows)
                plan.duplicates.update(row_id(ids[int(i)], shard, int(i)) for i in hits)
    return plan


@dataclass
class ShardIndex:
    """What the driver keeps of a planned shard: every output row's key, in input order (row i at
    sweep point p is position ``i * points + p``). No cell is parsed here: the replicas plan the rows
    they run (``planner.ShardPlanner``), so the driver's work per row stays a few list operations."""

    keys: list[str]
    points: list[Optional[str]]  # sweep tag of each point


def index_shard(cfg: JobConfig, plan: JobPlan, shard: Shard) -> tuple[ShardIndex, np.ndarray]:
    """The driver's view of a shard: its keys, and each position's expected script bytes (text plus
    prompt transcript, for the longest-first order), read column-wise without parsing a cell."""
    size = plan.sizes[shard.name]
    try:
        with shard.filesystem.open_input_file(shard.path) as f:
            pf = pq.ParquetFile(f)
            wanted = [c for c in (cfg.data.id_column, cfg.data.text_column, "prompt_transcript")
                      if c in pf.schema_arrow.names]
            table = pf.read(columns=wanted).slice(0, size)
    except Exception as e:
        raise PipelineError(f"cannot read {shard.uri}: {e}") from e
    ids, _ = shard_ids(table, cfg, shard)
    lengths = np.zeros(size, np.int64)
    for name in (cfg.data.text_column, "prompt_transcript"):
        if name in table.column_names and (is_text(table.column(name).type)
                                           or pa.types.is_binary(table.column(name).type)):
            column = table.column(name).cast(pa.large_binary())  # bytes, never a UTF-8 check
            lengths += pa.compute.fill_null(pa.compute.binary_length(column), 0).to_numpy()
    index = ShardIndex(output_keys(base_keys(ids, shard, plan.duplicates), plan.points), [tag for tag, _ in plan.points])
    plan.index[shard.name] = index
    return index, np.repeat(lengths, len(plan.points))
