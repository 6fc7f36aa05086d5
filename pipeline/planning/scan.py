"""From input shards and config to the rows the job must produce, one shard at a time.

``scan_plan`` reads only the id column of every shard (to find ids used more than once, which get
shard-qualified keys) and fixes each shard's row count. The driver then indexes a shard when its
queue needs rows (``index_shard``: keys and script lengths, read column-wise, no cell parsed), and
``JobPlan.release`` drops the index once the shard is done, so it holds the keys of the shards in
flight, not the whole job. Cells are parsed and checked where the rows run: a replica plans the
rows it is sent with a ``ShardPlanner`` (built from the ``JobContext`` it got at start).
``plan_shard`` plans a whole shard at once, for tests and small tools.
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

from ..config import JobConfig
from ..errors import PipelineError
from .ids import StemAllocator
from .inputs import Shard, check_schemas, resolve_inputs
from ..records.schema import OWN_COLUMNS
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


@dataclass
class ShardIndex:
    """What the driver keeps of a planned shard: every output row's key, in input order (row i at
    sweep point p is position ``i * points + p``). No cell is parsed here: the replicas plan the rows
    they run (``ShardPlanner``), so the driver's work per row stays a few list operations."""

    keys: list[str]
    points: list[Optional[str]]  # sweep tag of each point


def _base_keys(ids: list[str], shard: Shard, duplicates: set[str]) -> list[str]:
    """Each input row's key: its id, shard-qualified when the job uses the id twice (also the seed key)."""
    if not duplicates:
        return list(ids)
    return [f"{row_id}@{shard.name}:{i}" if row_id in duplicates else row_id for i, row_id in enumerate(ids)]


def _keys(base: list[str], points: list[tuple[Optional[str], Any]]) -> list[str]:
    """Each output row's key: the input row's key, then the sweep tag."""
    if len(points) == 1 and points[0][0] is None:
        return list(base)
    return [k if tag is None else f"{k}|{tag}" for k in base for tag, _ in points]


def _ids(table: pa.Table, cfg: JobConfig, shard: Shard) -> tuple[list[str], dict[int, str]]:
    raw, problems = (read_cells(table, cfg.data.id_column) if cfg.data.id_column in table.column_names
                     else ([None] * table.num_rows, {}))
    return [_row_id(v, shard, i) for i, v in enumerate(raw)], problems


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
    ids, _ = _ids(table, cfg, shard)
    lengths = np.zeros(size, np.int64)
    for name in (cfg.data.text_column, "prompt_transcript"):
        if name in table.column_names and (_is_text(table.column(name).type)
                                           or pa.types.is_binary(table.column(name).type)):
            column = table.column(name).cast(pa.large_binary())  # bytes, never a UTF-8 check
            lengths += pa.compute.fill_null(pa.compute.binary_length(column), 0).to_numpy()
    index = ShardIndex(_keys(_base_keys(ids, shard, plan.duplicates), plan.points), [tag for tag, _ in plan.points])
    plan.index[shard.name] = index
    return index, np.repeat(lengths, len(plan.points))


