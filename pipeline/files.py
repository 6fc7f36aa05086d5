"""Whole-or-nothing file writes inside the job directory."""
from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Callable

TMP_MARK = ".tmp-"


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path``; a long name is replaced by its hash so the temporary name fits
    the file system's limit whenever the final one does."""
    name = path.name if len(path.name.encode()) <= 200 else hashlib.sha256(path.name.encode()).hexdigest()[:16]
    return path.with_name(f".{name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file, or the whole new one. Whatever was
    at ``path`` (a symlink included) is replaced, never written through; the temporary file is made
    new (``x``), so not even a planted link at its name is followed."""

    def write(tmp: Path) -> None:
        with open(tmp, "xb") as f:
            f.write(data)

    atomic_write(path, write)


def remove_stale_temporaries(root: Path) -> int:
    """Delete temporary files an interrupted run left under ``root``; return how many."""
    n = 0
    if root.is_dir():
        for p in root.rglob(f".*{TMP_MARK}*"):
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
    return n
