"""Where an export goes: files written whole or not at all, in shards of bounded size, named so that a
re-run writes the same names (and removes what a larger earlier export left beyond them).

A local destination gets each file under a hidden temporary name in its folder, renamed when
complete. An object store gets one upload per file, from a local spool (in memory up to 32 MB,
then an anonymous temporary file that the OS removes), visible only once the upload completes.
"""
from __future__ import annotations

import contextlib
import fnmatch
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Optional

from ..files import TMP_MARK, atomic_open
from ..storage import Storage

SPOOL_BYTES = 32 << 20
_SIZE = re.compile(r"(?i)\s*([0-9]+(?:\.[0-9]+)?)\s*(k|m|g|t)?i?b\s*")


@dataclass(frozen=True)
class ShardSize:
    """A shard closes after ``rows`` rows or once it holds ``bytes`` bytes, whichever comes first."""

    rows: Optional[int] = None
    bytes: Optional[int] = None

    @classmethod
    def parse(cls, spec: str) -> "ShardSize":
        """``1000`` (rows), ``1GB`` / ``500MB`` (bytes), or both: ``1000,1GB``."""
        rows = size = None
        for part in [p for p in spec.split(",") if p.strip()]:
            part = part.strip()
            if part.isdigit():
                rows = int(part)
                continue
            m = _SIZE.fullmatch(part)
            if not m:
                raise ValueError(f"--shard-size {spec!r}: give rows (1000), bytes (1GB, 500MB) or both (1000,1GB)")
            size = int(float(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper()))
        if (rows is not None and rows < 1) or (size is not None and size < 1):
            raise ValueError(f"--shard-size {spec!r} must be positive")
        if rows is None and size is None:
            raise ValueError("--shard-size is empty")
        return cls(rows, size)

    def full(self, rows: int, size: int) -> bool:
        return (self.rows is not None and rows >= self.rows) or (self.bytes is not None and size >= self.bytes)


class Destination:
    """The export's location (a folder or a URI prefix) and the files this export wrote to it."""

    def __init__(self, out: str) -> None:
        self.storage = Storage(out)
        self.written: list[str] = []

    def __str__(self) -> str:
        return str(self.storage)

    @property
    def local(self) -> bool:
        return self.storage.local

    def put(self, rel: str, data: bytes) -> None:
        self.storage.put(rel, data)
        self.written.append(rel)

    @contextlib.contextmanager
    def open(self, rel: str) -> Iterator[IO[bytes]]:
        """A binary file to fill; it appears at ``rel`` whole when the block ends without an error."""
        full = self.storage.path(rel)
        if self.local:
            with atomic_open(Path(full)) as f:
                yield f
        else:
            with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
                yield spool
                spool.seek(0)
                # compression=None: pyarrow would gzip a name ending in .gz a second time
                with self.storage.fs.open_output_stream(full, compression=None) as out:  # one upload, visible once complete
                    shutil.copyfileobj(spool, out, 8 << 20)
        self.written.append(rel)

    def remove_stale(self, patterns: list[str]) -> list[str]:
        """Delete files matching ``patterns`` (our own names) that this export did not write: what an
        earlier, larger export of the same destination left. Also leftover temporaries of ours."""
        import pyarrow.fs as pafs

        mine = set(self.written)
        removed = []
        base = self.storage.base.rstrip("/")
        infos = self.storage.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        for rel in sorted(i.path[len(base) + 1:] for i in infos if i.type == pafs.FileType.File):
            name = rel.rsplit("/", 1)[-1]
            if rel not in mine and any(fnmatch.fnmatchcase(rel, p) for p in patterns):
                self.storage.delete(rel)
                removed.append(rel)
            elif TMP_MARK in name:
                self.storage.delete(rel)
        return removed


__all__ = ["ShardSize", "Destination"]
