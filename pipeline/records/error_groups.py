"""Row errors grouped by reason (particulars blanked out), for the run summary, job.json and the report."""
from __future__ import annotations

import re
from typing import Any, Iterable

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_PATH = re.compile(r"(?:\b[a-z][a-z0-9+.-]*://|(?<![\w.])/)[^\s,;()'\"]+")
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")
ERROR_EXAMPLE_IDS = 5


def error_kind(message: str) -> str:
    """A row error with its particulars (quoted values, paths, numbers) blanked out, so rows that
    failed for the same reason group together."""
    kind = _QUOTED.sub("'…'", message)
    kind = _PATH.sub("<path>", kind)
    kind = _NUMBER.sub("N", kind)
    return kind[:240]


def group_errors(rows: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """(id, error) pairs -> groups by reason, largest first: reason, count, one full example message
    and the first few ids."""
    groups: dict[str, dict[str, Any]] = {}
    for row_id, message in rows:
        g = groups.setdefault(error_kind(message), {"count": 0, "example": message[:500], "ids": []})
        g["count"] += 1
        if len(g["ids"]) < ERROR_EXAMPLE_IDS:
            g["ids"].append(row_id)
    return [{"reason": k, **g} for k, g in sorted(groups.items(), key=lambda kv: -kv[1]["count"])]


def format_errors(groups: list[dict[str, Any]], limit: int = 10) -> list[str]:
    """Lines listing error groups: count, reason, example ids and one full message."""
    if not groups:
        return []
    total = sum(g["count"] for g in groups)
    lines = [f"errors: {total} row{'s' if total != 1 else ''}, by reason:"]
    for g in groups[:limit]:
        more = ", …" if g["count"] > len(g["ids"]) else ""
        lines.append(f"  {g['count']:>6} × {g['reason']}")
        lines.append(f"           ids: {', '.join(map(repr, g['ids']))}{more}")
        if g["example"] != g["reason"]:
            lines.append(f"           e.g. {g['example']}")
    if len(groups) > limit:
        rest = sum(g["count"] for g in groups[limit:])
        lines.append(f"  … {len(groups) - limit} more reasons ({rest} rows): see job.json (summary.errors)")
    return lines
