"""Per-row settings: reading overrides from input columns and checking them before any model runs."""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Optional

from ..config import GenerationConfig
from .inputs import is_uri
from .voices import row_voices

MAX_SEED = 2**63 - 1
# Override columns: name -> (integer?, low, high). Ranges match what Dia.generate accepts.
OVERRIDES: dict[str, tuple[bool, float, float]] = {
    "seed": (True, 0, MAX_SEED),
    "cfg_scale": (False, 0.0, 100.0),
    "temperature": (False, 0.0, 100.0),
    "top_p": (False, 1e-6, 1.0),
    "top_k": (True, 1, 1 << 20),
    "max_new_frames": (True, 1, 1 << 20),
    "max_seconds": (False, 1e-3, 1e6),
}
PROMPT_COLUMNS = ("audio_prompt", "prompt_transcript")
MISSING_TEXT = "text is missing (null)"


@dataclass(slots=True)
class RowSpec:
    """Everything needed to generate one output row (one input row at one sweep point)."""

    key: str  # unique in the job: the resume key
    id: str
    shard: str
    row_index: int
    point: int  # index of the sweep point (0 without a sweep)
    sweep_point: Optional[str]  # e.g. "cfg_scale-2.0"; None without a sweep
    text: Optional[str]
    seed: int
    cfg_scale: float
    temperature: float
    top_p: float
    top_k: int
    max_new_frames: Optional[int]
    max_seconds: Optional[float]
    audio_prompt: Optional[str]  # as written in the input
    prompt_uri: Optional[str]  # resolved location (relative paths start at the shard's folder)
    prompt_transcript: Optional[str]
    audio_path: str  # relative to the job directory
    problems: list[str] = field(default_factory=list)  # found before generation: the row gets status=error
    long_form: bool = False  # generated in chunks that carry the voices over (generation.long_form)
    voices: Optional[tuple[Optional[str], Optional[str]]] = None  # named voices for [S1], [S2]


