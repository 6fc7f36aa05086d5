"""The job's output location: a local folder or an object-store prefix (``s3://``, ``gs://``, ...),
reached through pyarrow filesystems so that the driver and every replica write to it directly.

Every object appears whole or not at all. A local file is written under a temporary name and
renamed; an object store gets one upload to the final key, which stays invisible until the upload
completes (a process that dies mid-upload leaves nothing). S3 endpoints and credentials come from
the standard environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``, ...), so any S3-compatible store works.
"""
from __future__ import annotations

import errno
import io
import os
import posixpath
import secrets
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import PipelineError
from .files import atomic_write_bytes, remove_stale_temporaries

# errors writing one object that say every other write would fail too: the job stops instead of
# marking rows as errors
JOB_WIDE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
_JOB_WIDE_WORDS = ("ACCESS_DENIED", "AccessDenied", "INVALID_ACCESS_KEY_ID", "InvalidAccessKeyId",
                   "SIGNATURE_DOES_NOT_MATCH", "SignatureDoesNotMatch", "NO_SUCH_BUCKET", "NoSuchBucket", "Forbidden",
                   "QuotaExceeded")


def is_uri(spec: str) -> bool:
    """Whether ``spec`` names a non-local location (``s3://``, ``gs://``, ...)."""
    return "://" in spec and not spec.startswith("file://")


def _endpoint_options() -> dict[str, Any]:
    """S3 options pyarrow does not read from the environment by itself (older versions)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return {}
    scheme, _, rest = endpoint.partition("://")
    return {"endpoint_override": rest or scheme, "scheme": scheme if rest else "https"}


def filesystem_for(spec: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and in-filesystem path of a local path or URI."""
    if spec.startswith("file://"):
        spec = spec[len("file://"):]
    if not is_uri(spec):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(spec))
    if spec.startswith("s3://") and _endpoint_options():
        bucket_path = spec[len("s3://"):]
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return pafs.S3FileSystem(region=region, **_endpoint_options()), bucket_path.rstrip("/")
    fs, path = pafs.FileSystem.from_uri(spec)
    return fs, path.rstrip("/")


def job_wide(e: BaseException) -> bool:
    """Whether a write error would hit every other write too (disk full, read-only, no permission,
    wrong credentials, no such bucket)."""
    if isinstance(e, OSError) and e.errno in JOB_WIDE_ERRNOS:
        return True
    text = str(e)
    return any(word in text for word in _JOB_WIDE_WORDS)


class Storage:
    """Relative paths (``audio/x/y.flac``, ``metadata/...``, ``job.json``) under one root location.

    Picklable: a replica gets the root and opens its own filesystem.
    """

    def __init__(self, root: str) -> None:
        self.root = str(root)
        self.local = not is_uri(self.root)
        self._fs: Optional[pafs.FileSystem] = None
        self._base = ""

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "local": self.local}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"])  # type: ignore[misc]

    @property
    def fs(self) -> pafs.FileSystem:
        if self._fs is None:
            try:
                self._fs, self._base = filesystem_for(self.root)
            except Exception as e:  # unknown scheme, bad URI
                raise PipelineError(f"output.dir={self.root!r} cannot be opened: {e}") from e
        return self._fs

    @property
    def base(self) -> str:
        self.fs  # noqa: B018 (opens it)
        return self._base

    def __str__(self) -> str:
        return self.root if not self.local else self.base

    # -- paths --------------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        """The in-filesystem path of ``rel``, refusing anything that would land outside the root."""
        norm = posixpath.normpath(rel.replace("\\", "/"))
        if norm.startswith(("/", "../")) or norm in ("..", ".") or "/../" in f"/{norm}/":
            raise ValueError(f"{rel!r} points outside {self}")
        full = f"{self.base}/{norm}"
        if self.local and not Path(full).resolve().is_relative_to(Path(self.base).resolve()):
            raise ValueError(f"{rel!r} leads outside {self} (through a symbolic link)")
        return full

    def uri(self, rel: str) -> str:
        """Where ``rel`` is, for people and metadata."""
        return f"{self.root.rstrip('/')}/{rel}" if not self.local else self.path(rel)

    # -- writing ------------------------------------------------------------------------------
    def put(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel`` so that readers see the old object or the whole new one."""
        if self.local:
            atomic_write_bytes(Path(self.path(rel)), data)
            return
        with self.fs.open_output_stream(self.path(rel)) as out:  # one upload, visible once complete
            out.write(data)

    def put_table(self, rel: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.put(rel, buffer.getvalue())

    def delete(self, rel: str) -> None:
        try:
            self.fs.delete_file(self.path(rel))
        except FileNotFoundError:
            pass

    def delete_tree(self, rel: str) -> None:
        path = self.path(rel)
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return
        self.fs.delete_dir(path)

    def remove_temporaries(self, rel: str) -> int:
        """Temporary files an interrupted local run left under ``rel`` (object stores have none)."""
        return remove_stale_temporaries(Path(self.path(rel))) if self.local else 0

    # -- reading ------------------------------------------------------------------------------
    def get(self, rel: str) -> Optional[bytes]:
        """The object's bytes, or None when there is none."""
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def read_table(self, rel: str, columns: Optional[list[str]] = None) -> pa.Table:
        with self.fs.open_input_file(self.path(rel)) as f:
            return pq.read_table(f, columns=columns)

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File

    def files(self, rel: str, suffix: str = "") -> list[str]:
        """Relative paths of the files under ``rel`` (recursive, sorted); [] when there is no such folder."""
        base = self.path(rel)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except FileNotFoundError:
            return []
        start = len(self.base) + 1
        return sorted(i.path[start:] for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix)
                      and "/." not in i.path[len(base):])

    # -- the check before anything runs ---------------------------------------------------------
    def check_writable(self) -> None:
        """Write, read back and delete a small object; a clear error (credentials, bucket, permissions)
        before any model is loaded."""
        if self.local:  # nothing is created yet: the nearest existing folder must let us write
            folder = Path(self.base)
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent
            if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
                raise PipelineError(f"cannot write to output.dir={self.root}: {folder} is not a folder this user "
                                    "may write to")
            return
        probe = f".write-check-{secrets.token_hex(4)}"
        try:
            self.put(probe, b"ok")
            if self.get(probe) != b"ok":
                raise OSError("the object read back differs from the one written")
            self.delete(probe)
        except PipelineError:
            raise
        except Exception as e:
            hint = ""
            if not self.local:
                hint = (" Check that the bucket exists and that the credentials in the environment "
                        "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL, or your cloud's "
                        "equivalents) may write to it.")
            raise PipelineError(f"cannot write to output.dir={self.root}: {type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else e}.{hint}") from None
