"""Signal-level quality metrics of one generated row: no model, computed on the replica right after
decoding, stored as metadata columns, and the inputs of the quality gates (``pipeline/quality.py``).

Silence is energy-based: 10 ms frames whose RMS is under ``SILENCE_DBFS`` (-45 dBFS; Dia's speech sits
around -20 dBFS) are silent. Loudness is ITU-R BS.1770 integrated loudness (``pyloudnorm``); it needs
at least one 400 ms block, so shorter audio has none.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional

import numpy as np

SILENCE_DBFS = -45.0
FRAME_S = 0.010
CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped
_TAGS = re.compile(r"\[S\d+\]")
_NON_VERBAL = re.compile(r"\([^)]*\)")
_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")

METRIC_COLUMNS = ("duration_s", "speaking_rate_wps", "leading_silence_s", "trailing_silence_s",
                  "max_inner_silence_s", "clipping_ratio", "loudness_lufs")


def spoken_words(script: str) -> list[str]:
    """The words a script asks to be said: speaker tags and non-verbals such as (laughs) removed."""
    return _WORD.findall(_NON_VERBAL.sub(" ", _TAGS.sub(" ", script or "")))


def silent_frames(audio: np.ndarray, sample_rate: int, threshold_dbfs: float = SILENCE_DBFS) -> np.ndarray:
    """One bool per 10 ms frame: True where the frame's RMS is under the threshold."""
    hop = max(1, int(round(sample_rate * FRAME_S)))
    n = len(audio) // hop
    if n == 0:
        return np.ones(1 if len(audio) else 0, dtype=bool)
    frames = np.asarray(audio[: n * hop], dtype=np.float64).reshape(n, hop)
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    return rms < 10.0 ** (threshold_dbfs / 20.0)


def silences(audio: np.ndarray, sample_rate: int) -> tuple[float, float, float]:
    """(leading, trailing, longest inner) silence in seconds. All-silent audio is all leading."""
    silent = silent_frames(audio, sample_rate)
    if silent.all():
        return len(audio) / sample_rate, 0.0, 0.0
    voiced = np.flatnonzero(~silent)
    lead, trail = int(voiced[0]), int(len(silent) - 1 - voiced[-1])
    inner = silent[voiced[0]: voiced[-1] + 1]
    longest = run = 0
    for s in inner:
        run = run + 1 if s else 0
        longest = max(longest, run)
    return lead * FRAME_S, trail * FRAME_S, longest * FRAME_S


def clipping_ratio(audio: np.ndarray) -> float:
    return float(np.mean(np.abs(audio) >= CLIP_LEVEL)) if len(audio) else 0.0


def loudness_lufs(audio: np.ndarray, sample_rate: int) -> Optional[float]:
    """BS.1770 integrated loudness in LUFS; None where undefined (under 400 ms, or silent)."""
    if len(audio) < int(0.4 * sample_rate):
        return None
    import pyloudnorm

    value = pyloudnorm.Meter(sample_rate).integrated_loudness(np.asarray(audio, dtype=np.float64))
    return float(value) if math.isfinite(value) else None


def row_metrics(audio: np.ndarray, sample_rate: int, script: str) -> dict[str, Any]:
    """Every signal-level metric of one row (see ``METRIC_COLUMNS``)."""
    duration = len(audio) / sample_rate
    lead, trail, inner = silences(audio, sample_rate)
    return {
        "duration_s": duration,
        "speaking_rate_wps": len(spoken_words(script)) / duration if duration > 0 else None,
        "leading_silence_s": lead, "trailing_silence_s": trail, "max_inner_silence_s": inner,
        "clipping_ratio": clipping_ratio(audio), "loudness_lufs": loudness_lufs(audio, sample_rate),
    }
