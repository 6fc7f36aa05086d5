"""Which scripts run in chunks, and the checks a script gets before any model loads.

The driver knows no model config, so the window is Dia's published one: 3,072 frames (about 35 s at
86 frames/s, prompt included) and 1,024 bytes of script.
"""
from __future__ import annotations

from typing import Callable, Optional

from dia_model import (END_TAG_BYTES, MAX_TAIL_S, SCRIPT_MAX_BYTES, WINDOW_S, DiaError, ScriptProblem, encode_script,
                       expected_seconds, split_script, validate_script)

from ..config import EndTagMode, GenerationConfig, LongFormMode

CHUNK_WINDOW_S = WINDOW_S - MAX_TAIL_S  # what a chunk may need after the longest carried-over tail
VOICE_CLIP_WARN_S = 10.0  # the seed's guideline for prompts: 5-10 s


def tag_room(gen: GenerationConfig) -> int:
    """Bytes the end tag may add to a script under this config."""
    return END_TAG_BYTES if gen.end_tag == EndTagMode.auto else 0


def is_long(gen: GenerationConfig, script: str) -> bool:
    """Whether this script (prompt transcript included) runs in chunks under ``generation.long_form``."""
    if gen.long_form == LongFormMode.on:
        return True
    if gen.long_form == LongFormMode.off:
        return False
    return over_window(script, end_tag=gen.end_tag == EndTagMode.auto)


def over_window(script: str, end_tag: bool = True) -> bool:
    """Whether a script is too long for one generation: over ~35 s of expected speech, or over the
    1,024-byte text limit (less the room an end tag takes)."""
    room = END_TAG_BYTES if end_tag else 0
    return len(encode_script(script)) > SCRIPT_MAX_BYTES - room or expected_seconds(script) > WINDOW_S


def script_checker(gen: GenerationConfig) -> Callable[[str], list[str]]:
    """``check(script) -> problems`` for one row: Dia's own checks, or for a long-form row the checks
    of each chunk (an empty turn, a turn with no sentence end under the window, the length cap)."""

    def check(script: str) -> list[str]:
        if not isinstance(script, str) or not is_long(gen, script):
            problems = validate_script(script, SCRIPT_MAX_BYTES - tag_room(gen))
            if gen.long_form == LongFormMode.off:
                problems = [p + " (or set generation.long_form=auto to generate it in chunks)"
                            if p.kind == ScriptProblem.TOO_LONG else p for p in problems]
            return problems
        problems = [p for p in validate_script(script, max_bytes=1 << 62)]
        if problems:
            return problems
        seconds = expected_seconds(script)
        if seconds > gen.max_script_seconds:
            return [f"script is ~{seconds:.0f} s of speech ({len(script.encode())} bytes), over "
                    f"generation.max_script_seconds={gen.max_script_seconds:g}: split it into several rows, "
                    "or raise the cap"]
        try:
            split_script(script, gen.chunk_seconds, SCRIPT_MAX_BYTES - tag_room(gen), CHUNK_WINDOW_S)
        except DiaError as e:
            return [str(e)]
        return []

    return check


def check_long_form_settings(gen: GenerationConfig) -> Optional[str]:
    """What is wrong with the job's long-form settings (None: fine)."""
    if not 1.0 <= gen.chunk_seconds <= CHUNK_WINDOW_S:
        return f"generation.chunk_seconds={gen.chunk_seconds:g} must be in [1, {CHUNK_WINDOW_S:g}] (default 20)"
    if not 0.0 <= gen.tail_seconds <= MAX_TAIL_S:
        return f"generation.tail_seconds={gen.tail_seconds:g} must be in [0, {MAX_TAIL_S:g}] (default 6)"
    if not gen.max_script_seconds > 0:
        return f"generation.max_script_seconds={gen.max_script_seconds:g} must be positive"
    return None
