"""One decode step's math, shared by both decode paths (static batches and the slot engine).

Given the decoder's logits for one frame per row, it samples the next frame and applies the end
rules of spec §7: channel 0's EOS (only where channel 0 is really generated, not inside the row's
prompt) or the row's length limit starts a ``max_delay``-step countdown; during the countdown
channel c is closed with EOS ``delay_c`` steps after the end and PAD after that; teacher-forced
cells keep their forced codes. Everything is tensor math without a host sync, so the slot engine's
step can be captured as a CUDA graph; the callers own where the results are written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import DiaConfig
from .sampling import RowSampling, Sampler
from .timeline import NOT_GENERATED


@dataclass
class StepOutcome:
    """What one step decided, per row (all [n] or [n, C] device tensors)."""

    written: Tensor  # [n, C] codes for the predicted cell (forced cells kept; rows not live: the forced cell)
    countdown: Tensor  # [n] the countdown after this step (-1: not triggered; 0: the row is done)
    triggered: Tensor  # [n] bool: the row's end was triggered in this step (EOS or the length limit)
    eos_hit: Tensor  # [n] bool: ... by EOS
    finished: Tensor  # [n] bool: the row's countdown ran out in this step


class DecodeStep:
    """Sampling plus the end rules for one frame of every row; one instance per decode run."""

    def __init__(self, cfg: DiaConfig, device: torch.device):
        self.cfg = cfg
        self.sampler = Sampler(cfg, device)
        self.delays = torch.tensor(cfg.delay_pattern, device=device)

    def __call__(self, logits: Tensor, sampling: RowSampling, k_max: int, position: int | Tensor, forced: Tensor,
                 countdown: Tensor, max_tokens: Tensor, live: Tensor | None = None) -> StepOutcome:
        """``logits`` [n, 2 (uncond, cond), C, V] for the frame after input ``position`` (one int for
        every row, or [n]); ``forced`` [n, C] the timeline cell being predicted; ``countdown`` and
        ``max_tokens`` [n] per row; ``live`` [n] bool (None: every row), rows not live change nothing."""
        cfg, max_delay = self.cfg, self.cfg.max_delay
        cur = position + 1  # the timeline cell being predicted
        pred = self.sampler(logits, sampling, k_max, cur)
        waiting = countdown < 0 if live is None else live & (countdown < 0)
        eos_hit = waiting & (pred[:, 0] == cfg.eos_token) & (forced[:, 0] == NOT_GENERATED)
        triggered = waiting & (eos_hit | (cur >= max_tokens - max_delay))
        countdown = torch.where(triggered, max_delay, countdown)
        # The countdown closes channel c with EOS delta_c steps after the end, PAD after that.
        closing = countdown > 0 if live is None else live & (countdown > 0)
        since_end = (max_delay - countdown)[:, None]
        pred = torch.where(closing[:, None] & (since_end == self.delays), cfg.eos_token, pred)
        pred = torch.where(closing[:, None] & (since_end > self.delays), cfg.pad_token, pred)
        countdown = torch.where(closing, countdown - 1, countdown)
        written = torch.where(forced == NOT_GENERATED, pred, forced)
        finished = countdown == 0
        if live is not None:
            written = torch.where(live[:, None], written, forced)
            finished = live & finished
        return StepOutcome(written, countdown, triggered, eos_hit, finished)


__all__ = ["DecodeStep", "StepOutcome"]
