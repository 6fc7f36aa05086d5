"""Audio file I/O for voice prompts and outputs, with soundfile + soxr (no torchaudio, no ffmpeg).

Errors are ``AudioError`` naming the file and the problem, never a bare libsndfile
traceback: a prompt file is user input and its problems should read as such.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from ..errors import AudioError

AudioSource = str | os.PathLike | BinaryIO | bytes

_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}


def load_audio(source: AudioSource, target_sample_rate: int = 44100) -> np.ndarray:
    """Read WAV/FLAC/OGG/MP3 from a path, a binary file object or bytes -> mono float32 1-D.

    Channels are averaged (as the reference does), integer PCM is scaled to [-1, 1],
    and any other sample rate is resampled to ``target_sample_rate`` with soxr (VHQ).
    """
    name = _describe(source)
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise AudioError(f"{name}: no data (0 bytes)")
        source = io.BytesIO(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise AudioError(f"{name}: audio file not found")
        if not path.is_file():
            raise AudioError(f"{name}: not a regular file")
        if path.stat().st_size == 0:
            raise AudioError(f"{name}: file is empty (0 bytes)")
    try:
        data, sample_rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, TypeError) as exc:
        raise AudioError(
            f"{name}: unreadable or unsupported audio (WAV, FLAC, OGG or MP3 expected): {exc}"
        ) from exc
    if data.shape[0] == 0:
        raise AudioError(f"{name}: contains no audio samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{name}: contains non-finite samples (NaN or infinity)")
    mono = data.mean(axis=1, dtype=np.float32)
    if sample_rate != target_sample_rate:
        mono = soxr.resample(mono, sample_rate, target_sample_rate, quality="VHQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def write_audio(
    path: str | os.PathLike,
    waveform: np.ndarray,
    sample_rate: int = 44100,
    format: str | None = None,
) -> None:
    """Write a waveform clipped to [-1, 1]; the file appears whole or not at all.

    The format comes from ``format`` or the extension (.wav, .flac, .ogg, .mp3). Data
    goes to a hidden temporary file in the same directory, then ``os.replace`` renames
    it, so readers (and a crash mid-write) never see a partial file.
    """
    path = Path(path)
    data = _prepare(waveform, path)
    fmt = _format(format, path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        sf.write(tmp, data, sample_rate, format=fmt)
        os.replace(tmp, path)
    except (sf.SoundFileError, RuntimeError) as exc:
        raise AudioError(f"{path}: cannot write {fmt} audio at {sample_rate} Hz: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def audio_to_bytes(waveform: np.ndarray, sample_rate: int, format: str) -> bytes:
    """Encode a waveform (clipped to [-1, 1]) as a whole audio file in memory (e.g. for Parquet)."""
    buffer = io.BytesIO()
    fmt = _format(format, None)
    try:
        sf.write(buffer, _prepare(waveform, None), sample_rate, format=fmt)
    except (sf.SoundFileError, RuntimeError) as exc:
        raise AudioError(f"cannot encode {fmt} audio at {sample_rate} Hz: {exc}") from exc
    return buffer.getvalue()


def _prepare(waveform: np.ndarray, path: Path | None) -> np.ndarray:
    """float32, finite and clipped: MP3/OGG encoders misbehave outside [-1, 1]."""
    data = np.asarray(waveform, dtype=np.float32)
    where = f"{path}: " if path is not None else ""
    if data.ndim not in (1, 2):
        raise AudioError(
            f"{where}expected a 1-D waveform or [samples, channels], got shape {data.shape}"
        )
    if not np.isfinite(data).all():
        raise AudioError(f"{where}waveform contains non-finite samples (NaN or infinity)")
    return np.clip(data, -1.0, 1.0)


def _format(format: str | None, path: Path | None) -> str:
    if format is not None:
        fmt = format.upper().lstrip(".")
        if fmt not in _FORMATS.values():
            raise AudioError(
                f"unsupported audio format {format!r}; use one of {sorted(_FORMATS.values())}"
            )
        return fmt
    assert path is not None
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(
            f"{path}: unknown audio format for this extension; use one of {sorted(_FORMATS)}"
        )
    return fmt


def _describe(source: AudioSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes of audio>"
    name = getattr(source, "name", None)
    return str(name) if isinstance(name, (str, os.PathLike)) else "<audio file object>"
