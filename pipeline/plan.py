"""From input shards and config to the rows the job must produce, one shard at a time.

``scan_plan`` reads only the id column of every shard (to find ids used more than once, which get
shard-qualified keys) and fixes each shard's row count; ``plan_shard`` then turns one shard into its
RowSpecs when the job gets to it, and ``JobPlan.release`` drops them once the shard is done, so the
driver holds the rows of the shards in flight, not the whole job.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from .config import JobConfig
from .errors import PipelineError
from .ids import StemAllocator
from .inputs import Shard, check_schemas, resolve_inputs
from .metadata import OWN_COLUMNS
from .rows import MISSING_TEXT, OVERRIDES, PROMPT_COLUMNS, RowSpec, make_row, parse_cells, parse_number
from .sweep import sweep_points
from .voices import VOICE_COLUMNS


@dataclass
class JobPlan:
    """The job's shards and how many rows each holds; the RowSpecs and carried-through columns of the
    shards planned now (``plan_shard``) until they are released."""

    shards: list[Shard]
    sizes: dict[str, int] = field(default_factory=dict)  # shard -> input rows used (after data.limit)
    points: list[tuple[Optional[str], dict[str, Any]]] = field(default_factory=lambda: [(None, {})])
    duplicates: set[str] = field(default_factory=set)  # ids that occur more than once in the job
    loaded: dict[str, list[RowSpec]] = field(default_factory=dict)  # shard -> its rows, input order
    carried: dict[str, pa.Table] = field(default_factory=dict)  # shard -> carried-through columns
    renamed: dict[str, str] = field(default_factory=dict)  # input column -> metadata column, on clashes

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
    consumed = {cfg.data.text_column, cfg.data.id_column, *OVERRIDES, *PROMPT_COLUMNS, *VOICE_COLUMNS}
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


def _id_hashes(values: list[Any], shard: Shard) -> list[bytes]:
    return [hashlib.blake2b(_row_id(v, shard, i).encode("utf-8", "surrogatepass"), digest_size=8).digest()
            for i, v in enumerate(values)]


def _row_id(value: Any, shard: Shard, i: int) -> str:
    return f"{shard.name}-{i:06d}" if value is None or value == "" else str(value)


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
                table = _read_shard(shard, plan.sizes[shard.name])
                ids = (read_cells(table, cfg.data.id_column)[0] if cfg.data.id_column in table.column_names
                       else [None] * table.num_rows)
                plan.duplicates.update(_row_id(ids[int(i)], shard, int(i)) for i in hits)
    return plan


def _read_shard(shard: Shard, size: int) -> pa.Table:
    try:
        return shard.read().slice(0, size)
    except Exception as e:
        raise PipelineError(f"cannot read {shard.uri}: {e}") from e


def plan_shard(cfg: JobConfig, plan: JobPlan, shard: Shard, job_seed: int,
               check_script: Callable[[str], list[str]],
               voice_check: Optional[Callable[[Any, Optional[str]], list[str]]] = None) -> list[RowSpec]:
    """Turn one shard into its RowSpecs (each row at each sweep point, with a unique key and file
    name), kept in ``plan.loaded`` with its carried-through columns until ``plan.release``.
    ``voice_check(voices, audio_prompt)``: the problems of a row's named voices."""
    from .scripts import is_long
    table = _read_shard(shard, plan.sizes[shard.name])
    ext = cfg.output.format.value
    raw, id_problems = (read_cells(table, cfg.data.id_column) if cfg.data.id_column in table.column_names
                        else ([None] * table.num_rows, {}))
    ids = [_row_id(v, shard, i) for i, v in enumerate(raw)]
    names, renamed = _carried_columns(table.schema, cfg)
    carried, carried_problems = clean_carried(table.select(names))
    plan.carried[shard.name] = carried.rename_columns([renamed.get(n, n) for n in names])
    plan.renamed.update(renamed)
    bad_cells: dict[int, list[str]] = defaultdict(list)  # row -> cells that could not be decoded
    for problems in (id_problems, carried_problems):
        for i, problem in problems.items():
            bad_cells[i].append(problem)
    columns, bad_text = {}, set()
    for name, src in [("text", cfg.data.text_column),
                      *((c, c) for c in (*OVERRIDES, *PROMPT_COLUMNS, *VOICE_COLUMNS))]:
        if src in table.column_names:
            columns[name], problems = read_cells(table, src)
            for i, problem in problems.items():
                bad_cells[i].append(problem)
            bad_text |= set(problems) if name == "text" else set()
    del table
    stems = StemAllocator()
    rows: list[RowSpec] = []
    for i, row_id in enumerate(ids):
        base_key = f"{row_id}@{shard.name}:{i}" if row_id in plan.duplicates else row_id
        parsed = parse_cells({name: values[i] for name, values in columns.items()}, check_script)
        if i in bad_cells:  # an undecodable text cell is not also "missing"
            parsed.problems = bad_cells[i] + [p for p in parsed.problems if i not in bad_text or p != MISSING_TEXT]
        if voice_check is not None:
            parsed.problems += voice_check(parsed.voices, parsed.audio_prompt)
        long_form = parsed.text is not None and is_long(cfg.generation, parsed.script)
        for p, (tag, values) in enumerate(plan.points):
            key = base_key if tag is None else f"{base_key}|{tag}"
            stem = stems.allocate(row_id, unique=base_key, suffix=f"__{tag}" if tag else "")
            rows.append(make_row(
                parsed=parsed, key=key, row_id=row_id, shard=shard.name, shard_folder=shard.folder_uri,
                row_index=i, point=p, sweep_point=tag, sweep_values=values, defaults=cfg.generation,
                job_seed=job_seed, seed_key=base_key, audio_path=f"audio/{shard.name}/{stem}.{ext}",
                long_form=long_form,
            ))
    plan.loaded[shard.name] = rows
    return rows


def build_plan(cfg: JobConfig, job_seed: int, check_script: Callable[[str], list[str]]) -> JobPlan:
    """The whole plan at once (every shard planned): for small jobs and tests."""
    plan = scan_plan(cfg)
    for shard in plan.shards:
        plan_shard(cfg, plan, shard, job_seed, check_script)
    return plan
