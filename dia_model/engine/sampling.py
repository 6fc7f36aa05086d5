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
    """Gumbel(0, 1) noise [rows, channels, vocab] for one timeline position (``cell_hash`` [channels,
    vocab]), or [rows, channels, n] at n chosen cells per row and channel (``cell_hash`` [rows, channels, n]).

    A cell's noise depends on its row's key, the position and the cell only; computing it at a few
    cells gives exactly the values the whole table holds there.
    """
    step_key = mix32(keys ^ mix32(torch.as_tensor(position, dtype=torch.long, device=keys.device) & _MASK32))
    h = mix32((cell_hash[None] if cell_hash.dim() == 2 else cell_hash) ^ step_key[:, None, None])
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


NOISE_WIDTH = 64  # candidates per row and channel are computed in blocks of this many (see Sampler)


def _top_k(x: Tensor, k: Tensor, k_max: int) -> tuple[Tensor, Tensor]:
    """Each row's k largest entries (k per row, at most k_max) as candidates: (token ids [..., k_max]
    in descending order of x, and whether each is within its row's k)."""
    k_max = min(k_max, x.shape[-1])
    ids = x.topk(k_max, dim=-1).indices
    return ids, torch.arange(k_max, device=x.device) < k[:, None, None]


def _pick(values: Tensor, ids: Tensor) -> Tensor:
    """The token of the largest value per row and channel, as ``argmax`` over the whole vocabulary
    (where every non-candidate is -inf) picks it: the smallest token id among equal maxima, and token
    0 when every candidate is -inf."""
    best = values.max(dim=-1, keepdim=True).values
    token = torch.where(values == best, ids, torch.iinfo(ids.dtype).max).min(dim=-1).values
    return torch.where(best[..., 0] == float("-inf"), 0, token)


def _top_p_filter(x: Tensor, top_p: Tensor) -> Tensor:
    """Drop candidates outside the smallest set whose mass exceeds top_p (the top one always stays);
    ``x`` holds every token that is not -inf (the rest of the vocabulary has no mass)."""
    probs = torch.softmax(x, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    over = sorted_p.cumsum(dim=-1) > top_p[:, None, None]
    over = torch.cat((torch.zeros_like(over[..., :1]), over[..., :-1]), dim=-1)
    remove = torch.zeros_like(over).scatter(-1, order, over)
    return x.masked_fill(remove, float("-inf"))


class Sampler:
    """The reference's per-step recipe, for either checkpoint generation (spec §7.3, §7.9).

    Past the first top-k (0626: of the guided logits; v0.1: of the tempered ones) only the k
    candidates of each row and channel can be drawn, so everything after it (greedy pick, EOS rule,
    top-p, noise, the draw) runs on those k_max candidates instead of the whole vocabulary of 1,028:
    the same picks (``_pick`` breaks ties as ``argmax`` does) at a fraction of the work.
    """

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
        self.vocab_ids = torch.arange(v, device=device).expand(cfg.channels, v)

    def _at(self, table: Tensor, ids: Tensor) -> Tensor:
        """``table`` [channels, vocab] at each row's candidate ids [rows, channels, n]."""
        return table[None].expand(ids.shape[0], *table.shape).gather(-1, ids)

    def __call__(self, logits: Tensor, s: RowSampling, k_max: int, position: int | Tensor) -> Tensor:
        """logits [rows, 2 (uncond, cond), channels, vocab] fp32 -> codes [rows, channels]."""
        cfg, eos, neg_inf = self.cfg, self.cfg.eos_token, float("-inf")
        uncond, cond = logits[:, 0], logits[:, 1]
        guided = cond + s.cfg_scale[:, None, None] * (cond - uncond)
        if cfg.schema == "0626":
            # CFG only chooses the candidates; the conditional logits are sampled.
            ids, in_k = _top_k(guided, s.top_k, k_max)
            work = cond.gather(-1, ids).masked_fill(~in_k, neg_inf)
        else:
            ids, work = self.vocab_ids.expand(guided.shape[0], *self.vocab_ids.shape), guided
        work = work.masked_fill(self._at(self.blocked, ids), neg_inf)
        is_eos = ids == eos
        is_eos[:, 1:] = False  # EOS is channel 0's alone
        if cfg.schema == "v0.1":
            work = torch.where(is_eos, work * 0.8, work)
        greedy = _pick(work, ids)

        x = work / s.temperature.clamp_min(1e-6)[:, None, None]
        eos_on_top = (_pick(x[:, :1], ids[:, :1]) == eos)[:, 0]
        if cfg.schema == "0626":  # EOS on top: nothing else survives in channel 0
            x = x.masked_fill(eos_on_top[:, None, None] & ~is_eos & (torch.arange(cfg.channels, device=x.device) == 0)[:, None],
                              neg_inf)
        x = x.masked_fill(is_eos & ~eos_on_top[:, None, None], neg_inf)  # and EOS only when on top
        if cfg.schema == "v0.1":  # the top-k of the tempered logits: candidates from here on
            top, in_k = _top_k(x, s.top_k, k_max)
            ids, x = ids.gather(-1, top), x.gather(-1, top).masked_fill(~in_k, neg_inf)
        # (0626: the candidates are at most k finite values, all inside the top k of x already)
        x = _top_p_filter(x, s.top_p)
        # noise in blocks of NOISE_WIDTH candidates, so every row's values come from the same code path
        width = x.shape[-1]
        padded = -(-width // NOISE_WIDTH) * NOISE_WIDTH
        cells = self._at(self.cell_hash, ids)
        if padded != width:
            cells = torch.cat((cells, cells[..., :1].expand(*cells.shape[:-1], padded - width)), dim=-1)
        noise = gumbel_noise(s.keys, position, cells)[..., :width]
        # A draw of u = 1 (one cell in 2**24) is +inf noise: it wins at a candidate, and must not turn an
        # excluded one (-inf) into NaN, which argmax would take.
        sampled = _pick(torch.where(x == neg_inf, neg_inf, x + noise), ids)
        return torch.where(s.temperature[:, None] > 0, sampled, greedy)
