"""The driver's live progress bar and the end-of-run summary text."""
from __future__ import annotations

import time
from typing import Any, Optional

from tqdm import tqdm


class Progress:
    """Rows done/failed, audio-seconds produced, audio-seconds per wall-second and ETA."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.start = time.time()
        self.ok = 0
        self.error = 0
        self.audio_s = 0.0
        self.first_row_at: Optional[float] = None
        self._shown = 0.0
        self.bar = tqdm(total=total, unit="row", disable=not enabled or total == 0, dynamic_ncols=True,
                        smoothing=0.05, desc="synthesis")

    def row(self, ok: bool, audio_s: float = 0.0, generated: bool = True) -> None:
        """Count one finished row (``generated``: it came from a replica, not from a check up front)."""
        if generated and self.first_row_at is None:
            self.first_row_at = time.time()
        self.ok += ok
        self.error += not ok
        self.audio_s += audio_s
        self.bar.update(1)
        self.refresh()

    def refresh(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._shown >= 0.5:
            self._shown = now
            wall = max(now - self.start, 1e-9)
            self.bar.set_postfix(ok=self.ok, failed=self.error, audio=f"{self.audio_s:.1f}s",
                                 x_realtime=f"{self.audio_s / wall:.2f}", refresh=True)

    def close(self) -> None:
        self.refresh(force=True)
        self.bar.close()


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable block for the end of a run."""
    run = summary["this_run"]
    counts = ", ".join(f"{k}={v}" for k, v in sorted(summary["status_counts"].items())) or "none"
    lines = [
        f"job: {summary['job_dir']}",
        f"rows: {summary['rows']} ({counts}); audio {summary['audio_s']:.1f} s in total",
        f"this run: {run['rows_done']} rows ({run['ok']} ok, {run['error']} error), "
        f"{run['skipped']} already done, {run['wall_s']:.1f} s wall",
        f"throughput: {run['rows_per_s']:.3f} rows/s, {run['audio_s_per_wall_s']:.3f} audio-s per wall-s "
        f"(real-time factor {run['realtime_factor']:.3f}; compute/audio {run['rtf']})",
    ]
    if run.get("time_to_first_row_s") is not None:
        lines.append(f"first finished row after {run['time_to_first_row_s']:.1f} s")
    for name, r in summary.get("replicas", {}).items():
        lines.append(
            f"  {name}: {r['rows_ok']} ok / {r['rows_error']} error in {r['batches']} batches on {r['device']}, "
            f"busy {100 * r['busy_fraction']:.0f}%, failures {r['failures']}"
        )
    return "\n".join(lines)
