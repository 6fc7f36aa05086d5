"""Finding, reading and strictly checking published Dia checkpoints.

Peak host memory while loading is about one copy of the weights in the compute
dtype: safetensors files are read tensor by tensor with plain ``readinto`` (no
mmap whose touched pages would count as a second copy), each tensor is cast and
re-laid-out straight into its preallocated destination, then dropped.  Pickle
formats (``pytorch_model.bin``, ``dia-v0_1.pth``) are only read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import DiaConfig
from ..errors import CheckpointError, HubUnavailableError
from ..hub import CHECKPOINT_CONFIG_FILE, CHECKPOINT_WEIGHT_FILES, default_local_dir, download_command, looks_like_repo_id
from .layout import LAYOUTS, Piece, detect_layout, expected_keys, pieces

CONFIG_FILE = CHECKPOINT_CONFIG_FILE
WEIGHT_FILES = CHECKPOINT_WEIGHT_FILES  # in order of preference

ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class ResolvedCheckpoint:
    config_path: Path
    weight_files: tuple[Path, ...]
    source: str  # what the caller asked for: a folder or a repo id
    revision: str | None
    folder: Path


# --------------------------------------------------------------------------- sources
def resolve(source: str | os.PathLike, revision: str | None = None) -> ResolvedCheckpoint:
    """A local folder / weight file, or a Hub repo id downloaded (only the files we need)."""
    path = Path(source).expanduser()
    if path.exists():
        return _resolve_local(path, str(source), revision)
    text = str(source)
    if looks_like_repo_id(text):
        return _resolve_hub(text, revision)
    raise CheckpointError(f"checkpoint {text!r} is neither an existing folder/file nor a Hub repo id (org/name)")


def _resolve_local(path: Path, source: str, revision: str | None) -> ResolvedCheckpoint:
    folder = path if path.is_dir() else path.parent
    config = folder / CONFIG_FILE
    if not config.is_file():
        raise CheckpointError(f"no {CONFIG_FILE} in {folder}; a Dia checkpoint folder needs one beside the weights")
    if path.is_file():
        weights: list[Path] = [path]
    else:
        found = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
        if found is None:
            raise CheckpointError(f"no weights in {folder}: expected one of {', '.join(WEIGHT_FILES)}")
        weights = [found]
    if weights[0].name.endswith(".index.json"):
        weights = [folder / name for name in _shard_names(weights[0])]
        missing = [str(w) for w in weights if not w.is_file()]
        if missing:
            raise CheckpointError(f"shards listed in the index are missing: {', '.join(missing)}")
    return ResolvedCheckpoint(config, tuple(weights), source, revision, folder)


def _shard_names(index_path: Path) -> list[str]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot read shard index {index_path}: {e}") from e
    return sorted(set(weight_map.values()))


def _hub_advice(repo: str, revision: str | None, why: str) -> str:
    folder = default_local_dir(repo)
    return (
        f"cannot download {repo!r} from the Hugging Face Hub ({why}). On a machine with Hub access run "
        f"`{download_command(repo, revision, local_dir=folder)}`, copy that folder here, and pass "
        f"its path instead of the repo id, e.g. Dia.from_pretrained('{folder}')."
    )


def _resolve_hub(repo: str, revision: str | None) -> ResolvedCheckpoint:
    import huggingface_hub as hub
    from huggingface_hub import errors as hub_errors

    def fetch(name: str, offline: bool) -> Path:
        return Path(hub.hf_hub_download(repo, name, revision=revision, local_files_only=offline))

    try:
        listing = set(hub.HfApi().list_repo_files(repo, revision=revision))
    except (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError) as e:
        raise CheckpointError(f"{repo!r} (revision {revision or 'main'}) does not exist on the Hub: {e}") from e
    except Exception as e:  # offline mode, DNS, proxy, timeouts: fall back to the local cache
        listing = None
        offline_reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"

    offline = listing is None
    candidates = [n for n in WEIGHT_FILES if listing is None or n in listing]
    try:
        config = fetch(CONFIG_FILE, offline)
        for name in candidates:
            try:
                first = fetch(name, offline)
            except (hub_errors.EntryNotFoundError, hub_errors.LocalEntryNotFoundError):
                continue
            files = [first]
            if name.endswith(".index.json"):
                files = [fetch(shard, offline) for shard in _shard_names(first)]
            return ResolvedCheckpoint(config, tuple(files), repo, revision, config.parent)
    except hub_errors.LocalEntryNotFoundError as e:
        raise HubUnavailableError(_hub_advice(repo, revision, offline_reason if offline else str(e))) from e
    except (hub_errors.HfHubHTTPError, OSError) as e:
        raise HubUnavailableError(_hub_advice(repo, revision, f"{type(e).__name__}: {e}")) from e
    if offline:
        raise HubUnavailableError(_hub_advice(repo, revision, offline_reason + "; no weights in the local cache"))
    raise CheckpointError(f"{repo!r} has none of the weight files {', '.join(WEIGHT_FILES)}")


# --------------------------------------------------------------------------- reading
@dataclass
class TensorSource:
    """A tensor in a file, read only when asked (into ``scratch`` bytes when given)."""

    shape: tuple[int, ...]
    nbytes: int
    load: Callable[[torch.Tensor | None], torch.Tensor]


def _safetensors_sources(path: Path) -> dict[str, TensorSource]:
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > 100_000_000:
                raise ValueError("implausible header size")
            header = json.loads(f.read(header_len))
    except (OSError, ValueError, struct.error) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    base = 8 + header_len
    out: dict[str, TensorSource] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = ST_DTYPES.get(meta["dtype"])
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {meta['dtype']}")
        shape = tuple(int(s) for s in meta["shape"])
        begin, end = meta["data_offsets"]
        expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if end - begin != expected:
            raise CheckpointError(f"{path}: tensor {name} holds {end - begin} bytes, its shape needs {expected}")

        def load(scratch: torch.Tensor | None, begin: int = base + begin, nbytes: int = expected, shape=shape,
                 dtype=dtype, name=name) -> torch.Tensor:
            raw = torch.empty(nbytes, dtype=torch.uint8) if scratch is None else scratch[:nbytes]
            if nbytes:
                with open(path, "rb") as f:
                    f.seek(begin)
                    if f.readinto(memoryview(raw.numpy())) != nbytes:
                        raise CheckpointError(f"{path}: file ends before tensor {name} does (truncated download?)")
            return raw.view(dtype).view(shape)

        out[name] = TensorSource(shape, expected, load)
    return out


def _pickle_sources(path: Path) -> dict[str, TensorSource]:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {path} as a weights-only torch file: {e}") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict) and len(obj) <= 3:
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a plain state dict of tensors")
    return {k: TensorSource(tuple(v.shape), 0, (lambda scratch, v=v: v)) for k, v in obj.items()}


def tensor_sources(files: tuple[Path, ...]) -> dict[str, TensorSource]:
    out: dict[str, TensorSource] = {}
    for path in files:
        srcs = _safetensors_sources(path) if path.suffix == ".safetensors" else _pickle_sources(path)
        dup = out.keys() & srcs.keys()
        if dup:
            raise CheckpointError(f"{path} repeats tensors found in another shard: {sorted(dup)[:5]}")
        out.update(srcs)
    return out


# --------------------------------------------------------------------------- checking
def _list(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def check_keys(cfg: DiaConfig, found: dict[str, tuple[int, ...]], where: str) -> str:
    """Return the layout, or raise naming every missing, unexpected and mis-shaped key."""
    layout = detect_layout(set(found))
    if layout is None:
        raise CheckpointError(f"{where}: not a Dia state dict (first keys: {_list(sorted(found), 5)})")
    expected = expected_keys(cfg, layout)
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    misshaped = sorted(
        f"{k} {list(found[k])} (expected {list(expected[k])})"
        for k in expected.keys() & found.keys()
        if tuple(found[k]) != tuple(expected[k])
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_list(unexpected)}")
    if misshaped:
        problems.append(f"wrong shapes: {_list(misshaped)}")
    if problems:
        raise CheckpointError(
            f"{where} does not match its config ({layout} layout, schema {cfg.schema}): " + "; ".join(problems)
        )
    return layout


# --------------------------------------------------------------------------- loading
def load_parameters(
    cfg: DiaConfig,
    files: tuple[Path, ...],
    dtype: torch.dtype,
    device: torch.device,
    shapes: dict[str, tuple[int, ...]],
) -> tuple[dict[str, torch.Tensor], str]:
    """Read every tensor into freshly allocated parameters of our layout.

    ``shapes`` maps our parameter names to their shapes.  Norm weights stay fp32
    (as in the reference); everything else is cast to ``dtype``.
    """
    sources = tensor_sources(files)
    where = ", ".join(str(f) for f in files[:2]) + (" ..." if len(files) > 2 else "")
    layout = check_keys(cfg, {k: s.shape for k, s in sources.items()}, where)
    # One reusable read buffer: per-tensor temporaries would leave the allocator holding
    # freed memory and push peak RSS well past one copy of the weights.
    scratch = torch.empty(max((s.nbytes for s in sources.values()), default=0), dtype=torch.uint8)
    params: dict[str, torch.Tensor] = {}
    for piece in pieces(cfg, layout):
        dest = params.get(piece.internal)
        if dest is None:
            keep_fp32 = piece.internal.endswith("norm.weight")
            dest = torch.empty(shapes[piece.internal], dtype=torch.float32 if keep_fp32 else dtype, device=device)
            params[piece.internal] = dest
        _copy_piece(piece, sources[piece.key(layout)].load(scratch), layout, dest)
    missing = shapes.keys() - params.keys()
    if missing:  # would mean the layout table and the model disagree: a bug, not bad input
        raise AssertionError(f"layout table leaves parameters unset: {sorted(missing)}")
    return params, layout


def _copy_piece(piece: Piece, tensor: torch.Tensor, layout: str, dest: torch.Tensor) -> None:
    if not tensor.is_floating_point():
        raise CheckpointError(f"{piece.key(layout)} has dtype {tensor.dtype}; expected floating point weights")
    view = piece.to_internal(tensor, layout)
    target = dest if piece.rows is None else dest[piece.rows[0]: piece.rows[1]]
    target.copy_(view)  # casts and re-lays-out in one pass; the source tensor is dropped after


__all__ = [
    "LAYOUTS", "ResolvedCheckpoint", "resolve", "tensor_sources", "check_keys", "load_parameters",
    "WEIGHT_FILES", "CONFIG_FILE",
]
