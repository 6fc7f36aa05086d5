"""The in-job grid: every row generated once per point of ``sweep.*``, sharing batches."""
from __future__ import annotations

import itertools
from dataclasses import asdict
from typing import Any, Optional

from ..config import SweepConfig
from ..errors import PipelineError
from .rows import parse_number


def _fmt(value: Any) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def sweep_points(sweep: SweepConfig) -> list[tuple[Optional[str], dict[str, Any]]]:
    """[(tag, values)] for each grid point; one untagged empty point when no sweep is set.

    The tag (``cfg_scale-2.0__top_k-30``) is file-name safe; it suffixes the audio file name and
    is stored in the metadata's ``sweep_point`` column.
    """
    axes = [(name, list(values)) for name, values in asdict(sweep).items() if values]
    if not axes:
        return [(None, {})]
    for name, values in axes:
        for v in values:
            _, problem = parse_number(name, v)
            if problem:
                raise PipelineError(f"sweep.{name}: {problem}")
        if len(set(values)) != len(values):
            raise PipelineError(f"sweep.{name} lists a value twice: {values}")
    points = []
    for combo in itertools.product(*(values for _, values in axes)):
        values = {name: v for (name, _), v in zip(axes, combo)}
        tag = "__".join(f"{name}-{_fmt(v)}" for name, v in values.items())
        points.append((tag, values))
    return points
