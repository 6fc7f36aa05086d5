"""Choosing the next frame's codes: CFG, channel masks, EOS rule, top-k, top-p, noise.

Every setting is a per-row tensor, so rows with different CFG scales and sampling
settings share one step.  Random numbers come from a counter-based hash of
(seed, timeline position, channel, token) turned into Gumbel noise, so a row's draw
depends only on its own seed and position: the same request gives the same codes
alone or anywhere in any batch, without per-row generator objects or host syncs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch
from torch import Tensor

from ..config import DiaConfig

_MASK32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2**32 for uint32 values held in int64, without signed overflow."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


def mix32(x: Tensor) -> Tensor:
    """A 32-bit integer finaliser (xorshift-multiply); full avalanche on its input."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def row_keys(seeds: Tensor) -> Tensor:
    """A 32-bit key per row from a 63-bit seed."""
    return mix32(mix32(seeds & _MASK32) ^ ((seeds >> 32) & _MASK32))


def gumbel_noise(keys: Tensor, position: int | Tensor, cell_hash: Tensor) -> Tensor:
    """Gumbel(0, 1) noise [rows, channels, vocab] for one timeline position."""
    step_key = mix32(keys ^ mix32(torch.as_tensor(position, dtype=torch.long, device=keys.device) & _MASK32))
    h = mix32(cell_hash[None] ^ step_key[:, None, None])
    u = ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # in (0, 1)
    return -torch.log(-torch.log(u))


@dataclass
class RowSampling:
    """Per-row settings as device tensors (one entry per active row)."""

    cfg_scale: Tensor  # float32
    temperature: Tensor  # float32; 0 = greedy
    top_p: Tensor  # float32
    top_k: Tensor  # int64
    keys: Tensor  # int64 row keys from the seeds

    @classmethod
    def of(cls, rows: Sequence[Any], device: torch.device) -> "RowSampling":
        """The settings of ``rows`` (anything with cfg_scale, temperature, top_p, top_k and seed)."""
        floats = lambda name: torch.tensor([getattr(r, name) for r in rows], dtype=torch.float32, device=device)  # noqa: E731
        return cls(cfg_scale=floats("cfg_scale"), temperature=floats("temperature"), top_p=floats("top_p"),
                   top_k=torch.tensor([r.top_k for r in rows], dtype=torch.long, device=device),
                   keys=row_keys(torch.tensor([r.seed for r in rows], dtype=torch.long, device=device)))

    def select(self, index: Tensor) -> "RowSampling":
        return RowSampling(*(getattr(self, f.name)[index] for f in fields(self)))

    def assign(self, index: Tensor, other: "RowSampling") -> None:
        """Write ``other``'s rows into rows ``index`` of these tensors (in place)."""
        for f in fields(self):
            getattr(self, f.name)[index] = getattr(other, f.name)


def _top_k_mask(x: Tensor, k: Tensor, k_max: int) -> Tensor:
    """True for each row's k largest entries (k per row, at most k_max)."""
    k_max = min(k_max, x.shape[-1])
    idx = x.topk(k_max, dim=-1).indices
    keep_rank = torch.arange(k_max, device=x.device) < k[:, None, None]
    return torch.zeros_like(x, dtype=torch.bool).scatter(-1, idx, keep_rank.expand_as(idx))


def _top_p_filter(x: Tensor, top_p: Tensor) -> Tensor:
    """Drop tokens outside the smallest set whose mass exceeds top_p (the top token always stays)."""
    probs = torch.softmax(x, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    over = sorted_p.cumsum(dim=-1) > top_p[:, None, None]
    over = torch.cat((torch.zeros_like(over[..., :1]), over[..., :-1]), dim=-1)
    remove = torch.zeros_like(over).scatter(-1, order, over)
    return x.masked_fill(remove, float("-inf"))


class Sampler:
    """The reference's per-step recipe, for either checkpoint generation (spec §7.3, §7.9)."""

    def __init__(self, cfg: DiaConfig, device: torch.device):
        self.cfg = cfg
        v = cfg.audio_vocab
        cells = torch.arange(cfg.channels * v, device=device, dtype=torch.long).view(cfg.channels, v)
        self.cell_hash = mix32(cells ^ 0x5BD1E995)
        # Channel 0 may end (EOS) but never emit PAD/BOS; the other channels emit codes only.
        allowed = torch.zeros(cfg.channels, v, dtype=torch.bool, device=device)
        allowed[0, : cfg.eos_token + 1] = True
        allowed[1:, : cfg.eos_token] = True
        self.blocked = ~allowed

    def __call__(self, logits: Tensor, s: RowSampling, k_max: int, position: int | Tensor) -> Tensor:
        """logits [rows, 2 (uncond, cond), channels, vocab] fp32 -> codes [rows, channels]."""
        cfg, eos, neg_inf = self.cfg, self.cfg.eos_token, float("-inf")
        uncond, cond = logits[:, 0], logits[:, 1]
        guided = cond + s.cfg_scale[:, None, None] * (cond - uncond)
        if cfg.schema == "0626":
            # CFG only chooses the candidates; the conditional logits are sampled.
            work = cond.masked_fill(~_top_k_mask(guided, s.top_k, k_max), neg_inf)
        else:
            work = guided
        work = work.masked_fill(self.blocked, neg_inf)
        if cfg.schema == "v0.1":
            work[:, 0, eos] = work[:, 0, eos] * 0.8
        greedy = work.argmax(dim=-1)

        x = work / s.temperature.clamp_min(1e-6)[:, None, None]
        eos_on_top = x[:, 0].argmax(dim=-1) == eos
        ch0 = x[:, 0]
        if cfg.schema == "0626":  # EOS on top: nothing else survives
            ch0 = ch0.masked_fill(eos_on_top[:, None] & (torch.arange(ch0.shape[-1], device=x.device) != eos), neg_inf)
        ch0[:, eos] = torch.where(eos_on_top, ch0[:, eos], torch.full_like(ch0[:, eos], neg_inf))
        x = torch.cat((ch0[:, None], x[:, 1:]), dim=1)
        x = x.masked_fill(~_top_k_mask(x, s.top_k, k_max), neg_inf)
        x = _top_p_filter(x, s.top_p)
        sampled = (x + gumbel_noise(s.keys, position, self.cell_hash)).argmax(dim=-1)
        return torch.where(s.temperature[:, None] > 0, sampled, greedy)
