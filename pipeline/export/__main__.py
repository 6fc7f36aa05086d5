"""``python -m pipeline.export JOB --format FMT --out DEST`` (console script ``dia-export``).

Exit status: 0 when the export is written, 2 when it could not be (the message says what to fix).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

from ..errors import PipelineError
from . import FORMATS, Options, ShardSize, export_job


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="dia-export", description="Export a job's rows for a training stack.")
    ap.add_argument("job", help="the job's output.dir: a folder or a URI (s3://...)")
    ap.add_argument("--format", required=True, choices=sorted(FORMATS))
    ap.add_argument("--out", required=True, help="where the export goes: a folder or a URI")
    ap.add_argument("--status", default="ok", help="rows of these statuses, comma-separated (ok, rejected, error)")
    ap.add_argument("--shard-size", default=None, help="rows (1000), bytes (1GB) or both (1000,1GB) per shard; "
                    "default: 1GB for webdataset, 1000 rows or 1GB for lhotse-shar, 512MB for hf, 10000 cuts for "
                    "lhotse, 100000 lines for nemo")
    ap.add_argument("--split-turns", action="store_true", help="nemo: one line per timed turn (offset, duration)")
    ap.add_argument("--speaker-audio", action="store_true",
                    help="also one audio file per speaker (its turns, silence elsewhere), for timed rows")
    args = ap.parse_args(argv)
    statuses = tuple(s.strip() for s in args.status.split(",") if s.strip())
    unknown = sorted(set(statuses) - {"ok", "rejected", "error"})
    try:
        if unknown or not statuses:
            raise PipelineError(f"--status {args.status}: choose from ok, rejected, error")
        size = ShardSize.parse(args.shard_size) if args.shard_size else None
        started = time.perf_counter()
        summary = export_job(args.job, args.format, args.out, statuses=statuses, shard_size=size,
                             options=Options(split_turns=args.split_turns, speaker_audio=args.speaker_audio))
    except (PipelineError, ValueError) as e:
        print(f"dia-export: error: {e}", file=sys.stderr)
        return 2
    took = time.perf_counter() - started
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items())) or "no rows"
    print(f"{summary.out}: {summary.rows} rows ({counts}), {summary.seconds / 3600:.3f} h of audio, "
          f"{len(summary.files)} files, {summary.bytes / 2**20:.1f} MB in shards, {took:.1f} s"
          + (f"; {summary.no_audio} row(s) without audio left out" if summary.no_audio else "")
          + (f"; removed {len(summary.removed)} stale file(s)" if summary.removed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
