"""Static batches: a padded batch of rows, each with its own text, prompt, settings and length,
decoded in lockstep (``Dia.generate``).

All rows share one timeline (prompts are aligned at t = 0, so positions are absolute and a row's
result does not depend on its neighbours).  Conditional and unconditional passes run as one batch
of 2B rows.  Rows whose countdown is over are dropped from the batch (KV cache, cross-attention K/V
and settings compacted), so finished rows stop costing compute.  The step's sampling and end rules
are ``step.DecodeStep``'s, the same the slot engine uses; the timeline's layout is ``timeline``'s.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..nn.model import DiaModel, KVCache, cache_dtype
from ..text import text_batch
from .sampling import RowSampling
from .step import DecodeStep
from .timeline import NOT_GENERATED, RowOutput, RowRequest, delayed_prompt, row_output


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

    # ---- encoder: unconditional (zeros, same padding mask) and conditional rows interleaved
    ids, real = text_batch([r.script for r in requests], device)
    enc_ids = torch.stack((torch.zeros_like(ids), ids), dim=1).flatten(0, 1)
    enc_real = real.repeat_interleave(2, dim=0)
    enc_out = model.encoder(enc_ids, enc_real)
    cross_kv = model.decoder.cross_keys_values(enc_out, kv_dtype)
    cross_mask = enc_real[:, None, None, :]
    del enc_out

    # ---- timeline: [rows, positions, channels], prompts teacher-forced from t = 0
    prompt_lengths = [r.prompt_frames for r in requests]
    max_tokens = [r.max_tokens(cfg) for r in requests]
    capacity = max(max_tokens)
    timeline = torch.full((n, capacity + 1, cfg.channels), NOT_GENERATED, dtype=torch.long)
    shared_span = max(prompt_lengths) + cfg.max_delay if reference_prompt_span else None
    for i, r in enumerate(requests):
        head = delayed_prompt(cfg, r.prompt, shared_span)
        timeline[i, : len(head)] = head
    timeline = timeline.to(device)

    k_max = max(r.top_k for r in requests)
    decode = DecodeStep(cfg, device)
    state = BatchState(
        torch.arange(n, device=device),
        torch.tensor(max_tokens, device=device),
        torch.tensor(prompt_lengths, device=device),
        RowSampling.of(requests, device),
    )
    finished_at = torch.full((n,), -1, dtype=torch.long, device=device)
    ended_by_eos = torch.zeros(n, dtype=torch.bool, device=device)
    cache = KVCache(cfg.dec_layers, 2 * n, cfg.dec_kv_heads, capacity, cfg.dec_head_dim, kv_dtype, device)

    # ---- prefill the part of the timeline that every row has teacher-forced
    t = min(prompt_lengths)  # first step's input position (reference: s_min - 1)
    if t > 0:
        model.decoder(timeline[:, :t].repeat_interleave(2, dim=0), 0, cache, cross_kv, cross_mask)

    while state.rows.numel():
        rows = state.rows
        frame = timeline[rows, t : t + 1].repeat_interleave(2, dim=0)
        logits = model.decoder(frame, t, cache, cross_kv, cross_mask)
        cur = t + 1  # the timeline row being predicted
        out = decode(logits.view(rows.numel(), 2, cfg.channels, cfg.audio_vocab), state.sampling, k_max, t,
                     timeline[rows, cur], state.countdown, state.max_tokens)
        state.countdown = out.countdown
        finished_at[rows] = torch.where(out.triggered, cur, finished_at[rows])
        ended_by_eos[rows] |= out.eos_hit
        timeline[rows, cur] = out.written

        t = cur
        if bool(out.finished.any()):  # drop finished rows; cache and cross-attention rows follow ``state.rows``
            keep = (~out.finished).nonzero().squeeze(1)
            state.select(keep)
            pair = torch.stack((2 * keep, 2 * keep + 1), dim=1).flatten()
            cache.keep_rows(pair, t)
            cross_kv = [(k[pair], v[pair]) for k, v in cross_kv]
            cross_mask = cross_mask[pair]

    timeline_cpu = timeline.cpu()
    return [row_output(cfg, timeline_cpu[i], prompt_lengths[i], int(finished_at[i]), bool(ended_by_eos[i]))
            for i in range(n)]


__all__ = ["generate_rows"]
