"""Scripts -> encoder input bytes, and the checks that catch bad scripts early.

The encoder reads UTF-8 bytes; ``[S1]``/``[S2]`` become bytes 0x01/0x02 and 0x00 is
padding.  The reference silently truncates at 1024 bytes and lets raw 0x00-0x02
bytes collide with padding and speaker tokens; we refuse such scripts instead.
"""

from __future__ import annotations

import re

import torch

from .errors import ScriptProblem
from .limits import SCRIPT_MAX_BYTES

SPEAKER_TAGS = {b"[S1]": b"\x01", b"[S2]": b"\x02"}
_TAG_LIKE = re.compile(r"\[\s*[sS]\s*\d+\s*\]")


def encode_script(text: str) -> bytes:
    data = text.encode("utf-8")
    for tag, token in SPEAKER_TAGS.items():
        data = data.replace(tag, token)
    return data


def validate_script(text: object, max_bytes: int = SCRIPT_MAX_BYTES) -> list[ScriptProblem]:
    """Every problem that would stop ``text`` from being generated; ``[]`` when fine (each a
    :class:`ScriptProblem`: its message, and its ``kind``)."""
    if not isinstance(text, str):
        return [ScriptProblem(f"script must be a string, got {type(text).__name__}", ScriptProblem.NOT_A_STRING)]
    if not text.strip():
        return [ScriptProblem("script is empty", ScriptProblem.EMPTY)]
    problems: list[ScriptProblem] = []
    for byte, meaning in ((0, "padding"), (1, "the [S1] token"), (2, "the [S2] token")):
        at = text.find(chr(byte))
        if at >= 0:
            problems.append(ScriptProblem(
                f"script contains the raw control character 0x{byte:02x} at position {at}, which the model "
                f"would read as {meaning}; remove it", ScriptProblem.CONTROL_CHARACTER))
    unknown = sorted({m.group(0) for m in _TAG_LIKE.finditer(text)} - {"[S1]", "[S2]"})
    if unknown:
        problems.append(ScriptProblem(
            f"unknown speaker tag(s) {', '.join(unknown)}: Dia knows exactly [S1] and [S2] (upper case)",
            ScriptProblem.UNKNOWN_TAG))
    n = len(encode_script(text))
    if n > max_bytes:
        problems.append(ScriptProblem(
            f"script is {n} bytes after mapping [S1]/[S2], over the model's limit of {max_bytes}; "
            "shorten it or split it into several rows (about 5-20 s of speech per row works best)",
            ScriptProblem.TOO_LONG))
    return problems


def text_batch(scripts: list[bytes], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest script in the batch (identical logits to padding to 1024).

    Returns byte ids [B, S] (int64) and the padding mask [B, S] (True = real text).
    """
    longest = max(1, max(len(s) for s in scripts))
    ids = torch.zeros(len(scripts), longest, dtype=torch.long)
    for i, s in enumerate(scripts):
        if s:
            ids[i, : len(s)] = torch.frombuffer(bytearray(s), dtype=torch.uint8).long()
    ids = ids.to(device)
    return ids, ids != 0
