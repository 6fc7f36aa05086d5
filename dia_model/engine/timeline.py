"""A row's timeline: what a row asks for, the delay pattern that lays its prompt out, and how its
codes are read back (spec §7).

Per row the timeline starts with a BOS frame and the row's audio prompt (teacher-forced, delay
pattern applied); every decode step predicts one delayed frame; the output is the generated part
with the delay reverted. Both decode paths (``static.generate_rows`` and ``slot_state.SlotState``)
lay rows out and read them back through this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..config import DiaConfig

NOT_GENERATED = -1  # timeline cell still to be predicted; anything else is teacher-forced


@dataclass
class RowRequest:
    """One checked row, ready for decoding (``admission.RowChecker`` builds these)."""

    script: bytes  # encoder bytes, [S1]/[S2] already mapped
    prompt: np.ndarray | None  # audio-prompt codes [frames, channels] or None
    max_new_frames: int
    cfg_scale: float
    temperature: float
    top_p: float
    top_k: int
    seed: int

    @property
    def prompt_frames(self) -> int:
        return 0 if self.prompt is None else len(self.prompt)

    def max_tokens(self, cfg: DiaConfig) -> int:
        """The timeline position at which the row's length limit starts its countdown, plus max_delay."""
        return self.max_new_frames + cfg.max_delay + 1 + self.prompt_frames

    @property
    def settings(self) -> dict[str, float | int]:
        """The sampling settings a result reports."""
        return {"cfg_scale": self.cfg_scale, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "max_new_frames": self.max_new_frames}


@dataclass
class RowOutput:
    codes: np.ndarray  # [frames, channels], delay reverted, prompt excluded
    ended_by_eos: bool


def max_new_frames_limit(cfg: DiaConfig, prompt_frames: int = 0) -> int:
    """The most frames a row can generate after a prompt of this many frames."""
    return cfg.max_frames - cfg.max_delay - 1 - prompt_frames


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


def row_output(cfg: DiaConfig, timeline: Tensor, prompt_frames: int, finished_at: int, ended_by_eos: bool) -> RowOutput:
    """A finished row's codes from its (host) timeline [positions, C]: the frames generated between
    its prompt and the position where its end was triggered, delay reverted, special tokens as 0."""
    start = prompt_frames + 1
    frames = max(finished_at - start, 0)
    codes = revert_delay(cfg, timeline[start : start + frames + cfg.max_delay], frames)
    codes = torch.where((codes >= 0) & (codes < cfg.eos_token), codes, 0)
    return RowOutput(codes.numpy().astype(np.int64), ended_by_eos)


__all__ = ["NOT_GENERATED", "RowRequest", "RowOutput", "max_new_frames_limit", "delayed_prompt", "revert_delay", "row_output"]
