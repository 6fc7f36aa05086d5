"""Where each published tensor lives in our model, for both key layouts.

Our modules use ``nn.Linear``'s ``[out, in]`` layout (weights stream at full speed
through ``F.linear``) and fuse the projections that read the same input (Q/K/V,
cross K/V, gate/up).  The published checkpoints come in two layouts:

* ``native`` (nari-labs): JAX-style ``DenseGeneral`` kernels with the input dims
  first, e.g. ``q_proj`` ``[D, heads, head_dim]``, ``o_proj`` ``[heads, head_dim, D]``,
  and nine separate decoder embedding tables.
* ``hf`` (transformers ``DiaForConditionalGeneration``): ``nn.Linear`` weights,
  one concatenated embedding table, ``logits_dense`` at the top level.

Each :class:`Piece` maps one published tensor onto a row range of one of our
parameters; the same table drives loading (file -> model) and saving (model -> file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import DiaConfig

LAYOUTS = ("native", "hf")


@dataclass(frozen=True)
class Piece:
    internal: str  # our parameter name
    rows: tuple[int, int] | None  # row range inside that parameter (None: all of it)
    native: str
    native_shape: tuple[int, ...]
    native_in_dims: int  # leading input dims of a DenseGeneral kernel; 0 = stored as is
    hf: str
    hf_shape: tuple[int, ...]

    def key(self, layout: str) -> str:
        return self.native if layout == "native" else self.hf

    def shape(self, layout: str) -> tuple[int, ...]:
        return self.native_shape if layout == "native" else self.hf_shape

    def to_internal(self, tensor: torch.Tensor, layout: str) -> torch.Tensor:
        """A view of a published tensor in our [out, in] layout (no copy)."""
        if layout == "hf" or self.native_in_dims == 0:
            return tensor
        n_in = math.prod(self.native_shape[: self.native_in_dims])
        return tensor.reshape(n_in, -1).T

    def from_internal(self, tensor: torch.Tensor, layout: str) -> torch.Tensor:
        if layout == "hf" or self.native_in_dims == 0:
            return tensor.contiguous()
        return tensor.T.contiguous().reshape(self.native_shape)


def _linear(internal: str, rows: tuple[int, int] | None, native: str, native_shape: tuple[int, ...],
            hf: str, in_dims: int = 1) -> Piece:
    out_features = math.prod(native_shape[in_dims:])
    in_features = math.prod(native_shape[:in_dims])
    return Piece(internal, rows, native, native_shape, in_dims, hf, (out_features, in_features))


def _plain(internal: str, native: str, shape: tuple[int, ...], hf: str) -> Piece:
    return Piece(internal, None, native, shape, 0, hf, shape)


def _attention(ours: str, native: str, hf: str, d_in: int, d_kv_in: int, heads: int, kv_heads: int,
               head_dim: int, d_out: int, fused_kv_name: str | None) -> list[Piece]:
    """Q/K/V/O projections; K and V are fused with Q (self-attention) or with each other (cross)."""
    q, kv = heads * head_dim, kv_heads * head_dim
    if fused_kv_name is None:  # self-attention: one [q + 2kv, D] projection
        q_name = k_name = v_name = f"{ours}.qkv.weight"
        q_rows, k_rows, v_rows = (0, q), (q, q + kv), (q + kv, q + 2 * kv)
    else:  # cross-attention: Q reads the decoder, K/V read the encoder
        q_name, k_name = f"{ours}.q.weight", f"{ours}.{fused_kv_name}.weight"
        v_name = k_name
        q_rows, k_rows, v_rows = None, (0, kv), (kv, 2 * kv)
    return [
        _linear(q_name, q_rows, f"{native}.q_proj.weight", (d_in, heads, head_dim), f"{hf}.q_proj.weight"),
        _linear(k_name, k_rows, f"{native}.k_proj.weight", (d_kv_in, kv_heads, head_dim), f"{hf}.k_proj.weight"),
        _linear(v_name, v_rows, f"{native}.v_proj.weight", (d_kv_in, kv_heads, head_dim), f"{hf}.v_proj.weight"),
        _linear(f"{ours}.out.weight", None, f"{native}.o_proj.weight", (heads, head_dim, d_out),
                f"{hf}.o_proj.weight", in_dims=2),
    ]


def _mlp(ours: str, native: str, hf: str, d: int, hidden: int) -> list[Piece]:
    return [
        _linear(f"{ours}.gate_up.weight", None, f"{native}.wi_fused.weight", (d, 2, hidden),
                f"{hf}.gate_up_proj.weight"),
        _linear(f"{ours}.down.weight", None, f"{native}.wo.weight", (hidden, d), f"{hf}.down_proj.weight"),
    ]


def pieces(cfg: DiaConfig, layout: str = "native") -> list[Piece]:
    """Every published tensor of a checkpoint with this config and layout, in file order."""
    out: list[Piece] = []
    de, dd = cfg.enc_hidden, cfg.dec_hidden
    out.append(_plain("encoder.embedding.weight", "encoder.embedding.weight", (cfg.text_vocab, de),
                      "model.encoder.embedding.weight"))
    for i in range(cfg.enc_layers):
        ours, nat, hf = f"encoder.layers.{i}", f"encoder.layers.{i}", f"model.encoder.layers.{i}"
        out.append(_plain(f"{ours}.attn_norm.weight", f"{nat}.pre_sa_norm.weight", (de,), f"{hf}.pre_sa_norm.weight"))
        out += _attention(f"{ours}.attn", f"{nat}.self_attention", f"{hf}.self_attention", de, de,
                          cfg.enc_heads, cfg.enc_kv_heads, cfg.enc_head_dim, de, None)
        out.append(_plain(f"{ours}.mlp_norm.weight", f"{nat}.post_sa_norm.weight", (de,), f"{hf}.post_sa_norm.weight"))
        out += _mlp(f"{ours}.mlp", f"{nat}.mlp", f"{hf}.mlp", de, cfg.enc_mlp)
    out.append(_plain("encoder.norm.weight", "encoder.norm.weight", (de,), "model.encoder.norm.weight"))

    v = cfg.audio_vocab
    if layout == "hf":  # one concatenated table, channel c at rows c*V .. (c+1)*V-1
        out.append(_plain("decoder.embedding.weight", "decoder.embeddings.*.weight", (cfg.channels * v, dd),
                          "model.decoder.embeddings.embed.weight"))
    else:
        for c in range(cfg.channels):
            out.append(Piece("decoder.embedding.weight", (c * v, (c + 1) * v), f"decoder.embeddings.{c}.weight",
                             (v, dd), 0, "model.decoder.embeddings.embed.weight", (v, dd)))
    for i in range(cfg.dec_layers):
        ours, nat, hf = f"decoder.layers.{i}", f"decoder.layers.{i}", f"model.decoder.layers.{i}"
        out.append(_plain(f"{ours}.self_attn_norm.weight", f"{nat}.pre_sa_norm.weight", (dd,), f"{hf}.pre_sa_norm.weight"))
        out += _attention(f"{ours}.self_attn", f"{nat}.self_attention", f"{hf}.self_attention", dd, dd,
                          cfg.dec_heads, cfg.dec_kv_heads, cfg.dec_head_dim, dd, None)
        out.append(_plain(f"{ours}.cross_attn_norm.weight", f"{nat}.pre_ca_norm.weight", (dd,), f"{hf}.pre_ca_norm.weight"))
        out += _attention(f"{ours}.cross_attn", f"{nat}.cross_attention", f"{hf}.cross_attention", dd, de,
                          cfg.cross_heads, cfg.cross_heads, cfg.cross_head_dim, dd, "kv")
        out.append(_plain(f"{ours}.mlp_norm.weight", f"{nat}.pre_mlp_norm.weight", (dd,), f"{hf}.pre_mlp_norm.weight"))
        out += _mlp(f"{ours}.mlp", f"{nat}.mlp", f"{hf}.mlp", dd, cfg.dec_mlp)
    out.append(_plain("decoder.norm.weight", "decoder.norm.weight", (dd,), "model.decoder.norm.weight"))
    out.append(_linear("decoder.head.weight", None, "decoder.logits_dense.weight", (dd, cfg.channels, v),
                       "logits_dense.weight"))
    return out


def expected_keys(cfg: DiaConfig, layout: str) -> dict[str, tuple[int, ...]]:
    """Published key -> shape."""
    return {p.key(layout): p.shape(layout) for p in pieces(cfg, layout)}


def detect_layout(keys: set[str]) -> str | None:
    if "encoder.embedding.weight" in keys or any(k.startswith("decoder.layers.") for k in keys):
        return "native"
    if "model.encoder.embedding.weight" in keys or any(k.startswith("model.decoder.") for k in keys):
        return "hf"
    return None


def export_state_dict(cfg: DiaConfig, params: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Our parameters -> a published state dict (for writing checkpoints)."""
    out: dict[str, torch.Tensor] = {}
    for p in pieces(cfg, layout):
        t = params[p.internal]
        if p.rows is not None:
            t = t[p.rows[0]: p.rows[1]]
        out[p.key(layout)] = p.from_internal(t, layout)
    return out
