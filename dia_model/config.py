"""Model configuration, read from either published ``config.json`` schema.

Dia shipped two checkpoint generations with identical tensor names but different
inference semantics (spec §0).  The schema of ``config.json`` is what tells them
apart, so the parsed config carries a ``schema`` field that selects the semantics:

* ``"0626"``: ``encoder_config``/``decoder_config`` (nari-labs/Dia-1.6B-0626, HF).
* ``"v0.1"``: ``version``/``model``/``data`` (nari-labs/Dia-1.6B): RoPE in
  cross-attention, sampling from the guided logits, channel-0 EOS logit x 0.8.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from .errors import CheckpointError

SCHEMAS = ("0626", "v0.1")


@dataclass(frozen=True)
class DiaConfig:
    # encoder (text bytes -> hidden states)
    enc_layers: int = 12
    enc_hidden: int = 1024
    enc_mlp: int = 4096
    enc_heads: int = 16
    enc_kv_heads: int = 16
    enc_head_dim: int = 128
    text_length: int = 1024  # encoder max positions = longest accepted script in bytes
    text_vocab: int = 256
    # decoder (audio codes -> next-frame logits)
    dec_layers: int = 18
    dec_hidden: int = 2048
    dec_mlp: int = 8192
    dec_heads: int = 16
    dec_kv_heads: int = 4
    dec_head_dim: int = 128
    cross_heads: int = 16
    cross_head_dim: int = 128
    max_frames: int = 3072  # decoder max positions: whole timeline incl. BOS and prompt
    audio_vocab: int = 1028
    channels: int = 9
    delay_pattern: tuple[int, ...] = (0, 8, 9, 10, 11, 12, 13, 14, 15)
    eos_token: int = 1024
    pad_token: int = 1025
    bos_token: int = 1026
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    schema: str = "0626"

    def __post_init__(self) -> None:
        if self.schema not in SCHEMAS:
            raise CheckpointError(f"unknown config schema {self.schema!r}; expected one of {SCHEMAS}")
        if len(self.delay_pattern) != self.channels:
            raise CheckpointError(
                f"delay_pattern has {len(self.delay_pattern)} entries but the model has {self.channels} channels"
            )
        if self.dec_heads % self.dec_kv_heads or self.enc_heads % self.enc_kv_heads:
            raise CheckpointError("query heads must be a multiple of key/value heads")

    @property
    def max_delay(self) -> int:
        return max(self.delay_pattern)

    @property
    def cross_rope(self) -> bool:
        """v0.1 code rotated queries and keys in cross-attention; 0626 does not."""
        return self.schema == "v0.1"

    def replace(self, **changes: Any) -> "DiaConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "DiaConfig":
        if "encoder_config" in raw and "decoder_config" in raw:
            return _from_0626(raw)
        if "model" in raw and "data" in raw:
            return _from_v01(raw)
        raise CheckpointError(
            "config.json is neither the current Dia schema (encoder_config/decoder_config) "
            f"nor the original one (version/model/data); top-level keys: {sorted(raw)}"
        )

    @classmethod
    def from_json(cls, path: str) -> "DiaConfig":
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read config {path}: {e}") from e
        return cls.from_dict(raw)

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> dict[str, Any]:
        """The config in its own schema, as the published checkpoints spell it."""
        return _to_0626(self) if self.schema == "0626" else _to_v01(self)


def _need(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise CheckpointError(f"config.json: missing {where}{key}")
    return d[key]


def _rope_theta(d: dict[str, Any]) -> float:
    # transformers >= 5 writes rope_parameters instead of rope_theta.
    if d.get("rope_theta") is not None:
        return float(d["rope_theta"])
    params = d.get("rope_parameters") or {}
    return float(params.get("rope_theta", 10000.0))


def _from_0626(raw: dict[str, Any]) -> DiaConfig:
    enc, dec = raw["encoder_config"], raw["decoder_config"]
    e, d = "encoder_config.", "decoder_config."

    def token(name: str, default: int) -> int:
        # Top level in the native file; inside decoder_config in transformers >= 5 files.
        for src in (raw, dec):
            if src.get(name) is not None:
                return int(src[name])
        return default

    heads = int(_need(enc, "num_attention_heads", e))
    return DiaConfig(
        enc_layers=int(_need(enc, "num_hidden_layers", e)),
        enc_hidden=int(_need(enc, "hidden_size", e)),
        enc_mlp=int(_need(enc, "intermediate_size", e)),
        enc_heads=heads,
        enc_kv_heads=int(enc.get("num_key_value_heads") or heads),
        enc_head_dim=int(_need(enc, "head_dim", e)),
        text_length=int(enc.get("max_position_embeddings", 1024)),
        text_vocab=int(enc.get("vocab_size", 256)),
        dec_layers=int(_need(dec, "num_hidden_layers", d)),
        dec_hidden=int(_need(dec, "hidden_size", d)),
        dec_mlp=int(_need(dec, "intermediate_size", d)),
        dec_heads=int(_need(dec, "num_attention_heads", d)),
        dec_kv_heads=int(_need(dec, "num_key_value_heads", d)),
        dec_head_dim=int(_need(dec, "head_dim", d)),
        cross_heads=int(_need(dec, "cross_num_attention_heads", d)),
        cross_head_dim=int(_need(dec, "cross_head_dim", d)),
        max_frames=int(dec.get("max_position_embeddings", 3072)),
        audio_vocab=int(dec.get("vocab_size", 1028)),
        channels=int(dec.get("num_channels", 9)),
        delay_pattern=tuple(int(x) for x in raw.get("delay_pattern", (0, 8, 9, 10, 11, 12, 13, 14, 15))),
        eos_token=token("eos_token_id", 1024),
        pad_token=token("pad_token_id", 1025),
        bos_token=token("bos_token_id", 1026),
        norm_eps=float(dec.get("norm_eps", raw.get("norm_eps", 1e-5))),
        rope_theta=_rope_theta(dec),
        schema="0626",
    )


def _round_up_128(n: int) -> int:
    # The v0.1 config validator rounded text/audio lengths up to a multiple of 128.
    return (n + 127) // 128 * 128


def _from_v01(raw: dict[str, Any]) -> DiaConfig:
    model, data = raw["model"], raw["data"]
    enc = _need(model, "encoder", "model.")
    dec = _need(model, "decoder", "model.")
    e, d = "model.encoder.", "model.decoder."
    heads = int(_need(enc, "n_head", e))
    return DiaConfig(
        enc_layers=int(_need(enc, "n_layer", e)),
        enc_hidden=int(_need(enc, "n_embd", e)),
        enc_mlp=int(_need(enc, "n_hidden", e)),
        enc_heads=heads,
        enc_kv_heads=heads,
        enc_head_dim=int(_need(enc, "head_dim", e)),
        text_length=_round_up_128(int(data.get("text_length", 1024))),
        text_vocab=int(model.get("src_vocab_size", 256)),
        dec_layers=int(_need(dec, "n_layer", d)),
        dec_hidden=int(_need(dec, "n_embd", d)),
        dec_mlp=int(_need(dec, "n_hidden", d)),
        dec_heads=int(_need(dec, "gqa_query_heads", d)),
        dec_kv_heads=int(_need(dec, "kv_heads", d)),
        dec_head_dim=int(_need(dec, "gqa_head_dim", d)),
        cross_heads=int(_need(dec, "cross_query_heads", d)),
        cross_head_dim=int(_need(dec, "cross_head_dim", d)),
        max_frames=_round_up_128(int(data.get("audio_length", 3072))),
        audio_vocab=int(model.get("tgt_vocab_size", 1028)),
        channels=int(data.get("channels", 9)),
        delay_pattern=tuple(int(x) for x in data.get("delay_pattern", (0, 8, 9, 10, 11, 12, 13, 14, 15))),
        eos_token=int(data.get("audio_eos_value", 1024)),
        pad_token=int(data.get("audio_pad_value", 1025)),
        bos_token=int(data.get("audio_bos_value", 1026)),
        norm_eps=float(model.get("normalization_layer_epsilon", 1e-5)),
        rope_theta=float(model.get("rope_max_timescale", 10000.0)),
        schema="v0.1",
    )


def _to_0626(c: DiaConfig) -> dict[str, Any]:
    return {
        "architectures": ["DiaForConditionalGeneration"],
        "bos_token_id": c.bos_token,
        "eos_token_id": c.eos_token,
        "pad_token_id": c.pad_token,
        "delay_pattern": list(c.delay_pattern),
        "encoder_config": {
            "head_dim": c.enc_head_dim,
            "hidden_act": "silu",
            "hidden_size": c.enc_hidden,
            "intermediate_size": c.enc_mlp,
            "max_position_embeddings": c.text_length,
            "model_type": "dia_encoder",
            "norm_eps": c.norm_eps,
            "num_attention_heads": c.enc_heads,
            "num_hidden_layers": c.enc_layers,
            "num_key_value_heads": c.enc_kv_heads,
            "rope_scaling": None,
            "rope_theta": c.rope_theta,
            "vocab_size": c.text_vocab,
        },
        "decoder_config": {
            "cross_head_dim": c.cross_head_dim,
            "cross_hidden_size": c.enc_hidden,
            "cross_num_attention_heads": c.cross_heads,
            "cross_num_key_value_heads": c.cross_heads,
            "head_dim": c.dec_head_dim,
            "hidden_act": "silu",
            "hidden_size": c.dec_hidden,
            "intermediate_size": c.dec_mlp,
            "max_position_embeddings": c.max_frames,
            "model_type": "dia_decoder",
            "norm_eps": c.norm_eps,
            "num_attention_heads": c.dec_heads,
            "num_channels": c.channels,
            "num_hidden_layers": c.dec_layers,
            "num_key_value_heads": c.dec_kv_heads,
            "rope_scaling": None,
            "rope_theta": c.rope_theta,
            "vocab_size": c.audio_vocab,
        },
        "is_encoder_decoder": True,
        "model_type": "dia",
        "norm_eps": c.norm_eps,
        "torch_dtype": "float32",
    }


def _to_v01(c: DiaConfig) -> dict[str, Any]:
    if c.enc_kv_heads != c.enc_heads:
        raise CheckpointError("the v0.1 schema cannot express an encoder with grouped key/value heads")
    return {
        "version": "0.1",
        "model": {
            "encoder": {
                "n_layer": c.enc_layers,
                "n_embd": c.enc_hidden,
                "n_hidden": c.enc_mlp,
                "n_head": c.enc_heads,
                "head_dim": c.enc_head_dim,
            },
            "decoder": {
                "n_layer": c.dec_layers,
                "n_embd": c.dec_hidden,
                "n_hidden": c.dec_mlp,
                "gqa_query_heads": c.dec_heads,
                "kv_heads": c.dec_kv_heads,
                "gqa_head_dim": c.dec_head_dim,
                "cross_query_heads": c.cross_heads,
                "cross_head_dim": c.cross_head_dim,
            },
            "src_vocab_size": c.text_vocab,
            "tgt_vocab_size": c.audio_vocab,
            "dropout": 0.0,
            "normalization_layer_epsilon": c.norm_eps,
            "weight_dtype": "float32",
            "rope_min_timescale": 1,
            "rope_max_timescale": int(c.rope_theta),
        },
        "training": None,
        "data": {
            "text_length": c.text_length,
            "audio_length": c.max_frames,
            "channels": c.channels,
            "text_pad_value": 0,
            "audio_eos_value": c.eos_token,
            "audio_pad_value": c.pad_token,
            "audio_bos_value": c.bos_token,
            "delay_pattern": list(c.delay_pattern),
        },
    }


# Shapes used by the benchmark and the tiny-checkpoint factory.
TINY = DiaConfig(
    enc_layers=2, enc_hidden=64, enc_mlp=128, enc_heads=4, enc_kv_heads=4, enc_head_dim=16,
    dec_layers=2, dec_hidden=96, dec_mlp=192, dec_heads=4, dec_kv_heads=2, dec_head_dim=16,
    cross_heads=4, cross_head_dim=16,
)
SMALL_100M = DiaConfig(
    enc_layers=6, enc_hidden=512, enc_mlp=2048, enc_heads=8, enc_kv_heads=8, enc_head_dim=64,
    dec_layers=8, dec_hidden=768, dec_mlp=3072, dec_heads=12, dec_kv_heads=4, dec_head_dim=64,
    cross_heads=12, cross_head_dim=64,
)
FULL_1_6B = DiaConfig()
SHAPES: dict[str, DiaConfig] = {"tiny": TINY, "100m": SMALL_100M, "1.6b": FULL_1_6B}

__all__ = ["DiaConfig", "SCHEMAS", "SHAPES", "TINY", "SMALL_100M", "FULL_1_6B"]
