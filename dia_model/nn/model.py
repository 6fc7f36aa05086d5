"""The Dia network: a byte-level text encoder and a 9-channel audio-code decoder.

Faithful to the reference numerics (spec §5): attention with scale 1 (the 1/sqrt(d)
is folded into the trained weights), rotate-half RoPE computed in fp32, RMSNorm with
fp32 weights, gated-SiLU MLPs, channel embeddings summed, fp32 logits.  Weights use
``nn.Linear``'s [out, in] layout with Q/K/V, cross K/V and gate/up fused.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..config import DiaConfig


_EAGER_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), self.weight.shape, self.weight, self.eps).to(x.dtype)


class Rope(nn.Module):
    """Rotate-half rotary embedding with the reference's fp32 timescales.

    The tables are kept whole-width, ``cos|cos`` and ``-sin|sin``, so a rotation is
    ``x * cos + swap_halves(x) * sin``: 2 multiplies, an add and a concat instead of 4 multiplies,
    a subtract, an add and a concat, bit for bit the same values (``a*c - b*s == a*c + b*(-s)`` in
    IEEE arithmetic); a decode step launches ~6 kernels fewer per layer on a GPU."""

    def __init__(self, head_dim: int, theta: float, max_positions: int):
        super().__init__()
        self.head_dim, self.theta, self.max_positions = head_dim, theta, max_positions
        self.register_buffer("cos", torch.empty(max_positions, head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(max_positions, head_dim), persistent=False)
        self.reset(self.cos.device)

    def reset(self, device: torch.device) -> None:
        """(Re)compute the tables, e.g. after the model was built on the meta device."""
        if torch.device(device).type == "meta":
            return
        fraction = 2.0 * torch.arange(self.head_dim // 2, dtype=torch.float32, device=device) / self.head_dim
        timescale = self.theta**fraction
        angles = torch.arange(self.max_positions, dtype=torch.float32, device=device)[:, None] / timescale[None, :]
        cos, sin = angles.cos(), angles.sin()
        self.cos, self.sin = torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)

    def tables(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """(cos, signed sin) at ``positions`` ([T], or [B, T]), shaped to rotate [B, T, heads, head_dim];
        a step that rotates several tensors at the same positions looks them up once."""
        return self.cos[positions].unsqueeze(-2), self.sin[positions].unsqueeze(-2)

    @staticmethod
    def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        xf = x.float()
        a, b = xf.chunk(2, dim=-1)
        return (xf * cos + torch.cat((b, a), dim=-1) * sin).to(x.dtype)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: [B, T, heads, head_dim]; positions: [T] shared by the rows, or [B, T] per row (int)."""
        return self.rotate(x, *self.tables(positions))


class Linear(nn.Linear):
    """``nn.Linear`` without bias whose matmul can be swapped (see ``DiaModel.use_matmul``)."""

    matmul: Callable[[Tensor, Tensor], Tensor] = staticmethod(F.linear)

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.matmul(x, self.weight)


class GatedMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = Linear(dim, 2 * hidden)
        self.down = Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
    """q: [B, Hq, T, d]; k, v: [B, Hkv, S, d]; unscaled dot products (scale 1).

    Keys/values kept in fp32 for a half-precision model (see ``cache_dtype``) take a
    plain fp32 path: on CPUs, half-precision SDPA is 4-8x slower than this.

    Grouped queries (Hq > Hkv) with a mask the same for every query position (the decode step's:
    [B, 1, 1, S]) are folded: each K/V head's group of query heads becomes query rows of that head,
    [B, Hkv, g*T, d], so SDPA sees equal head counts. With ``enable_gqa`` and a mask, CUDA has no
    fused kernel and runs the math path, which repeats K and V to every query head (about 4x the
    step's memory traffic); folded, the memory-efficient kernel takes the call. On a CPU the
    ``enable_gqa`` call is as fast or faster (measured: tiny shapes 0.13 vs 0.22 ms), so it stays.
    """
    if k.dtype != q.dtype:
        return _attend_fp32(q, k, v, mask, causal)
    hq, hkv = q.shape[1], k.shape[1]
    if hq != hkv and q.device.type != "cpu" and not causal and (mask is None or mask.shape[-2] == 1):
        return attend_folded(q, k, v, mask)
    return _sdpa(q, k, v, mask, causal, hq != hkv)


