"""From input shards and config to the full list of rows the job must produce."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from .config import JobConfig
from .errors import PipelineError
from .ids import StemAllocator
from .inputs import Shard, check_schemas, resolve_inputs
from .metadata import OWN_COLUMNS
from .rows import MISSING_TEXT, OVERRIDES, PROMPT_COLUMNS, RowSpec, make_row, parse_cells, parse_number
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
    if cfg.generation.batch_size is not None and cfg.generation.batch_size < 1:
        raise PipelineError("generation.batch_size must be at least 1 (or null: sized from free GPU memory)")


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


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def read_cells(table: pa.Table, name: str) -> tuple[list[Any], dict[int, str]]:
    """A column as Python values, plus a problem per row whose cell cannot be decoded (that cell
    becomes None). One bad cell (invalid UTF-8, an out-of-range timestamp, ...) costs its row, not
    the job."""
    column = table.column(name)
    try:
        return column.to_pylist(), {}
    except Exception:
        pass
    values: list[Any] = []
    problems: dict[int, str] = {}
    if _is_text(column.type):
        raw = column.cast(pa.large_binary()).to_pylist()  # no UTF-8 check: decode each cell ourselves
        for i, cell in enumerate(raw):
            try:
                values.append(None if cell is None else cell.decode("utf-8"))
            except UnicodeDecodeError as e:
                values.append(None)
                problems[i] = f"column {name!r} is not valid UTF-8 (bad byte at offset {e.start})"
        return values, problems
    for i in range(len(column)):
        try:
            values.append(column[i].as_py())
        except Exception as e:
            values.append(None)
            problems[i] = f"column {name!r} cannot be read: {type(e).__name__}: {e}"
    return values, problems


def clean_carried(table: pa.Table) -> tuple[pa.Table, dict[int, str]]:
    """Carried-through columns with cells that cannot be decoded get those cells nulled (so the
    metadata stays readable) and the rows a problem each."""
    problems: dict[int, str] = {}
    for index, name in enumerate(table.column_names):
        column = table.column(name)
        try:
            for chunk in column.chunks:
                chunk.validate(full=True)
            continue
        except Exception:
            pass
        values, bad = read_cells(table, name)
        for i, problem in bad.items():
            problems.setdefault(i, problem)
        if _is_text(column.type):
            fixed = pa.array(values, column.type)
        else:
            keep = pa.array([i not in bad for i in range(len(column))])
            fixed = pa.compute.if_else(keep, column, pa.nulls(len(column), column.type))
        table = table.set_column(index, name, fixed)
    return table, problems


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

    def ids_of(shard: Shard, table: pa.Table) -> tuple[list[str], dict[int, str]]:
        raw, problems = (read_cells(table, cfg.data.id_column) if cfg.data.id_column in table.column_names
                         else ([None] * table.num_rows, {}))
        out = []
        for i, value in enumerate(raw):
            out.append(f"{shard.name}-{i:06d}" if value is None or value == "" else str(value))
        return out, problems

    all_ids = [ids_of(shard, table) for shard, table in tables]
    counts = Counter(i for ids, _ in all_ids for i in ids)

    plan = JobPlan(shards=[s for s, _ in tables], rows=[])
    for (shard, table), (ids, id_problems) in zip(tables, all_ids):
        names, renamed = _carried_columns(table.schema, cfg)
        carried, carried_problems = clean_carried(table.select(names))
        plan.carried[shard.name] = carried.rename_columns([renamed.get(n, n) for n in names])
        plan.renamed.update(renamed)
        bad_cells: dict[int, list[str]] = defaultdict(list)  # row -> cells that could not be decoded
        for problems in (id_problems, carried_problems):
            for i, problem in problems.items():
                bad_cells[i].append(problem)
        columns, bad_text = {}, set()
        for name, src in [("text", cfg.data.text_column), *((c, c) for c in (*OVERRIDES, *PROMPT_COLUMNS))]:
            if src in table.column_names:
                columns[name], problems = read_cells(table, src)
                for i, problem in problems.items():
                    bad_cells[i].append(problem)
                bad_text |= set(problems) if name == "text" else set()
        stems = StemAllocator()
        for i, row_id in enumerate(ids):
            base_key = row_id if counts[row_id] == 1 else f"{row_id}@{shard.name}:{i}"
            parsed = parse_cells({name: values[i] for name, values in columns.items()}, check_script)
            if i in bad_cells:  # an undecodable text cell is not also "missing"
                parsed.problems = bad_cells[i] + [p for p in parsed.problems if i not in bad_text or p != MISSING_TEXT]
            for p, (tag, values) in enumerate(points):
                key = base_key if tag is None else f"{base_key}|{tag}"
                stem = stems.allocate(row_id, unique=base_key, suffix=f"__{tag}" if tag else "")
                plan.rows.append(make_row(
                    parsed=parsed, key=key, row_id=row_id, shard=shard.name, shard_folder=shard.folder_uri,
                    row_index=i, point=p, sweep_point=tag, sweep_values=values, defaults=cfg.generation,
                    job_seed=job_seed, seed_key=base_key, audio_path=f"audio/{shard.name}/{stem}.{ext}",
                ))
    return plan
