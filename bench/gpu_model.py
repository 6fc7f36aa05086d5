"""A GPU cost model measured on a CPU: bytes moved and kernels launched by one slot-engine decode step.

    python bench/gpu_model.py                          # 1.6B shapes, bf16, 8..256 slots, a table
    python bench/gpu_model.py --slots 128 --length 1024 --ops 15    # one case and its 15 costliest ops

No GPU is needed: the real model and ``SlotState`` are built on the meta device (no memory, no
math), one ``step()`` runs under a ``TorchDispatchMode`` that sees every ATen op the step would
launch, and for each op that is a kernel (not a view) it counts the bytes of its tensor inputs and
outputs. That is a bound a decode step cannot beat on a memory-bound GPU: modeled time is

    bytes / bandwidth + kernels x per-kernel cost

with HBM bandwidth 3.35 TB/s (H100 SXM) and 4.8 TB/s (H200), and a per-kernel cost for what a
kernel spends besides streaming bytes (2 us a kernel replayed in a CUDA graph by default). Real
kernels move somewhat more (cache-line and tile waste) and overlap some; the model is for steering
changes by their effect, and a lent GPU's measurement (bench/gpu_check.sh) is what counts.
x real time = slots x (512 / 44,100 s of audio per step) / modeled step time, every slot live.

The attention length is the cache positions the step reads (``SlotTable.attention_length``, the
longest live slot rounded to its bucket): in a full stream of 5-20 s rows it stays near the longest
row, so the default 1,024 (~12 s) is a middle case; ``--length`` changes it.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}
SECONDS_PER_FRAME = 512 / 44100
# ATen ops that only make a view or read metadata: no kernel, no bytes
VIEW_OPS = {"view", "_unsafe_view", "expand", "as_strided", "t", "transpose", "permute", "unsqueeze", "squeeze",
            "select", "slice", "detach", "alias", "reshape", "split", "split_with_sizes", "unbind", "chunk",
            "narrow", "diagonal", "view_as", "expand_as", "lift_fresh", "_reshape_alias", "unflatten", "flatten",
            "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "dim", "size", "stride", "is_same_size",
            "_to_copy_noop", "empty_like_view", "movedim", "split_copy_view"}
ALLOC_OPS = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "scalar_tensor"}


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for item in x:
            yield from _tensors(item)
    elif isinstance(x, dict):
        for item in x.values():
            yield from _tensors(item)


def _bytes(t: torch.Tensor) -> int:
    """Bytes of the memory a tensor argument spans (a view reads only its elements)."""
    return t.numel() * t.element_size()


@dataclass
class OpCost:
    kernels: int = 0
    bytes: int = 0


# ops that read only the elements they gather, not the whole table they index into
GATHER_OPS = {"index", "embedding", "gather", "index_select", "take"}
# in-place scatters that write only their values into a (large) destination
SCATTER_OPS = {"index_put_", "index_put", "index_copy_", "scatter_", "index_fill_", "masked_scatter_"}


def sdpa_cost(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, enable_gqa: bool) -> tuple[int, int]:
    """(kernels, bytes) of one scaled_dot_product_attention call on a CUDA GPU, by the backend it gets.

    Flash takes no mask; the memory-efficient kernel takes a mask but (PyTorch 2.5-2.13) not
    ``enable_gqa``; so a masked call with fewer K/V heads than query heads runs the math path: K and V
    repeated to every query head, the scores written and read back around the softmax. A fused call
    reads Q, K, V and the mask once and writes the output."""
    fused = q.shape[1] == k.shape[1] or not enable_gqa and mask is None
    qkvo = 2 * _bytes(q) + _bytes(k) + _bytes(v) + (_bytes(mask) if mask is not None else 0)
    if fused:
        return 1, qkvo
    b, hq, t, _ = q.shape
    s = k.shape[2]
    group = hq // k.shape[1]
    repeated = (_bytes(k) + _bytes(v)) * group
    scores = b * hq * t * s * q.element_size()
    # repeat K, repeat V, QK^T, masked fill, softmax, PV
    return 6, qkvo + 2 * repeated + 4 * scores + (b * hq * t * s if mask is not None else 0)


class CostMode(TorchDispatchMode):
    """Counts kernels and bytes (inputs read + outputs written) per ATen op."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[str, OpCost] = defaultdict(OpCost)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in VIEW_OPS or name in ALLOC_OPS:
            return out
        if args and out is args[0] and not name.endswith("_"):  # e.g. .to() of the dtype it has: no kernel
            return out
        if name in ("scaled_dot_product_attention", "_scaled_dot_product_attention_math"):
            q, k, v = args[:3]
            mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
            kernels, moved = sdpa_cost(q, k, v, mask, bool(kwargs.get("enable_gqa", False)))
        elif name in GATHER_OPS:
            index_bytes = sum(_bytes(t) for t in _tensors(args[1:]) if not t.is_floating_point())
            kernels, moved = 1, 2 * sum(_bytes(t) for t in _tensors(out)) + index_bytes
        elif name in SCATTER_OPS:
            kernels, moved = 1, 2 * sum(_bytes(t) for t in _tensors(args[1:]))
        else:
            kernels = 1
            moved = sum(_bytes(t) for t in _tensors(args)) + sum(_bytes(t) for t in _tensors(kwargs))
            if not name.endswith("_"):  # an in-place op's output is its input, already counted
                moved += sum(_bytes(t) for t in _tensors(out))
        cost = self.ops[name]
        cost.kernels += kernels
        cost.bytes += moved
        return out

    @property
    def kernels(self) -> int:
        return sum(c.kernels for c in self.ops.values())

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.ops.values())


