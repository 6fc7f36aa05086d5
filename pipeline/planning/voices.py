"""Named voices: clips read once by the driver, encoded once per replica, picked per row by name.

A row names its speakers' voices in ``voice_s1`` / ``voice_s2`` (``voice`` for a single-speaker row,
meaning ``voice_s1``). Its prompt is the chosen clips' codes one after the other, and its prompt
transcript their transcripts under ``[S1]`` / ``[S2]``, as the seed's voice-clone recipe does.
"""
from __future__ import annotations

import io
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..config import VoiceConfig
from .prompts import read_prompt

log = logging.getLogger(__name__)

VOICE_COLUMNS = ("voice", "voice_s1", "voice_s2")
CLIP_WARN_S = 10.0  # the seed's guideline for a voice prompt: 5-10 s
_LEADING_TAG = re.compile(r"^\s*\[S[12]\]\s*")

Voices = tuple[Optional[str], Optional[str]]  # voice names for [S1] and [S2]


@dataclass
class VoiceClip:
    """A voice as read by the driver: the clip's file bytes, or why it cannot be used."""

    name: str
    uri: str
    transcript: str
    audio: Optional[bytes] = None
    seconds: float = 0.0
    problem: Optional[str] = None


def load_voices(voices: dict[str, VoiceConfig], max_bytes: int) -> dict[str, VoiceClip]:
    """Read every configured clip (local path or URI). An unreadable clip is not the job's error:
    only the rows that name it fail, each saying why."""
    import soundfile as sf

    clips: dict[str, VoiceClip] = {}
    for name, voice in voices.items():
        clip = VoiceClip(name, voice.audio, _LEADING_TAG.sub("", voice.transcript).strip())
        data, problem = read_prompt(voice.audio, max_bytes)
        if problem:
            clip.problem = f"voice {name!r}: " + problem.replace("audio_prompt", "clip", 1)
        else:
            clip.audio = data
            clip.seconds = sf.info(io.BytesIO(data)).duration
            if clip.seconds > CLIP_WARN_S:
                log.warning("voice %r: its clip %s is %.1f s long; the seed's guideline for a voice prompt is "
                            "5-10 s (a longer prompt leaves less of the %s window for the script)",
                            name, voice.audio, clip.seconds, "35 s")
        clips[name] = clip
    return clips


def row_voices(cells: dict[str, Any]) -> tuple[Optional[Voices], list[str]]:
    """The row's (S1, S2) voice names from its voice columns, or None when it names none."""
    names: dict[str, Optional[str]] = {}
    problems = []
    for column in VOICE_COLUMNS:
        value = cells.get(column)
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if value is not None and not isinstance(value, str):
            problems.append(f"{column} must be a voice name (a string), got {type(value).__name__}")
            value = None
        names[column] = value.strip() if isinstance(value, str) and value.strip() else None
    if names["voice"] and names["voice_s1"]:
        problems.append("both voice and voice_s1 are set: voice means voice_s1, give one of them")
    s1, s2 = names["voice_s1"] or names["voice"], names["voice_s2"]
    return ((s1, s2) if s1 or s2 else None), problems


def voice_problems(voices: Optional[Voices], clips: dict[str, VoiceClip], audio_prompt: Optional[str]) -> list[str]:
    """What keeps a row's voices from being used (unknown names, unreadable clips, a second prompt)."""
    if voices is None:
        return []
    problems = []
    if audio_prompt:
        problems.append("the row names voices and an audio_prompt: give one or the other")
    for name in voices:
        if name is None:
            continue
        if name not in clips:
            known = ", ".join(sorted(clips)) or "none are configured"
            problems.append(f"voice {name!r} is not configured (known: {known}); add "
                            f"voices.{name}.audio=<clip> voices.{name}.transcript=\"...\"")
        elif clips[name].problem:
            problems.append(clips[name].problem)
    return problems


def voice_transcript(voices: Voices, transcripts: dict[str, str]) -> str:
    """The prompt transcript for these voices: each clip's words under its role's tag."""
    return " ".join(f"{tag} {transcripts[name]}" for tag, name in zip(("[S1]", "[S2]"), voices) if name)


class VoiceBook:
    """Named voices' prompts for one model: each clip is encoded once, on first use (thread-safe).

    ``encode`` turns a clip (a path or a file's bytes) into prompt codes; ``clips`` maps a name to
    (clip, transcript)."""

    def __init__(self, encode: Callable[[Any], Any], clips: dict[str, tuple[Any, str]]) -> None:
        self._encode = encode
        self._clips = dict(clips)
        self._codes: dict[str, Any] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(self._clips)

    def add(self, name: str, clip: Any, transcript: str) -> None:
        """Add or replace a voice (a replaced one is encoded again when next used)."""
        with self._lock:
            self._clips[name] = (clip, transcript)
            self._codes.pop(name, None)

    def prompt(self, voices: Voices) -> tuple[Any, str]:
        """(prompt codes, prompt transcript) for (S1, S2) voice names: the named voices' codes joined
        in role order, and their transcripts under [S1] / [S2]. Raises ValueError for an unknown name."""
        import numpy as np

        codes = []
        with self._lock:
            for name in voices:
                if name is None:
                    continue
                if name not in self._clips:
                    raise ValueError(f"no voice named {name!r} (known: {', '.join(sorted(self._clips)) or 'none'})")
                if name not in self._codes:
                    self._codes[name] = self._encode(self._clips[name][0])
                codes.append(self._codes[name])
            transcripts = {n: t for n, (_, t) in self._clips.items()}
        return np.concatenate(codes), voice_transcript(tuple(voices), transcripts)
