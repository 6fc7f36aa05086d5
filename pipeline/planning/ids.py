"""Row ids to file names that stay inside the job directory and never collide."""
from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
MAX_STEM = 96  # of the id's own part
# of a whole file stem, sweep tag included: with the extension and the temporary-name suffix
# (files.py, about 25 bytes) a name stays well under the 255 bytes file systems allow
MAX_FILE_STEM = 200


def short_hash(text: str, n: int = 10) -> str:
    """A short, stable hex digest of ``text``."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def safe_stem(raw: str) -> str:
    """A file-name stem for ``raw``: kept as-is when already safe, else cleaned and hash-suffixed.

    Safe means: only ``A-Z a-z 0-9 . _ = + -``, no leading dot or dash, at most MAX_STEM characters,
    not a reserved device name. The hash suffix keeps two different unsafe ids (``a/b`` and ``a_b``)
    apart.
    """
    stem = _UNSAFE.sub("_", raw).lstrip(".-")
    stem = stem[:MAX_STEM]
    if stem != raw or not stem or stem.split(".")[0].lower() in _RESERVED:
        stem = f"{stem or 'row'}-{short_hash(raw)}"
    return stem


def bounded(stem: str, limit: int = MAX_FILE_STEM) -> str:
    """``stem`` if it fits in ``limit`` bytes, else its start plus a hash of the whole (still unique)."""
    if len(stem.encode()) <= limit:
        return stem
    digest = short_hash(stem)
    return stem.encode()[: limit - len(digest) - 1].decode(errors="ignore") + "-" + digest


class StemAllocator:
    """Hands out file stems that are unique (case-insensitively) within one folder and bounded in length."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def allocate(self, name: str, unique: str, suffix: str = "") -> str:
        """A stem for ``name`` (+ ``suffix``); ``unique`` (distinct per caller) breaks collisions."""
        suffix = _UNSAFE.sub("_", suffix)
        stem = bounded(safe_stem(name) + suffix)
        n = 0
        while stem.lower() in self._taken:
            n += 1
            salt = unique if n == 1 else f"{unique}#{n}"
            stem = bounded(f"{safe_stem(name)}-{short_hash(salt)}{suffix}")
        self._taken.add(stem.lower())
        return stem
