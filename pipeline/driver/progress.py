"""The driver's live progress bar and the end-of-run summary text."""
from __future__ import annotations

import time
from typing import Any, Optional

from tqdm import tqdm

from ..records.error_groups import format_errors


class Progress:
    """Rows ok / error, audio-seconds produced, × real time (audio-seconds per wall-second) and ETA."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.start = time.time()
        self.ok = 0
        self.error = 0
        self.audio_s = 0.0
        self.bytes = 0  # audio bytes the replicas wrote
        self.first_row_at: Optional[float] = None
        self._shown = 0.0
        self.bar = tqdm(total=total, unit="row", disable=not enabled or total == 0, dynamic_ncols=True,
                        smoothing=0.05, desc="synthesis")

    def row(self, ok: bool, audio_s: float = 0.0, generated: bool = True, nbytes: int = 0) -> None:
        """Count one finished row (``generated``: it came from a replica, not from a check up front)."""
        self.rows(int(ok), int(not ok), audio_s, nbytes, generated)

    def skip(self, n: int) -> None:
        """Rows an earlier run finished (they move the bar, not the counts)."""
        if n:
            self.bar.update(n)

    def rows(self, ok: int, error: int, audio_s: float = 0.0, nbytes: int = 0, generated: bool = True) -> None:
        """Count finished rows at once (a replica's delivery)."""
        if not ok + error:
            return
        if generated and self.first_row_at is None:
            self.first_row_at = time.time()
        self.ok += ok
        self.error += error
        self.audio_s += audio_s
        self.bytes += nbytes
        self.bar.update(ok + error)
        self.refresh()

    def refresh(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._shown >= 0.5:
            self._shown = now
            wall = max(now - self.start, 1e-9)
            self.bar.set_postfix_str(f"ok={self.ok}, error={self.error}, audio={self.audio_s:.1f}s, "
                                     f"{self.audio_s / wall:.2f}× real time, written={human_bytes(self.bytes)}",
                                     refresh=True)

    def close(self) -> None:
        self.refresh(force=True)
        self.bar.close()


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable block for the end of a run."""
    run = summary["this_run"]
    counts = ", ".join(f"{k}={v}" for k, v in sorted(summary["status_counts"].items())) or "none"
    throughput = f"throughput: {run['rows_per_s']:.3f} rows/s, {run['audio_s_per_wall_s']:.3f}× real time"
    if run.get("wall_s_per_audio_s") is not None:
        throughput += f" ({run['wall_s_per_audio_s']:.2f} wall-s per audio-s)"
    lines = [
        f"job: {summary['job_dir']}",
        f"rows: {summary['rows']} ({counts}); audio {summary['audio_s']:.1f} s in total",
        f"this run: {run['rows_done']} rows ({run['ok']} ok, {run['error']} error or rejected), "
        f"{run['skipped']} already done, {run['wall_s']:.1f} s wall",
    ]
    if run["rows_done"]:
        lines.append(throughput + f"; {human_bytes(run.get('bytes_written', 0))} of audio written")
    if run.get("time_to_first_row_s") is not None:
        lines.append(f"first finished row after {run['time_to_first_row_s']:.1f} s")
    for name, r in summary.get("replicas", {}).items():
        lines.append(
            f"  {name}: {r['rows_ok']} ok / {r['rows_error']} error on {r['device']} ({r.get('slots')} slots), "
            f"busy {100 * r['busy_fraction']:.0f}%, {human_bytes(r.get('bytes_written', 0))} written, "
            f"crashes {r['crashes']}"
        )
    lines += format_errors(summary.get("errors", []))
    return "\n".join(lines)
