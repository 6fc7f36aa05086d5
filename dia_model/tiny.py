"""Random Dia checkpoints in the published formats, for tests, demos and benchmarks.

``make_tiny_checkpoint(folder)`` writes ``config.json`` + ``model.safetensors`` (and a
tiny random DAC in ``folder/codec``) that ``Dia.from_pretrained(folder)`` loads like
a real checkpoint.  Tensors are generated and written one at a time, so even a
full-size 1.6B checkpoint is written with about one tensor in memory.

Command: ``dia-make-tiny OUT [--shape tiny|100m|1.6b] [--schema 0626|v0.1] [--layout native|hf]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable

import torch

from .nn.checkpoint import ST_DTYPES
from .config import SHAPES, DiaConfig
from .nn.layout import pieces

_ST_NAMES = {dtype: name for name, dtype in ST_DTYPES.items()}


def write_safetensors(path: Path, tensors: Iterable[tuple[str, tuple[int, ...], Callable[[], torch.Tensor]]],
                      dtype: torch.dtype = torch.float32) -> None:
    """Stream tensors into a safetensors file (written whole under a temporary name, then renamed)."""
    entries = list(tensors)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset, itemsize = 0, torch.empty((), dtype=dtype).element_size()
    for name, shape, _ in entries:
        size = itemsize
        for s in shape:
            size *= s
        header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, shape, make in entries:
            t = make().to(dtype).contiguous()
            if tuple(t.shape) != tuple(shape):
                raise AssertionError(f"{name}: produced {tuple(t.shape)}, declared {shape}")
            f.write(memoryview(t.view(-1).view(torch.uint8).numpy()))
    os.replace(tmp, path)


def _seed_for(name: str, seed: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest(), "little") >> 1


def random_native_tensor(cfg: DiaConfig, name: str, shape: tuple[int, ...], seed: int,
                         std: float = 0.02, eos_boost: float = 1.0) -> torch.Tensor:
    """One published tensor (native layout), reproducible from (seed, name)."""
    if name.endswith("norm.weight"):
        return torch.ones(shape)
    g = torch.Generator().manual_seed(_seed_for(name, seed))
    t = torch.randn(shape, generator=g) * std
    if name == "decoder.logits_dense.weight" and eos_boost != 1.0:
        t[:, 0, cfg.eos_token] *= eos_boost  # make channel-0 EOS likelier so random rows end
    return t


def save_random_checkpoint(folder: str | os.PathLike, cfg: DiaConfig, *, seed: int = 0, layout: str = "native",
                           dtype: torch.dtype = torch.float32, eos_boost: float = 1.0) -> Path:
    """Write config.json + model.safetensors for a random model of this shape."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    native = {p.native: p for p in pieces(cfg, "native")}

    def native_tensor(key: str) -> torch.Tensor:
        return random_native_tensor(cfg, key, native[key].native_shape, seed, eos_boost=eos_boost)

    entries = []
    for p in pieces(cfg, layout):
        if layout == "native":
            make = (lambda key=p.native: native_tensor(key))
        elif p.internal == "decoder.embedding.weight":  # HF: the nine native tables stacked
            make = (lambda: torch.cat([native_tensor(f"decoder.embeddings.{c}.weight") for c in range(cfg.channels)]))
        else:
            make = (lambda p=p: p.to_internal(native_tensor(p.native), "native"))
        entries.append((p.key(layout), p.shape(layout), make))
    write_safetensors(folder / "model.safetensors", entries, dtype)
    raw = cfg.to_dict()
    (folder / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True))
    return folder


def make_tiny_checkpoint(folder: str | os.PathLike, *, seed: int = 0, schema: str = "0626", layout: str = "native",
                         with_codec: bool = True, eos_boost: float = 3.0, shape: str = "tiny") -> Path:
    """A small random Dia (and a tiny random DAC in ``folder/codec``) for tests and demos.

    Its audio is noise.  ``eos_boost`` scales channel 0's EOS logit weights so that
    random rows end by EOS after a few dozen frames instead of running to the limit.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {sorted(SHAPES)}")
    cfg = SHAPES[shape].replace(schema=schema)
    out = save_random_checkpoint(folder, cfg, seed=seed, layout=layout, eos_boost=eos_boost)
    if with_codec:
        from .audio.codec import DacCodec

        DacCodec.random(seed=seed).save_pretrained(out / "codec")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--schema", default="0626", choices=["0626", "v0.1"])
    ap.add_argument("--layout", default="native", choices=["native", "hf"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eos-boost", type=float, default=3.0)
    ap.add_argument("--no-codec", action="store_true", help="do not write a tiny random codec into FOLDER/codec")
    args = ap.parse_args(argv)
    out = make_tiny_checkpoint(args.folder, seed=args.seed, schema=args.schema, layout=args.layout,
                               with_codec=not args.no_codec, eos_boost=args.eos_boost, shape=args.shape)
    print(f"wrote a random {args.shape} Dia checkpoint ({args.schema} schema, {args.layout} layout) to {out}")


if __name__ == "__main__":
    main()