def build(slots: int, shape: str, dtype: torch.dtype):
    from dia_model.config import SHAPES
    from dia_model.engine.slot_state import SlotState
    from dia_model.nn.model import DiaModel

    from dia_model.nn.model import RMSNorm

    cfg = SHAPES[shape]
    with torch.device("meta"):
        model = DiaModel(cfg).to(dtype)
        for module in model.modules():  # as the checkpoint loader keeps them: norm weights in fp32
            if isinstance(module, RMSNorm):
                module.weight.data = module.weight.data.float()
    return cfg, SlotState(model, slots, torch.device("meta"))


def measure(slots: int, length: int, shape: str = "1.6b", dtype: torch.dtype = torch.bfloat16,
            top_k: int = 64, text: int = 0) -> CostMode:
    """One step's costs, every slot live; ``text``: the script bytes the slots hold (cross-attention
    reads that width; 0: the engine's smallest bucket)."""
    cfg, state = build(slots, shape, dtype)
    if text:
        state._grow_text(text)
    state.live.fill_(True)
    mode = CostMode()
    with mode:
        state.step(min(length, state.capacity), top_k)
    return mode


def modeled(mode: CostMode, slots: int, gpu: str, kernel_us: float) -> tuple[float, float]:
    """(step seconds, x real time)."""
    step = mode.bytes / BANDWIDTH[gpu] + mode.kernels * kernel_us * 1e-6
    return step, slots * SECONDS_PER_FRAME / step


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", default="8,16,32,64,128,256", help="comma-separated slot counts")
    ap.add_argument("--length", type=int, default=1024, help="attention length (cache positions read)")
    ap.add_argument("--text", type=int, default=320, help="script bytes held (cross-attention width); "
                    "320 B is ~20 s of dialogue")
    ap.add_argument("--shape", default="1.6b", choices=["tiny", "100m", "1.6b"])
    ap.add_argument("--kernel-us", type=float, default=2.0, help="cost of one kernel besides its bytes")
    ap.add_argument("--ops", type=int, default=0, help="also list the N ops that move the most bytes")
    args = ap.parse_args(argv)
    print(f"decode step, {args.shape} shapes, bf16, attention length {args.length}, scripts of {args.text} B, "
          f"{args.kernel_us:g} us per kernel")
    print(f"{'slots':>5} {'kernels':>8} {'GB/step':>8} {'H100 ms':>8} {'H100 xRT':>9} {'H200 ms':>8} {'H200 xRT':>9}")
    last = None
    for n in [int(s) for s in args.slots.split(",")]:
        mode = measure(n, args.length, args.shape, text=args.text)
        h100, x100 = modeled(mode, n, "H100", args.kernel_us)
        h200, x200 = modeled(mode, n, "H200", args.kernel_us)
        print(f"{n:>5} {mode.kernels:>8} {mode.bytes / 1e9:>8.2f} {h100 * 1e3:>8.2f} {x100:>9.0f} {h200 * 1e3:>8.2f} "
              f"{x200:>9.0f}")
        last = mode
    if args.ops and last is not None:
        print(f"\nthe {args.ops} ops moving the most bytes (last case):")
        top = sorted(last.ops.items(), key=lambda kv: -kv[1].bytes)[: args.ops]
        for name, cost in top:
            print(f"  {name:<40} {cost.kernels:>6} kernels {cost.bytes / 1e9:>8.2f} GB")
        counts = Counter({name: c.kernels for name, c in last.ops.items()})
        print("  most frequent:", ", ".join(f"{k} x{v}" for k, v in counts.most_common(8)))


if __name__ == "__main__":
    main()


class MemoryMode(TorchDispatchMode):
    """Device memory as the caching allocator would hold it, counted on the meta device: every storage
    made under the mode is live while a tensor on it lives; ``peak`` is the most held at once.

    ``track(tensors)`` registers storages made before the mode (weights, a SlotState's caches), so
    that dropping them (a cache replaced by a larger one) frees them too. Slices and views share
    their storage and are not counted twice."""

    def __init__(self) -> None:
        super().__init__()
        self._refs: dict[int, int] = {}
        self._bytes: dict[int, int] = {}
        self._seen: set[int] = set()
        self.now = 0
        self.peak = 0

    def track(self, tensors) -> "MemoryMode":
        for t in _tensors(list(tensors)):
            self._add(t)
        return self

    def _add(self, t: torch.Tensor) -> None:
        import weakref

        if id(t) in self._seen:
            return
        storage = t.untyped_storage()
        key = storage.data_ptr() if t.device.type != "meta" else storage._cdata
        self._seen.add(id(t))
        if key not in self._refs:
            self._refs[key], self._bytes[key] = 0, storage.nbytes()
            self.now += self._bytes[key]
            self.peak = max(self.peak, self.now)
        self._refs[key] += 1
        weakref.finalize(t, self._drop, key, id(t))

    def _drop(self, key: int, ident: int) -> None:
        self._seen.discard(ident)
        self._refs[key] -= 1
        if not self._refs[key]:
            self.now -= self._bytes.pop(key)
            del self._refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in _tensors(out):
            self._add(t)
        return out


def state_tensors(state) -> list:
    """Every tensor a SlotState holds (and its model's weights)."""
    out = [p for p in state.model.parameters()] + [b for b in state.model.buffers()]
    for value in vars(state).values():
        if isinstance(value, torch.Tensor):
            out.append(value)
        elif isinstance(value, (list, tuple)):
            out.extend(_tensors(value))
        elif hasattr(value, "__dict__"):
            out.extend(v for v in vars(value).values() if isinstance(v, torch.Tensor))
    return out
