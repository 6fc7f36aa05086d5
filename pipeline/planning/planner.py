"""The replica's side of planning: one shard's rows as RowSpecs, cells parsed and checked only when
a row is asked for. A replica builds a ``ShardPlanner`` from the ``JobContext`` it got at start;
``plan_shard``/``build_plan`` plan whole shards at once, for tests and small tools.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Optional

import pyarrow as pa

from ..config import JobConfig
from ..records.schema import OWN_COLUMNS
from .cells import clean_carried, read_cells, read_shard
from .ids import StemAllocator
from .inputs import Shard
from .keys import base_keys, output_keys, shard_ids
from .rows import MISSING_TEXT, OVERRIDES, PROMPT_COLUMNS, RowSpec, make_row, parse_cells
from .scan import JobPlan, ShardIndex, scan_plan
from .voices import VOICE_COLUMNS, voice_problems


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
        table = read_shard(shard, size)
        ids, id_problems = shard_ids(table, cfg, shard)
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
        self.base_keys = base_keys(ids, shard, duplicates)
        self.keys = output_keys(self.base_keys, points)
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
        from ..model.script_checks import is_long  # deferred: dia_model loads torch, planning must not

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
        return cls(cfg, job_seed, {s.name: (s, plan.sizes[s.name]) for s in plan.shards}, set(plan.duplicates),
                   plan.points, {n: dataclasses.replace(c, audio=None) for n, c in clips.items()})

    def planner(self, shard_name: str) -> ShardPlanner:
        """A planner for one shard of the job (reads the shard)."""
        from ..model.script_checks import script_checker  # deferred: dia_model loads torch

        shard, size = self.shards[shard_name]
        clips = self.voices
        return ShardPlanner(self.cfg, shard, size, self.duplicates, self.points, self.job_seed,
                            script_checker(self.cfg.generation),
                            lambda voices, prompt: voice_problems(voices, clips, prompt))
