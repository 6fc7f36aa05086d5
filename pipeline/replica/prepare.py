"""A planned row made ready for the engine (its prompt codes, its frame limit), or the reason it
cannot run; and the state a row carries while it is generated, judged and written."""
from __future__ import annotations

import math
import queue
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

from ..planning.rows import RowSpec
from ..quality.gates import retry_seed
from .results import RowResult, describe_error

if TYPE_CHECKING:
    from ..model.protocol import SpeechModel
    from .caches import PromptCache


@dataclass
class Prepared:
    """One row on its way through the replica: queued, seated in the engine, judged, written."""

    row: RowSpec
    max_new_frames: Optional[int]
    prompt: Any  # None or prompt codes
    prompt_frames: int
    outbox: "queue.Queue[RowResult]"  # where its RowResult goes (the run_unit call that brought it)
    transcript: Optional[str] = None  # the prompt's transcript (the row's own, or its voices')
    seated_at: float = 0.0
    attempt: int = 0  # quality retries: 0 is the row's own seed
    generation_s: float = 0.0  # over every attempt
    tries: list[int] = field(default_factory=list)  # seeds of the attempts judged so far
    best: Any = None  # (score, result, metrics, failures) of the best attempt so far

    @property
    def seed(self) -> int:
        return retry_seed(self.row.seed, self.attempt)


def prepare(row: RowSpec, outbox: "queue.Queue[RowResult]", model: "SpeechModel",
            prompts: "PromptCache") -> Union[Prepared, RowResult]:
    """A row ready for the engine, or the RowResult that says why it cannot run."""
    if row.problems:
        return RowResult(row.key, False, "; ".join(row.problems), refused=True)
    prompt, prompt_frames, transcript = None, 0, row.prompt_transcript
    try:
        if row.voices:
            prompt, transcript = prompts.voice_prompt(row.voices)
            prompt_frames = len(prompt)
        elif row.prompt_uri:
            try:
                prompt, prompt_frames = prompts.prompt(row.prompt_uri)
            except ValueError as e:  # the file's own problem, said as read_prompt says it
                return RowResult(row.key, False, str(e), seed=row.seed)
    except Exception as e:
        what = f"voices {row.voices}" if row.voices else f"audio_prompt {row.audio_prompt!r}"
        return RowResult(row.key, False, f"{what} cannot be used: {describe_error(e)}", seed=row.seed)
    limit = model.max_new_frames_limit(prompt_frames)
    max_new = row.max_new_frames
    if max_new is None and row.max_seconds is not None:
        max_new = max(1, math.ceil(row.max_seconds * model.frame_rate))
    if limit < 1:
        return RowResult(row.key, False, f"the audio prompt ({prompt_frames} frames) leaves no room in the "
                         f"model's {model.max_frames}-frame timeline", seed=row.seed,
                         prompt_frames=prompt_frames)
    if max_new is not None and max_new > limit:
        return RowResult(row.key, False, f"max_new_frames={max_new} is too large: at most {limit} after a "
                         f"{prompt_frames}-frame prompt", seed=row.seed, prompt_frames=prompt_frames)
    return Prepared(row, max_new, prompt, prompt_frames, outbox, transcript)