class ShardPlanner:
    """One shard's rows as RowSpecs, made on demand: the cells are decoded once per shard, each row
    is parsed and checked only when asked for (``row(position)``). Replicas use it for the rows they
    run; tests and small jobs plan whole shards through ``plan_shard``.

    File stems are allocated for the whole shard up front, in input order, so a row's audio name
    does not depend on which replica plans it or when."""

    def __init__(self, cfg: JobConfig, shard: Shard, size: int, duplicates: set[str],
                 points: list[tuple[Optional[str], dict[str, Any]]], job_seed: int,
                 check_script: Callable[[str], list[str]],
                 voice_check: Optional[Callable[[Any, Optional[str]], list[str]]] = None) -> None:
        self.cfg, self.shard, self.points, self.job_seed = cfg, shard, points, job_seed
        self.check_script, self.voice_check = check_script, voice_check
        table = _read_shard(shard, size)
        ids, id_problems = _ids(table, cfg, shard)
        self.ids = ids
        names, self.renamed = _carried_columns(table.schema, cfg)
        carried, carried_problems = clean_carried(table.select(names))
        self.carried = carried.rename_columns([self.renamed.get(n, n) for n in names])
        self.bad_cells: dict[int, list[str]] = defaultdict(list)  # row -> cells that could not be decoded
        for problems in (id_problems, carried_problems):
            for i, problem in problems.items():
                self.bad_cells[i].append(problem)
        self.columns: dict[str, list[Any]] = {}
        self.bad_text: set[int] = set()
        for name, src in [("text", cfg.data.text_column),
                          *((c, c) for c in (*OVERRIDES, *PROMPT_COLUMNS, *VOICE_COLUMNS))]:
            if src in table.column_names:
                self.columns[name], problems = read_cells(table, src)
                for i, problem in problems.items():
                    self.bad_cells[i].append(problem)
                self.bad_text |= set(problems) if name == "text" else set()
        del table
        self.base_keys = _base_keys(ids, shard, duplicates)
        self.keys = _keys(self.base_keys, points)
        ext = cfg.output.format.value
        stems = StemAllocator()
        self.paths: list[str] = []
        for row_id, base_key in zip(ids, self.base_keys):
            for tag, _ in points:
                stem = stems.allocate(row_id, unique=base_key, suffix=f"__{tag}" if tag else "")
                self.paths.append(f"audio/{shard.name}/{stem}.{ext}")

    def __len__(self) -> int:
        return len(self.keys)

    def row(self, position: int) -> RowSpec:
        """The RowSpec at ``position`` (row ``position // points`` at sweep point ``position % points``)."""
        from ..model.script_checks import is_long

        i, p = divmod(position, len(self.points))
        row_id = self.ids[i]
        parsed = parse_cells({name: values[i] for name, values in self.columns.items()}, self.check_script)
        if i in self.bad_cells:  # an undecodable text cell is not also "missing"
            parsed.problems = self.bad_cells[i] + [q for q in parsed.problems
                                                   if i not in self.bad_text or q != MISSING_TEXT]
        if self.voice_check is not None:
            parsed.problems += self.voice_check(parsed.voices, parsed.audio_prompt)
        long_form = parsed.text is not None and is_long(self.cfg.generation, parsed.script)
        tag, values = self.points[p]
        return make_row(
            parsed=parsed, key=self.keys[position], row_id=row_id, shard=self.shard.name,
            shard_folder=self.shard.folder_uri, row_index=i, point=p, sweep_point=tag, sweep_values=values,
            defaults=self.cfg.generation, job_seed=self.job_seed, seed_key=self.base_keys[i],
            audio_path=self.paths[position], long_form=long_form,
        )


def plan_shard(cfg: JobConfig, plan: JobPlan, shard: Shard, job_seed: int,
               check_script: Callable[[str], list[str]],
               voice_check: Optional[Callable[[Any, Optional[str]], list[str]]] = None) -> list[RowSpec]:
    """Turn one whole shard into its RowSpecs (each row at each sweep point, with a unique key and
    file name), kept in ``plan.loaded`` with its carried-through columns until ``plan.release``.
    ``voice_check(voices, audio_prompt)``: the problems of a row's named voices."""
    planner = ShardPlanner(cfg, shard, plan.sizes[shard.name], plan.duplicates, plan.points, job_seed,
                           check_script, voice_check)
    plan.carried[shard.name] = planner.carried
    plan.renamed.update(planner.renamed)
    rows = [planner.row(k) for k in range(len(planner))]
    plan.loaded[shard.name] = rows
    plan.index[shard.name] = ShardIndex(planner.keys, [tag for tag, _ in plan.points])
    return rows


def build_plan(cfg: JobConfig, job_seed: int, check_script: Callable[[str], list[str]]) -> JobPlan:
    """The whole plan at once (every shard planned): for small jobs and tests."""
    plan = scan_plan(cfg)
    for shard in plan.shards:
        plan_shard(cfg, plan, shard, job_seed, check_script)
    return plan


@dataclass
class JobContext:
    """What a replica needs to plan any row of the job itself: sent once, when the replica starts,
    so that a unit of work is only (key, shard, position) triples."""

    cfg: JobConfig
    job_seed: int
    shards: dict[str, tuple[Shard, int]]  # name -> (shard, rows used)
    duplicates: set[str]
    points: list[tuple[Optional[str], dict[str, Any]]]
    voices: dict[str, Any]  # name -> voices.VoiceClip without its audio bytes (checks only)

    @classmethod
    def of(cls, cfg: JobConfig, plan: JobPlan, job_seed: int, clips: dict[str, Any]) -> "JobContext":
        import dataclasses

        return cls(cfg, job_seed, {s.name: (s, plan.sizes[s.name]) for s in plan.shards}, set(plan.duplicates),
                   plan.points, {n: dataclasses.replace(c, audio=None) for n, c in clips.items()})

    def planner(self, shard_name: str) -> ShardPlanner:
        """A planner for one shard of the job (reads the shard)."""
        from ..model.script_checks import script_checker
        from .voices import voice_problems

        shard, size = self.shards[shard_name]
        clips = self.voices
        return ShardPlanner(self.cfg, shard, size, self.duplicates, self.points, self.job_seed,
                            script_checker(self.cfg.generation),
                            lambda voices, prompt: voice_problems(voices, clips, prompt))
