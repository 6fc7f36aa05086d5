"""The decode loop: a padded batch of rows, each with its own text, prompt, settings and length.

Per row (spec §7): the timeline starts with a BOS frame and the row's audio prompt
(teacher-forced, delay pattern applied); every step predicts one delayed frame;
channel 0's EOS, or the row's length limit, starts a 15-step countdown that closes
the delayed channels; the output is the generated part with the delay reverted.

All rows share one timeline (prompts are aligned at t = 0, so positions are
absolute and a row's result does not depend on its neighbours).  Conditional and
unconditional passes run as one batch of 2B rows.  Rows whose countdown is over are
dropped from the batch (KV cache, cross-attention K/V and settings compacted), so
finished rows stop costing compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .config import DiaConfig
from .model import DiaModel, KVCache, cache_dtype
from .sampling import RowSampling, Sampler, row_keys
from .text import text_batch

NOT_GENERATED = -1  # timeline cell still to be predicted; anything else is teacher-forced


@dataclass
class RowRequest:
    script: bytes  # encoder bytes, [S1]/[S2] already mapped
    prompt: np.ndarray | None  # audio-prompt codes [frames, channels] or None
    max_new_frames: int
    cfg_scale: float
    temperature: float
    top_p: float
    top_k: int
    seed: int


@dataclass
class RowOutput:
    codes: np.ndarray  # [frames, channels], delay reverted, prompt excluded
    ended_by_eos: bool


def delayed_prompt(cfg: DiaConfig, prompt: np.ndarray | None, span: int | None = None) -> Tensor:
    """The teacher-forced head of a row's timeline: BOS frame + prompt, delayed.

    Spans ``L + max_delay`` rows by default, as the reference does for a request
    alone: the prompt's last frame in the most-delayed channel (for an unprompted
    row: its BOS) lands one row later and is sampled, not forced (a reference quirk
    kept for identical results, spec §8).  The reference sizes this span by the
    longest prompt in the batch, which makes rows depend on their neighbours; we
    size it per row unless ``span`` asks for the reference's batch-wide value.
    """
    length = 0 if prompt is None else len(prompt)
    span = length + cfg.max_delay if span is None else span
    undelayed = torch.full((span, cfg.channels), NOT_GENERATED, dtype=torch.long)
    undelayed[0] = cfg.bos_token
    if length:
        undelayed[1 : length + 1] = torch.as_tensor(np.asarray(prompt), dtype=torch.long)[: span - 1]
    out = torch.full_like(undelayed, NOT_GENERATED)
    for c, delay in enumerate(cfg.delay_pattern):
        out[:delay, c] = cfg.bos_token
        out[delay:, c] = undelayed[: span - delay, c]
    return out


def revert_delay(cfg: DiaConfig, delayed: Tensor, frames: int) -> Tensor:
    """Timeline rows [frames + max_delay, C] -> undelayed codes [frames, C]."""
    cols = [delayed[d : d + frames, c] for c, d in enumerate(cfg.delay_pattern)]
    return torch.stack(cols, dim=1)


class BatchState:
    """Per-row decoding state for the rows still running, compacted as rows finish."""

    def __init__(self, rows: Tensor, max_tokens: Tensor, prompt_lengths: Tensor, sampling: RowSampling):
        n = rows.numel()
        self.rows = rows  # index into the full batch
        self.max_tokens = max_tokens
        self.prompt_lengths = prompt_lengths
        self.sampling = sampling
        self.countdown = torch.full((n,), -1, dtype=torch.long, device=rows.device)  # -1: not triggered

    def select(self, keep: Tensor) -> None:
        self.rows, self.max_tokens, self.prompt_lengths, self.countdown = (
            t[keep] for t in (self.rows, self.max_tokens, self.prompt_lengths, self.countdown)
        )
        self.sampling = self.sampling.select(keep)


@torch.inference_mode()
def generate_rows(model: DiaModel, requests: list[RowRequest], device: torch.device,
                  reference_prompt_span: bool = False) -> list[RowOutput]:
    """Decode a batch.  ``reference_prompt_span`` reproduces the reference's batch-wide
    prompt span exactly (for parity checks); otherwise each row is independent of the batch."""
    cfg = model.cfg
    n = len(requests)
    kv_dtype = cache_dtype(model.decoder.head.weight.dtype, device)
    delays = torch.tensor(cfg.delay_pattern, device=device)
    max_delay = cfg.max_delay

    # ---- encoder: unconditional (zeros, same padding mask) and conditional rows interleaved
    ids, real = text_batch([r.script for r in requests], device)
    enc_ids = torch.stack((torch.zeros_like(ids), ids), dim=1).flatten(0, 1)
    enc_real = real.repeat_interleave(2, dim=0)
    enc_out = model.encoder(enc_ids, enc_real)
    cross_kv = model.decoder.cross_keys_values(enc_out, kv_dtype)
    cross_mask = enc_real[:, None, None, :]
    del enc_out

    # ---- timeline: [rows, positions, channels], prompts teacher-forced from t = 0
    prompt_lengths = [0 if r.prompt is None else len(r.prompt) for r in requests]
    max_tokens = [r.max_new_frames + max_delay + 1 + p for r, p in zip(requests, prompt_lengths)]
    capacity = max(max_tokens)
    timeline = torch.full((n, capacity + 1, cfg.channels), NOT_GENERATED, dtype=torch.long)
    shared_span = max(prompt_lengths) + max_delay if reference_prompt_span else None
    for i, r in enumerate(requests):
        head = delayed_prompt(cfg, r.prompt, shared_span)
        timeline[i, : len(head)] = head
    timeline = timeline.to(device)

    sampling = RowSampling(
        cfg_scale=torch.tensor([r.cfg_scale for r in requests], dtype=torch.float32, device=device),
        temperature=torch.tensor([r.temperature for r in requests], dtype=torch.float32, device=device),
        top_p=torch.tensor([r.top_p for r in requests], dtype=torch.float32, device=device),
        top_k=torch.tensor([r.top_k for r in requests], dtype=torch.long, device=device),
        keys=row_keys(torch.tensor([r.seed for r in requests], dtype=torch.long, device=device)),
    )
    k_max = max(r.top_k for r in requests)
    sampler = Sampler(cfg, device)
    state = BatchState(
        torch.arange(n, device=device),
        torch.tensor(max_tokens, device=device),
        torch.tensor(prompt_lengths, device=device),
        sampling,
    )
    finished_at = torch.full((n,), -1, dtype=torch.long, device=device)
    ended_by_eos = torch.zeros(n, dtype=torch.bool, device=device)
    cache = KVCache(cfg.dec_layers, 2 * n, cfg.dec_kv_heads, capacity, cfg.dec_head_dim, kv_dtype, device)

    # ---- prefill the part of the timeline that every row has teacher-forced
    t = min(prompt_lengths)  # first step's input position (reference: s_min - 1)
    if t > 0:
        model.decoder(timeline[:, :t].repeat_interleave(2, dim=0), 0, cache, cross_kv, cross_mask)

    eos, pad = cfg.eos_token, cfg.pad_token
    while state.rows.numel():
        rows = state.rows
        frame = timeline[rows, t : t + 1].repeat_interleave(2, dim=0)
        logits = model.decoder(frame, t, cache, cross_kv, cross_mask)
        pred = sampler(logits.view(rows.numel(), 2, cfg.channels, cfg.audio_vocab), state.sampling, k_max, t + 1)

        cur = t + 1  # the timeline row being predicted
        forced = timeline[rows, cur]
        # EOS counts only where channel 0 is really generated (not inside the row's prompt).
        eos_hit = (state.countdown < 0) & (pred[:, 0] == eos) & (forced[:, 0] == NOT_GENERATED)
        trigger = (state.countdown < 0) & (eos_hit | (cur >= state.max_tokens - max_delay))
        state.countdown = torch.where(trigger, max_delay, state.countdown)
        finished_at[rows] = torch.where(trigger, cur, finished_at[rows])
        ended_by_eos[rows] |= eos_hit
        # The countdown closes channel c with EOS delta_c steps after the end, PAD after that.
        closing = state.countdown > 0
        since_end = (max_delay - state.countdown)[:, None]
        pred = torch.where(closing[:, None] & (since_end == delays), eos, pred)
        pred = torch.where(closing[:, None] & (since_end > delays), pad, pred)
        state.countdown = torch.where(closing, state.countdown - 1, state.countdown)
        timeline[rows, cur] = torch.where(forced == NOT_GENERATED, pred, forced)

        t = cur
        done = state.countdown == 0
        if bool(done.any()):  # drop finished rows; cache and cross-attention rows follow ``state.rows``
            keep = (~done).nonzero().squeeze(1)
            state.select(keep)
            pair = torch.stack((2 * keep, 2 * keep + 1), dim=1).flatten()
            cache.keep_rows(pair, t)
            cross_kv = [(k[pair], v[pair]) for k, v in cross_kv]
            cross_mask = cross_mask[pair]

    outputs = []
    timeline_cpu = timeline.cpu()
    for i, r in enumerate(requests):
        start = prompt_lengths[i] + 1
        frames = max(int(finished_at[i]) - start, 0)
        codes = revert_delay(cfg, timeline_cpu[i, start : start + frames + max_delay], frames)
        codes = torch.where((codes >= 0) & (codes < eos), codes, 0)
        outputs.append(RowOutput(codes.numpy().astype(np.int64), bool(ended_by_eos[i])))
    return outputs
