"""Encoding waveforms into audio file bytes (FLAC, WAV, OGG Vorbis, MP3) with soundfile."""
from __future__ import annotations

import io
from typing import Optional

import numpy as np
import soundfile as sf

# format name -> (soundfile container, default subtype)
FORMATS: dict[str, tuple[str, str]] = {
    "flac": ("FLAC", "PCM_16"),
    "wav": ("WAV", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


def encode(wave: np.ndarray, sample_rate: int, fmt: str, subtype: Optional[str] = None) -> bytes:
    """Mono float waveform -> bytes of a complete audio file."""
    container, default_subtype = FORMATS[fmt]
    data = np.clip(np.asarray(wave, dtype=np.float32).reshape(-1), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, data, sample_rate, format=container, subtype=subtype or default_subtype)
    return buf.getvalue()


def check_format(fmt: str, subtype: Optional[str]) -> None:
    """Fail early (ValueError) on a format/subtype pair soundfile cannot write."""
    container, default_subtype = FORMATS[fmt]
    if not sf.check_format(container, subtype or default_subtype):
        raise ValueError(f"soundfile cannot write {fmt} with subtype {subtype!r}; "
                         f"try one of {sorted(sf.available_subtypes(container))}")
