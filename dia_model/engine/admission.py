"""The checks a row passes before it may decode, and the ``RowRequest`` they build.

``generate()`` checks every row first and raises one :class:`DiaError` naming them all;
``stream()`` checks each request as it is pulled and hands a failing one back as an error result.
Both go through :class:`RowChecker`, so a row is refused (or accepted) the same way in each.
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import replace
from typing import Any, Protocol

import numpy as np

from ..config import DiaConfig
from ..errors import AudioError
from ..limits import MAX_SEED
from ..text import encode_script, validate_script
from ..types import Request
from .longform import with_end_tag
from .timeline import RowRequest, max_new_frames_limit


class PromptEncoder(Protocol):
    """What the checks need of a codec: its rate, and waveforms -> codes (``audio.codec.DacCodec``)."""

    sample_rate: int

    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]: ...


class RowChecker:
    """Checks rows against one model's config (and its codec, for audio-file prompts)."""

    def __init__(self, cfg: DiaConfig, codec: PromptEncoder | None):
        self.cfg = cfg
        self.codec = codec

    def prompt_codes(self, prompts: list[Any], problems: list[str]) -> list[np.ndarray | None]:
        """Per row: None, checked codes, or codes encoded from an audio file (batched)."""
        out: list[np.ndarray | None] = [None] * len(prompts)
        to_encode: list[tuple[int, np.ndarray]] = []
        cfg = self.cfg
        for i, p in enumerate(prompts):
            if p is None:
                continue
            if isinstance(p, (str, os.PathLike, bytes, bytearray)):
                if self.codec is None:
                    problems.append(f"row {i}: an audio-file prompt needs the codec (load_codec=True), or pass codes")
                    continue
                from ..audio.files import load_audio

                try:
                    to_encode.append((i, load_audio(p, self.codec.sample_rate)))
                except (AudioError, OSError) as e:
                    name = f"({len(p)} bytes)" if isinstance(p, (bytes, bytearray)) else repr(os.fspath(p))
                    problems.append(f"row {i}: audio prompt {name} cannot be used: {e}")
                continue
            codes = np.asarray(p)
            if codes.ndim != 2 or codes.shape[1] != cfg.channels or not np.issubdtype(codes.dtype, np.integer):
                problems.append(
                    f"row {i}: audio prompt codes must be integers of shape [frames, {cfg.channels}], "
                    f"got {codes.dtype} {list(codes.shape)}"
                )
            elif codes.size and (codes.min() < 0 or codes.max() >= cfg.eos_token):
                problems.append(f"row {i}: audio prompt codes must lie in 0..{cfg.eos_token - 1}")
            else:
                out[i] = codes.astype(np.int64)
        if to_encode:
            assert self.codec is not None
            for (i, _), codes in zip(to_encode, self.codec.encode([w for _, w in to_encode])):
                out[i] = codes
        return out

    def row_request(self, i: int, text: Any, prompt: np.ndarray | None, row: dict[str, Any],
                    problems: list[str]) -> RowRequest | None:
        """Row ``i``'s RowRequest from its text, checked prompt and settings (``row``: cfg_scale,
        temperature, top_p, top_k, max_new_frames, seed, prompt_transcripts); None, with its problems
        appended to ``problems``, when anything is wrong."""
        before = len(problems)
        cfg = self.cfg
        transcript = row["prompt_transcripts"]
        if transcript is not None:
            if not isinstance(transcript, str):
                problems.append(f"row {i}: prompt transcript must be a string")
            elif isinstance(text, str):
                text = f"{transcript.rstrip()} {text.lstrip()}"
        problems += [f"row {i}: {p}" for p in validate_script(text, cfg.text_length)]

        def number(name: str, lo: float, hi: float, integer: bool = False) -> Any:
            value = row[name]
            ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            ok = ok and math.isfinite(float(value))
            if ok and integer:
                ok = isinstance(value, (int, np.integer)) or float(value).is_integer()
                value = int(value) if ok else value
            if not ok or not lo <= value <= hi:
                kind = "an integer" if integer else "a number"
                problems.append(f"row {i}: {name}={value!r} must be {kind} in [{lo}, {hi}]")
                return None
            return value if integer else float(value)

        cfg_scale = number("cfg_scale", 0.0, 100.0)
        temperature = number("temperature", 0.0, 100.0)
        top_p = number("top_p", 1e-6, 1.0)
        top_k = number("top_k", 1, cfg.audio_vocab, integer=True)
        prompt_frames = 0 if prompt is None else len(prompt)
        limit = max_new_frames_limit(cfg, prompt_frames)
        if limit < 1:
            problems.append(
                f"row {i}: the audio prompt has {prompt_frames} frames, which leaves no room in the model's "
                f"{cfg.max_frames}-frame timeline; use a prompt of at most {max_new_frames_limit(cfg) - 1} frames"
            )
        max_new = row["max_new_frames"]
        if max_new is None:
            max_new = max(limit, 1)
        else:
            max_new = number("max_new_frames", 1, max(limit, 1), integer=True)
            if max_new is None and limit >= 1:
                problems[-1] += (
                    f" (the model holds {cfg.max_frames} frames: at most {limit} new frames after a "
                    f"{prompt_frames}-frame prompt)"
                )
        seed = row["seed"]
        if seed is None:
            seed = secrets.randbits(63)
        else:
            seed = number("seed", 0, MAX_SEED, integer=True)
        if len(problems) > before:
            return None
        return RowRequest(encode_script(text), prompt, max_new, cfg_scale, temperature, top_p, top_k, seed)

    def check_request(self, req: Request) -> tuple[RowRequest | None, str | None]:
        """(RowRequest, None), or (None, the problems) for one request, as generate() checks a row.
        (An ``end_tag`` request is checked with the tag appended: see :func:`apply_end_tag`.)"""
        problems: list[str] = []
        prompt = self.prompt_codes([req.audio_prompt], problems)[0]
        row = {"cfg_scale": req.cfg_scale, "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k,
               "max_new_frames": req.max_new_frames, "seed": req.seed, "prompt_transcripts": req.prompt_transcript}
        request = self.row_request(0, req.text, prompt, row, problems) if not problems else None
        if problems or request is None:
            return None, "; ".join(p.removeprefix("row 0: ") for p in problems)
        return request, None


def apply_end_tag(req: Request) -> tuple[Request, bool]:
    """The request with the end tag appended when it asks for one (and it applies), and whether it did."""
    if not req.end_tag or not isinstance(req.text, str):
        return req, False
    text, applied = with_end_tag(req.text)
    return replace(req, text=text, end_tag=False), applied


__all__ = ["RowChecker", "PromptEncoder", "apply_end_tag"]
