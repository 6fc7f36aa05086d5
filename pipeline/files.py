"""Whole-or-nothing file writes inside the job directory."""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path
from typing import IO, Iterator

TMP_MARK = ".tmp-"


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path``; a long name is replaced by its hash so the temporary name fits
    the file system's limit whenever the final one does."""
    name = path.name if len(path.name.encode()) <= 200 else hashlib.sha256(path.name.encode()).hexdigest()[:16]
    return path.with_name(f".{name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_open(path: Path) -> Iterator[IO[bytes]]:
    """A new binary file to fill; it replaces ``path`` (a symlink there included, never written
    through) when the block ends without an error, and is removed otherwise. The temporary file is
    made new (``x``), so not even a planted link at its name is followed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "xb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file, or the whole new one."""
    with atomic_open(path) as f:
        f.write(data)


def remove_stale_temporaries(root: Path) -> int:
    """Delete temporary files an interrupted run left under ``root``; return how many."""
    n = 0
    if root.is_dir():
        for p in root.rglob(f".*{TMP_MARK}*"):
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
    return n
