"""From input shards and config to the full list of rows the job must produce."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

import pyarrow as pa

from .config import JobConfig
from .errors import PipelineError
from .ids import StemAllocator
from .inputs import Shard, check_schemas, resolve_inputs
from .metadata import OWN_COLUMNS
from .rows import OVERRIDES, PROMPT_COLUMNS, RowSpec, make_row, parse_cells, parse_number
from .sweep import sweep_points


@dataclass
class JobPlan:
    """The rows of a job, in input order, plus what the metadata carries through per shard."""

    shards: list[Shard]
    rows: list[RowSpec]
    carried: dict[str, pa.Table] = field(default_factory=dict)  # shard -> carried-through columns
    renamed: dict[str, str] = field(default_factory=dict)  # input column -> metadata column, on clashes

    def by_key(self) -> dict[str, RowSpec]:
        return {r.key: r for r in self.rows}


def check_defaults(cfg: JobConfig) -> None:
    """Fail early on job-wide generation defaults that no row could use."""
    for name in OVERRIDES:
        value = getattr(cfg.generation, name)
        if value is None:
            continue
        _, problem = parse_number(name, value)
        if problem:
            raise PipelineError(f"generation.{name}: {problem}")
    if cfg.generation.batch_size < 1:
        raise PipelineError("generation.batch_size must be at least 1")


def _carried_columns(schema: pa.Schema, cfg: JobConfig) -> tuple[list[str], dict[str, str]]:
    consumed = {cfg.data.text_column, cfg.data.id_column, *OVERRIDES, *PROMPT_COLUMNS}
    names = [n for n in schema.names if n not in consumed]
    renamed = {}
    for n in names:
        if n in OWN_COLUMNS:
            target = f"input_{n}"
            while target in OWN_COLUMNS or target in schema.names:
                target = f"input_{target}"
            renamed[n] = target
    return names, renamed


def build_plan(cfg: JobConfig, job_seed: int, check_script: Callable[[str], list[str]]) -> JobPlan:
    """Read every shard and turn each (row, sweep point) into a RowSpec with a unique key and file name."""
    check_defaults(cfg)
    shards = resolve_inputs(cfg.data.input)
    check_schemas(shards, cfg.data.text_column)
    points = sweep_points(cfg.sweep)
    ext = cfg.output.format.value

    tables: list[tuple[Shard, pa.Table]] = []
    remaining: Optional[int] = cfg.data.limit
    for shard in shards:
        if remaining is not None and remaining <= 0:
            break
        try:
            table = shard.read()
        except Exception as e:
            raise PipelineError(f"cannot read {shard.uri}: {e}") from e
        if remaining is not None:
            table = table.slice(0, remaining)
            remaining -= table.num_rows
        tables.append((shard, table))

    def ids_of(shard: Shard, table: pa.Table) -> list[str]:
        raw = table.column(cfg.data.id_column).to_pylist() if cfg.data.id_column in table.column_names else None
        out = []
        for i in range(table.num_rows):
            value = None if raw is None else raw[i]
            out.append(f"{shard.name}-{i:06d}" if value is None or value == "" else str(value))
        return out

    all_ids = [ids_of(shard, table) for shard, table in tables]
    counts = Counter(i for ids in all_ids for i in ids)

    plan = JobPlan(shards=[s for s, _ in tables], rows=[])
    for (shard, table), ids in zip(tables, all_ids):
        names, renamed = _carried_columns(table.schema, cfg)
        plan.carried[shard.name] = table.select(names).rename_columns([renamed.get(n, n) for n in names])
        plan.renamed.update(renamed)
        columns = {
            name: table.column(src).to_pylist()
            for name, src in [("text", cfg.data.text_column), *((c, c) for c in (*OVERRIDES, *PROMPT_COLUMNS))]
            if src in table.column_names
        }
        stems = StemAllocator()
        for i, row_id in enumerate(ids):
            base_key = row_id if counts[row_id] == 1 else f"{row_id}@{shard.name}:{i}"
            parsed = parse_cells({name: values[i] for name, values in columns.items()}, check_script)
            for p, (tag, values) in enumerate(points):
                key = base_key if tag is None else f"{base_key}|{tag}"
                stem = stems.allocate(row_id, unique=base_key, suffix=f"__{tag}" if tag else "")
                plan.rows.append(make_row(
                    parsed=parsed, key=key, row_id=row_id, shard=shard.name, shard_folder=shard.folder_uri,
                    row_index=i, point=p, sweep_point=tag, sweep_values=values, defaults=cfg.generation,
                    job_seed=job_seed, seed_key=base_key, audio_path=f"audio/{shard.name}/{stem}.{ext}",
                ))
    return plan
