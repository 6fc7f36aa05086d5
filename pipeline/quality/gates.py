"""Quality gates: thresholds on a row's metrics, and which of several attempts to keep.

A gate left null is off. A row whose best attempt still fails a gate ends ``status=rejected``, with
its audio written (to listen to in the report) and the failed checks as its reason. With
``quality.retries=N`` a failing row is generated again, up to N more times, each with a seed derived
from its own recorded seed and the attempt number, so a resumed or re-run row makes the same attempts.

Which attempt is kept: the one with the fewest failed checks, then the smallest total violation
(each check's distance past its bound, divided by the bound's scale), then the earliest.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Optional

from ..config import QualityConfig


@dataclass(frozen=True)
class Failure:
    check: str  # e.g. "speaking_rate"
    message: str  # e.g. "speaking_rate_wps 7.1 > 5.0"
    violation: float  # how far past the bound, relative to it (> 0)


def retry_seed(seed: int, attempt: int) -> int:
    """The seed of attempt ``attempt`` (1, 2, ...) of a row whose own seed is ``seed`` (attempt 0)."""
    if attempt == 0:
        return seed
    digest = hashlib.sha256(f"{seed}:quality-retry:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFFFFFF


def _above(name: str, check: str, value: Optional[float], bound: Optional[float], scale: float) -> list[Failure]:
    if bound is None or value is None or value <= bound:
        return []
    return [Failure(check, f"{name} {value:.3g} > {bound:g}", (value - bound) / max(abs(bound), scale))]


def _below(name: str, check: str, value: Optional[float], bound: Optional[float], scale: float) -> list[Failure]:
    if bound is None or value is None or value >= bound:
        return []
    return [Failure(check, f"{name} {value:.3g} < {bound:g}", (bound - value) / max(abs(bound), scale))]


def _outside(name: str, check: str, value: Optional[float], bounds: Optional[list[float]],
             scale: float) -> list[Failure]:
    if not bounds or value is None:
        return []
    lo, hi = bounds
    if value < lo:
        return [Failure(check, f"{name} {value:.3g} < {lo:g}", (lo - value) / max(abs(lo), scale))]
    if value > hi:
        return [Failure(check, f"{name} {value:.3g} > {hi:g}", (value - hi) / max(abs(hi), scale))]
    return []


def check(metrics: dict[str, Any], cfg: QualityConfig) -> list[Failure]:
    """The gates this row's metrics fail ([] = passes)."""
    m = metrics
    return [
        *_outside("speaking_rate_wps", "speaking_rate", m.get("speaking_rate_wps"), cfg.speaking_rate, 1.0),
        *_above("max_inner_silence_s", "max_silence_s", m.get("max_inner_silence_s"), cfg.max_silence_s, 0.1),
        *_above("leading_silence_s", "max_edge_silence_s", m.get("leading_silence_s"), cfg.max_edge_silence_s, 0.1),
        *_above("trailing_silence_s", "max_edge_silence_s", m.get("trailing_silence_s"), cfg.max_edge_silence_s, 0.1),
        *_above("clipping_ratio", "max_clipping", m.get("clipping_ratio"), cfg.max_clipping, 1e-3),
        *_outside("loudness_lufs", "loudness_lufs", m.get("loudness_lufs"), cfg.loudness_lufs, 1.0),
        *_outside("duration_s", "duration_s", m.get("duration_s"), cfg.duration_s, 1.0),
        *_above("cer", "max_cer", m.get("cer"), cfg.max_cer, 0.05),
        *_above("wer", "max_wer", m.get("wer"), cfg.max_wer, 0.05),
        *_below("speaker_sim", "min_speaker_sim", m.get("speaker_sim"), cfg.min_speaker_sim, 0.1),
    ]


def score(failures: list[Failure]) -> tuple[int, float]:
    """Lower is better: (failed checks, total relative violation)."""
    return len(failures), sum(f.violation for f in failures)


def gates_on(cfg: QualityConfig) -> bool:
    return any(v is not None for v in (cfg.speaking_rate, cfg.max_silence_s, cfg.max_edge_silence_s,
                                       cfg.max_clipping, cfg.loudness_lufs, cfg.duration_s, cfg.max_cer,
                                       cfg.max_wer, cfg.min_speaker_sim))


def check_settings(cfg: QualityConfig) -> Optional[str]:
    """What is wrong with the quality settings (None: fine)."""
    for name in ("speaking_rate", "loudness_lufs", "duration_s"):
        bounds = getattr(cfg, name)
        if bounds is not None and (len(bounds) != 2 or bounds[0] > bounds[1]):
            return f"quality.{name} must be [low, high] with low <= high, got {list(bounds)}"
    for name in ("max_silence_s", "max_edge_silence_s", "max_clipping"):
        value = getattr(cfg, name)
        if value is not None and value < 0:
            return f"quality.{name} must be >= 0, got {value}"
    for gate, model in (("max_cer", "asr_model"), ("max_wer", "asr_model"), ("min_speaker_sim", "speaker_model")):
        if getattr(cfg, gate) is not None and not getattr(cfg, model):
            return (f"quality.{gate} needs quality.{model} (a local folder or a Hub id, e.g. "
                    f"{'openai/whisper-large-v3-turbo' if model == 'asr_model' else 'microsoft/wavlm-base-plus-sv'})")
    if cfg.retries < 0:
        return f"quality.retries must be >= 0, got {cfg.retries}"
    if cfg.retries and not gates_on(cfg):
        return "quality.retries is set but no gate is: set e.g. quality.max_silence_s=2 (or use quality=default)"
    return None
