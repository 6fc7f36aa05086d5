"""Reading a shard's cells: a column as Python values with a problem per undecodable cell, and the
carried-through columns cleaned so the metadata stays readable."""
from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from ..errors import PipelineError
from .inputs import Shard


def is_text(kind: pa.DataType) -> bool:
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
    if is_text(column.type):
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
        if is_text(column.type):
            fixed = pa.array(values, column.type)
        else:
            keep = pa.array([i not in bad for i in range(len(column))])
            fixed = pa.compute.if_else(keep, column, pa.nulls(len(column), column.type))
        table = table.set_column(index, name, fixed)
    return table, problems


def read_shard(shard: Shard, size: int) -> pa.Table:
    try:
        return shard.read().slice(0, size)
    except Exception as e:
        raise PipelineError(f"cannot read {shard.uri}: {e}") from e
