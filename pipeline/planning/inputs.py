"""Finding input shards (file, folder, glob or URI) and checking their schema before anything runs."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import InputError
from .ids import StemAllocator
from ..storage import filesystem_for as storage_filesystem
from ..storage import is_uri  # noqa: F401  (re-exported: callers ask inputs whether a spec is a URI)

_GLOB_CHARS = "*?["
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


@dataclass(eq=False)
class Shard:
    """One input Parquet file."""

    name: str  # safe and unique: names audio/<name>/ and metadata/<name>.parquet
    uri: str  # where it was found, for messages and the metadata
    path: str  # path inside ``filesystem``
    filesystem: pafs.FileSystem

    @property
    def folder_uri(self) -> str:
        """The URI of the folder holding this shard (relative audio_prompt paths start there)."""
        return self.uri.rsplit("/", 1)[0] if "/" in self.uri else "."

    def read(self) -> pa.Table:
        """The whole shard as a table."""
        with self.filesystem.open_input_file(self.path) as f:
            return pq.read_table(f)


def filesystem_for(spec: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and in-filesystem path for a local path or URI."""
    try:
        return storage_filesystem(spec)
    except Exception as e:  # unknown scheme, missing credentials helper, ...
        raise InputError(f"cannot open {spec!r}: {e}") from e


def _join(base_uri: str, rel: str) -> str:
    return f"{base_uri.rstrip('/')}/{rel}" if rel else base_uri


def _expand_one(spec: str) -> list[tuple[str, str, pafs.FileSystem]]:
    """(uri, path, filesystem) of each Parquet file that ``spec`` names, sorted."""
    first_glob = min((spec.find(c) for c in _GLOB_CHARS if c in spec), default=-1)
    if first_glob >= 0:
        cut = spec.rfind("/", 0, first_glob)
        base_uri, pattern = (spec[:cut], spec[cut + 1:]) if cut >= 0 else (".", spec)
        if base_uri.endswith(":/"):  # e.g. "s3://*" is not useful; keep the scheme intact
            raise InputError(f"glob {spec!r} needs a bucket or folder before the pattern")
    else:
        base_uri, pattern = spec, ""
    fs, base = filesystem_for(base_uri)
    try:
        info = fs.get_file_info(base)
    except Exception as e:
        raise InputError(f"cannot read input {spec!r}: {e}") from e
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input not found: {spec!r}")
    if info.type == pafs.FileType.File:
        if pattern:
            raise InputError(f"input {spec!r}: {base_uri!r} is a file, not a folder")
        return [(spec, base, fs)]
    recursive = not pattern or "/" in pattern or "**" in pattern
    found = []
    for entry in fs.get_file_info(pafs.FileSelector(base, recursive=recursive)):
        if entry.type != pafs.FileType.File:
            continue
        rel = entry.path[len(base):].lstrip("/")
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue  # hidden files and _parts/ folders, like pyarrow's dataset discovery
        if pattern:
            ok = fnmatch.fnmatchcase(rel, pattern.replace("**/", "*"))
        else:
            ok = rel.lower().endswith(PARQUET_SUFFIXES)
        if ok:
            found.append((_join(base_uri, rel), entry.path, fs))
    if not found:
        raise InputError(f"no Parquet files match input {spec!r}")
    return sorted(found, key=lambda t: t[0])


def _shard_label(uri: str) -> str:
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    for suffix in PARQUET_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def resolve_inputs(spec: Any) -> list[Shard]:
    """Every shard named by ``spec`` (one location or a list), in a stable order, with unique names."""
    specs: Sequence[str] = [spec] if isinstance(spec, str) else [str(s) for s in (spec or [])]
    if not specs:
        raise InputError("no input given: set data.input to a Parquet file, folder, glob or URI")
    seen: set[str] = set()
    shards: list[Shard] = []
    names = StemAllocator()
    for s in specs:
        for uri, path, fs in _expand_one(str(s)):
            if uri in seen:
                continue
            seen.add(uri)
            shards.append(Shard(names.allocate(_shard_label(uri), uri), uri, path, fs))
    return shards


def read_schema(shard: Shard) -> pa.Schema:
    """The Arrow schema of a shard, or an InputError that names the file."""
    try:
        with shard.filesystem.open_input_file(shard.path) as f:
            return pq.ParquetFile(f).schema_arrow
    except Exception as e:
        raise InputError(f"cannot read the Parquet schema of {shard.uri}: {e}") from e


def check_schemas(shards: Iterable[Shard], text_column: str) -> dict[str, pa.Schema]:
    """Fail, naming the column and file, unless every shard has a string text column."""
    schemas = {}
    for shard in shards:
        schema = read_schema(shard)
        if text_column not in schema.names:
            raise InputError(
                f"input {shard.uri} has no text column {text_column!r} (set data.text_column); "
                f"its columns are: {', '.join(schema.names) or '(none)'}"
            )
        kind = schema.field(text_column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise InputError(f"text column {text_column!r} of {shard.uri} holds {kind}, not strings")
        schemas[shard.name] = schema
    return schemas
