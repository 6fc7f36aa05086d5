"""One rule for a row's identity: its id (or a shard-position stand-in), its base key (the id,
shard-qualified when the job uses it twice; also the seed key) and its output key (plus the sweep
tag). The driver's index and the replicas' planner both use these, so they agree on every key."""
from __future__ import annotations

from typing import Any, Optional

import pyarrow as pa

from ..config import JobConfig
from .cells import read_cells
from .inputs import Shard


def row_id(value: Any, shard: Shard, i: int) -> str:
    return f"{shard.name}-{i:06d}" if value is None or value == "" else str(value)


def base_keys(ids: list[str], shard: Shard, duplicates: set[str]) -> list[str]:
    """Each input row's key: its id, shard-qualified when the job uses the id twice (also the seed key)."""
    if not duplicates:
        return list(ids)
    return [f"{row_id}@{shard.name}:{i}" if row_id in duplicates else row_id for i, row_id in enumerate(ids)]


def output_keys(base: list[str], points: list[tuple[Optional[str], Any]]) -> list[str]:
    """Each output row's key: the input row's key, then the sweep tag."""
    if len(points) == 1 and points[0][0] is None:
        return list(base)
    return [k if tag is None else f"{k}|{tag}" for k in base for tag, _ in points]


def shard_ids(table: pa.Table, cfg: JobConfig, shard: Shard) -> tuple[list[str], dict[int, str]]:
    raw, problems = (read_cells(table, cfg.data.id_column) if cfg.data.id_column in table.column_names
                     else ([None] * table.num_rows, {}))
    return [row_id(v, shard, i) for i, v in enumerate(raw)], problems