def attend_in_runs(q: Tensor, k: Tensor, v: Tensor, mask: Tensor,
                   runs: list[tuple[int, int, int]] | None) -> Tensor:
    """``attend`` over runs of rows ``(first_row, end_row, n)`` covering the batch in order, each run
    reading only its first ``n`` keys (the rest masked off for its rows anyway); None: one call."""
    if runs is None:
        return attend(q, k, v, mask)
    parts = [attend(q[a:e], k[a:e, :, :n], v[a:e, :, :n], mask[a:e, ..., :n]) for a, e, n in runs]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def attend_folded(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Grouped-query attention as equal-head attention: q [B, Hq, T, d] -> [B, Hkv, (Hq/Hkv)*T, d] (query
    head n belongs to K/V head n // (Hq/Hkv)); ``mask`` must be the same for every query position."""
    b, hq, t, d = q.shape
    hkv = k.shape[1]
    y = _sdpa(q.reshape(b, hkv, (hq // hkv) * t, d), k, v, mask, False, False)
    return y.view(b, hq, t, d)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, gqa: bool) -> Tensor:
    if q.is_cuda and not torch.cuda.is_current_stream_capturing():
        # eager CUDA calls: no cuDNN attention, which builds a new plan for every new shape (generate()'s
        # attention length changes every step); captured graphs keep whatever kernel they captured
        with sdpa_kernel(_EAGER_BACKENDS):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=1.0,
                                                  enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=1.0, enable_gqa=gqa)


def _attend_fp32(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    b, hq, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = hq // hkv  # query head n reads key/value head n // g
    scores = (q.float().reshape(b, hkv, g * t, d) @ k.float().transpose(-1, -2)).view(b, hkv, g, t, s)
    if causal:
        scores = scores.masked_fill(~torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t), float("-inf"))
    if mask is not None:  # [B, 1, T or 1, S]
        scores = scores.masked_fill(~mask.view(b, 1, 1, mask.shape[-2], s), float("-inf"))
    out = scores.softmax(dim=-1).view(b, hkv, g * t, s) @ v.float()
    return out.view(b, hq, t, d).to(q.dtype)


def cache_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """Keys/values in fp32 for half-precision models on CPU (fast attention there), else the model dtype."""
    return torch.float32 if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16) else dtype


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.qkv = Linear(dim, (heads + 2 * kv_heads) * head_dim)
        self.out = Linear(heads * head_dim, dim)

    def project(self, x: Tensor, rope: Rope, positions: Tensor,
                tables: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """-> q [B, Hq, T, d], k and v [B, Hkv, T, d], RoPE applied (``tables``: ``rope.tables(positions)``
        looked up already)."""
        b, t, _ = x.shape
        d = self.head_dim
        cos, sin = tables if tables is not None else rope.tables(positions)
        qk, v = self.qkv(x).split([(self.heads + self.kv_heads) * d, self.kv_heads * d], dim=-1)
        # q and k sit side by side in the projection: one rotation for both
        qk = rope.rotate(qk.view(b, t, self.heads + self.kv_heads, d), cos, sin)
        q, k = qk.split([self.heads, self.kv_heads], dim=2)
        return q.transpose(1, 2), k.transpose(1, 2), v.view(b, t, self.kv_heads, d).transpose(1, 2)

    def merge(self, y: Tensor) -> Tensor:
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, enc_dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.q = Linear(dim, heads * head_dim)
        self.kv = Linear(enc_dim, 2 * heads * head_dim)
        self.out = Linear(heads * head_dim, dim)

    def keys_values(self, enc: Tensor, rope: Rope | None) -> tuple[Tensor, Tensor]:
        """Computed once per request: [B, H, S, d] each."""
        b, s, _ = enc.shape
        k, v = self.kv(enc).view(b, s, 2, self.heads, self.head_dim).unbind(2)
        if rope is not None:  # v0.1 semantics: keys rotated at encoder positions
            k = rope(k, torch.arange(s, device=enc.device))
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor, rope: Rope | None, positions: Tensor,
                segments: list[tuple[int, int, int]] | None = None) -> Tensor:
        """``segments``: ``(first_row, end_row, width)`` runs, each attending to its first ``width`` keys."""
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.heads, self.head_dim)
        if rope is not None:
            q = rope(q, positions)
        q = q.transpose(1, 2)
        y = attend_in_runs(q, k, v, mask, segments)
        return self.out(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: DiaConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.enc_hidden, cfg.norm_eps)
        self.attn = SelfAttention(cfg.enc_hidden, cfg.enc_heads, cfg.enc_kv_heads, cfg.enc_head_dim)
        self.mlp_norm = RMSNorm(cfg.enc_hidden, cfg.norm_eps)
        self.mlp = GatedMLP(cfg.enc_hidden, cfg.enc_mlp)

    def forward(self, x: Tensor, mask: Tensor, rope: Rope, positions: Tensor) -> Tensor:
        q, k, v = self.attn.project(self.attn_norm(x), rope, positions)
        x = x + self.attn.merge(attend(q, k, v, mask))
        return x + self.mlp(self.mlp_norm(x))


class Encoder(nn.Module):
    def __init__(self, cfg: DiaConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.text_vocab, cfg.enc_hidden)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.norm = RMSNorm(cfg.enc_hidden, cfg.norm_eps)
        self.rope = Rope(cfg.enc_head_dim, cfg.rope_theta, cfg.text_length)

    def forward(self, tokens: Tensor, padding: Tensor) -> Tensor:
        """tokens [B, S] bytes; padding [B, S] True where real text.

        A padded position attends only to padded positions and a real one only to
        real ones (the reference's mask): no row is fully masked, so no NaNs.
        """
        mask = (padding[:, None, :, None] == padding[:, None, None, :])
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embedding(tokens)
        for layer in self.layers:
            x = layer(x, mask, self.rope, positions)
        return self.norm(x)


class KVCache:
    """Static per-layer self-attention cache: [layers, rows, kv_heads, capacity, head_dim]."""

    def __init__(self, layers: int, rows: int, kv_heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (layers, rows, kv_heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def keep_rows(self, index: Tensor, length: int) -> None:
        """Drop finished rows: only the first ``length`` slots hold data, so only those are copied."""
        shape = (self.k.shape[0], index.numel(), *self.k.shape[2:])
        for name in ("k", "v"):
            old = getattr(self, name)
            new = torch.zeros(shape, dtype=old.dtype, device=old.device)
            new[:, :, :, :length] = old[:, index, :, :length]
            setattr(self, name, new)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DiaConfig):
        super().__init__()
        self.self_attn_norm = RMSNorm(cfg.dec_hidden, cfg.norm_eps)
        self.self_attn = SelfAttention(cfg.dec_hidden, cfg.dec_heads, cfg.dec_kv_heads, cfg.dec_head_dim)
        self.cross_attn_norm = RMSNorm(cfg.dec_hidden, cfg.norm_eps)
        self.cross_attn = CrossAttention(cfg.dec_hidden, cfg.enc_hidden, cfg.cross_heads, cfg.cross_head_dim)
        self.mlp_norm = RMSNorm(cfg.dec_hidden, cfg.norm_eps)
        self.mlp = GatedMLP(cfg.dec_hidden, cfg.dec_mlp)


class Decoder(nn.Module):
    def __init__(self, cfg: DiaConfig):
        super().__init__()
        self.cfg = cfg
        # One table with channel c's codes at rows c*V .. (c+1)*V-1; a frame's embedding is the sum.
        self.embedding = nn.Embedding(cfg.channels * cfg.audio_vocab, cfg.dec_hidden)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        self.norm = RMSNorm(cfg.dec_hidden, cfg.norm_eps)
        self.head = Linear(cfg.dec_hidden, cfg.channels * cfg.audio_vocab)
        self.rope = Rope(cfg.dec_head_dim, cfg.rope_theta, cfg.max_frames)
        self.cross_rope = Rope(cfg.cross_head_dim, cfg.rope_theta, max(cfg.max_frames, cfg.text_length)) \
            if cfg.cross_rope else None
        self.register_buffer("channel_offsets", torch.arange(cfg.channels) * cfg.audio_vocab, persistent=False)

    def cross_keys_values(self, enc: Tensor, dtype: torch.dtype | None = None) -> list[tuple[Tensor, Tensor]]:
        # Contiguous once here, or every step's attention matmul would copy them again.
        kv = [layer.cross_attn.keys_values(enc, self.cross_rope) for layer in self.layers]
        return [(k.to(dtype or k.dtype).contiguous(), v.to(dtype or v.dtype).contiguous()) for k, v in kv]

    def forward(self, frames: Tensor, start: int, cache: KVCache, cross_kv: list[tuple[Tensor, Tensor]],
                cross_mask: Tensor) -> Tensor:
        """frames [B, T, C] codes at timeline positions start..start+T-1 -> logits [B, T, C, V] fp32.

        Writes this block's keys/values into the cache and attends to everything
        before it.  A block of several frames (the prefill) must start at 0.
        """
        if frames.shape[1] > 1 and start != 0:
            raise ValueError("a multi-frame block must start at position 0")
        b, t, c = frames.shape
        end = start + t
        positions = torch.arange(start, end, device=frames.device)
        x = F.embedding(frames + self.channel_offsets, self.embedding.weight).sum(dim=2)
        tables = self.rope.tables(positions)  # the same positions in every layer
        for i, layer in enumerate(self.layers):
            q, k, v = layer.self_attn.project(layer.self_attn_norm(x), self.rope, positions, tables)
            cache.k[i, :, :, start:end] = k
            cache.v[i, :, :, start:end] = v
            keys, values = cache.k[i, :, :, :end], cache.v[i, :, :, :end]
            y = attend(q, keys, values, causal=t > 1)  # one new frame sees all history; a block is causal
            x = x + layer.self_attn.merge(y)
            ck, cv = cross_kv[i]
            x = x + layer.cross_attn(layer.cross_attn_norm(x), ck, cv, cross_mask, self.cross_rope, positions)
            x = x + layer.mlp(layer.mlp_norm(x))
        logits = self.head(self.norm(x)).float()
        return logits.view(b, t, c, self.cfg.audio_vocab)


    def step(self, frames: Tensor, positions: Tensor, cache: KVCache, cross_kv: list[tuple[Tensor, Tensor]],
             cross_mask: Tensor, length: int, segments: list[tuple[int, int, int]] | None = None,
             cross_segments: list[tuple[int, int, int]] | None = None) -> Tensor:
        """One frame per row, each row at its own timeline position (the slot engine's decode step).

        frames [B, C] codes at ``positions`` [B]; writes each row's keys/values at its position and
        attends to its own positions 0..position only, reading the first ``length`` cache slots
        (``length`` > every position). ``segments`` ``(first_row, end_row, length)`` covering the rows
        in order: each run reads only its own length (one attention call each; eager steps only);
        ``cross_segments`` likewise for cross-attention (each run its own script width).
        -> logits [B, C, V] fp32.
        """
        b = frames.shape[0]
        rows = torch.arange(b, device=frames.device)
        pos = positions[:, None]  # [B, 1]: one query per row
        visible = (torch.arange(length, device=frames.device)[None, :] <= pos)[:, None, None, :]  # [B, 1, 1, S]
        x = F.embedding(frames[:, None] + self.channel_offsets, self.embedding.weight).sum(dim=2)
        tables = self.rope.tables(pos)  # the same positions in every layer
        for i, layer in enumerate(self.layers):
            q, k, v = layer.self_attn.project(layer.self_attn_norm(x), self.rope, pos, tables)
            cache.k[i, rows, :, positions] = k[:, :, 0].to(cache.k.dtype)
            cache.v[i, rows, :, positions] = v[:, :, 0].to(cache.v.dtype)
            y = attend_in_runs(q, cache.k[i, :, :, :length], cache.v[i, :, :, :length], visible, segments)
            x = x + layer.self_attn.merge(y)
            ck, cv = cross_kv[i]
            x = x + layer.cross_attn(layer.cross_attn_norm(x), ck, cv, cross_mask, self.cross_rope, pos,
                                     cross_segments)
            x = x + layer.mlp(layer.mlp_norm(x))
        logits = self.head(self.norm(x)).float()
        return logits.view(b, self.cfg.channels, self.cfg.audio_vocab)


class DiaModel(nn.Module):
    def __init__(self, cfg: DiaConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(p.shape) for name, p in self.named_parameters()}

    def use_matmul(self, matmul: Callable[[Tensor, Tensor], Tensor]) -> None:
        """Route every projection through ``matmul(x, weight)`` (e.g. the CPU half-precision kernel)."""
        for module in self.modules():
            if isinstance(module, Linear):
                module.matmul = matmul

    def init_buffers(self, device: torch.device) -> None:
        """Fill the derived (non-persistent) buffers once parameters have been assigned."""
        for module in self.modules():
            if isinstance(module, Rope):
                module.reset(device)
        cfg = self.cfg
        self.decoder.channel_offsets = torch.arange(cfg.channels, device=device) * cfg.audio_vocab