def derive_seed(job_seed: int, row_key: str) -> int:
    """A stable per-row seed from the job seed and the row's id (same row, same seed, on every run)."""
    digest = hashlib.sha256(f"{job_seed}\x00{row_key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFFFFFF


FLOAT_EXACT_LIMIT = 2**53  # beyond this a float cannot hold every integer


def _as_number(name: str, value: Any) -> tuple[Any, Optional[str]]:
    """An int, float or Decimal for a cell, exactly as written (strings are parsed as decimals, so
    "9007199254740993" stays itself); or a problem."""
    if isinstance(value, bool):
        return None, f"{name}={value!r} is not a number"
    if isinstance(value, (bytes, str)):
        text = (value.decode(errors="replace") if isinstance(value, bytes) else value).strip()
        try:
            number = Decimal(text)
        except InvalidOperation:
            return None, f"{name}={text!r} is not a number"
        return (number, None) if number.is_finite() else (None, f"{name}={text!r} is not a finite number")
    if isinstance(value, (int, Decimal)):
        return value, None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None, f"{name}={value!r} is not a number"
    return (number, None) if math.isfinite(number) else (None, f"{name}={value!r} is not a finite number")


def parse_number(name: str, value: Any) -> tuple[Any, Optional[str]]:
    """(value, problem) for an override cell; None/NaN/blank mean "use the job default".

    Integer settings (seed, top_k, max_new_frames) are parsed exactly: a string such as
    "9223372036854775807" is that integer, "3.5" is an error, and a float column's value beyond 2**53
    (where floats skip integers) is refused rather than silently rounded.
    """
    integer, lo, hi = OVERRIDES[name]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, None
    if isinstance(value, (bytes, str)) and not (value.strip() if isinstance(value, str) else value.strip()):
        return None, None
    number, problem = _as_number(name, value)
    if problem:
        return None, problem
    if not integer:
        number = float(number)
        if not lo <= number <= hi:
            return None, f"{name}={value!r} is out of range [{lo}, {hi}]"
        return number, None
    if isinstance(number, float):
        if not number.is_integer():
            return None, f"{name}={value!r} is not an integer"
        if abs(number) > FLOAT_EXACT_LIMIT:
            return None, (f"{name}={value!r} is a floating-point number beyond 2**53, where floats cannot hold "
                          "every integer: store it as an integer (or a string of digits)")
    elif isinstance(number, Decimal):
        if number != number.to_integral_value():
            return None, f"{name}={value!r} is not an integer"
        if number.adjusted() > 30:  # far out of range; int() of it could be huge
            return None, f"{name}={value!r} is out of range [{lo}, {hi}]"
    number_i = int(number)
    if not lo <= number_i <= hi:
        return None, f"{name}={value!r} is out of range [{lo}, {hi}]"
    return number_i, None


def _text_cell(name: str, value: Any) -> tuple[Optional[str], Optional[str]]:
    if value is None:
        return None, None
    if isinstance(value, bytes):
        try:
            return value.decode(), None
        except UnicodeDecodeError:
            return None, f"{name} is not valid UTF-8"
    if isinstance(value, str):
        return value, None
    return None, f"{name} must be a string, got {type(value).__name__}"


def resolve_prompt_uri(prompt: str, shard_folder: str) -> str:
    """Absolute paths and URIs stay; relative paths start at the folder of the shard that names them."""
    if is_uri(prompt) or prompt.startswith("file://") or os.path.isabs(prompt):
        return prompt
    return f"{shard_folder.rstrip('/')}/{prompt}"


@dataclass
class ParsedCells:
    """One input row's cells, parsed and checked once (a sweep reuses them for every point)."""

    text: Optional[str]
    values: dict[str, Any]  # override name -> number or None
    audio_prompt: Optional[str]
    prompt_transcript: Optional[str]
    problems: list[str]
    voices: Optional[tuple[Optional[str], Optional[str]]] = None

    @property
    def script(self) -> Optional[str]:
        """The text the model reads: the prompt transcript (if any), then the row's text."""
        if self.text is None or not self.prompt_transcript:
            return self.text
        return f"{self.prompt_transcript.rstrip()} {self.text.lstrip()}"


def parse_cells(cells: dict[str, Any], check_script: Callable[[str], list[str]]) -> ParsedCells:
    """Parse a row's text, overrides, prompt and voice columns; collect every problem instead of raising."""
    problems: list[str] = []
    text, problem = _text_cell("text", cells.get("text"))
    problems += [problem] if problem else []
    values: dict[str, Any] = {}
    for name in OVERRIDES:
        values[name], problem = parse_number(name, cells.get(name))
        problems += [problem] if problem else []
    prompt, problem = _text_cell("audio_prompt", cells.get("audio_prompt"))
    problems += [problem] if problem else []
    transcript, problem = _text_cell("prompt_transcript", cells.get("prompt_transcript"))
    problems += [problem] if problem else []
    voices, voice_problems = row_voices(cells)
    problems += voice_problems
    parsed = ParsedCells(text, values, prompt if prompt and prompt.strip() else None, transcript, problems, voices)
    if text is None:
        if not any(p.startswith("text") for p in problems):
            problems.append(MISSING_TEXT)
    else:
        problems += check_script(parsed.script)
    return parsed


def _length_cap(parsed: ParsedCells, sweep_values: dict[str, Any],
                defaults: GenerationConfig) -> tuple[Optional[int], Optional[float]]:
    """(max_new_frames, max_seconds), at most one set: sweep, then the row's own, then the job's."""
    row = parsed.values
    if "max_new_frames" in sweep_values:
        return int(sweep_values["max_new_frames"]), None
    if row["max_new_frames"] is not None:
        return row["max_new_frames"], None
    if row["max_seconds"] is not None:
        return None, row["max_seconds"]
    if defaults.max_new_frames is not None:
        return int(defaults.max_new_frames), None
    return None, None if defaults.max_seconds is None else float(defaults.max_seconds)


def make_row(
    *,
    parsed: ParsedCells,
    key: str,
    row_id: str,
    shard: str,
    shard_folder: str,
    row_index: int,
    point: int,
    sweep_point: Optional[str],
    sweep_values: dict[str, Any],
    defaults: GenerationConfig,
    job_seed: int,
    seed_key: str,
    audio_path: str,
    long_form: bool = False,
) -> RowSpec:
    """One RowSpec: a parsed row at one sweep point (sweep values beat the row's, which beat the job's)."""

    def pick(name: str) -> Any:
        if name in sweep_values:
            return sweep_values[name]
        value = parsed.values[name]
        return value if value is not None else getattr(defaults, name)

    # generation.seed is the job seed, not a row default: rows without their own get a derived one
    seed = sweep_values.get("seed", parsed.values["seed"])
    if seed is None:
        seed = derive_seed(job_seed, seed_key)
    max_new_frames, max_seconds = _length_cap(parsed, sweep_values, defaults)
    prompt = parsed.audio_prompt
    return RowSpec(
        key=key, id=row_id, shard=shard, row_index=row_index, point=point, sweep_point=sweep_point,
        text=parsed.text, seed=int(seed), cfg_scale=float(pick("cfg_scale")),
        temperature=float(pick("temperature")), top_p=float(pick("top_p")), top_k=int(pick("top_k")),
        max_new_frames=max_new_frames, max_seconds=max_seconds, audio_prompt=prompt,
        prompt_uri=resolve_prompt_uri(prompt, shard_folder) if prompt else None,
        prompt_transcript=parsed.prompt_transcript, audio_path=audio_path, problems=list(parsed.problems),
        long_form=long_form, voices=parsed.voices,
    )
