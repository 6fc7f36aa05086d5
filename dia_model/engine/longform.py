"""Long scripts in chunks, with each chunk's voices carried into the next.

Dia holds one window of 3,072 frames (about 35 s) and sounds best on 5-20 s of speech per call;
longer text is rushed or cut.  A long script is therefore split at speaker turns (inside a turn only
when the turn alone is too long, then at sentence ends) into chunks of at most ``chunk_seconds`` of
expected speech.  Chunk k+1 is prompted with the end of chunk k's generated codes (about
``tail_seconds``, cut at a turn boundary, preferring a tail in which every speaker of the chunk speaks)
plus the transcript of that tail, so the model goes on in the same voices.  The chunks' new codes are
joined in order and decoded once: the codec's receptive field spans the joins, so there is no
repeated prompt audio, no crossfade and no click.

Where a turn boundary falls in the audio is not known (there is no aligner); it is estimated from
the share of the chunk's text before it, scaled to the frames the chunk actually made.

Pure bookkeeping: :class:`LongForm` says which request to run next and how to assemble the result;
``loop.py`` runs the requests.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..config import DiaConfig
from ..errors import DiaError
from ..limits import END_TAG_BYTES, MAX_TAIL_S
from ..types import ChunkInfo, GenerationResult, Request
from .timeline import max_new_frames_limit

# Expected speech rate in UTF-8 bytes of script per second (speaker tags excluded). A 3-minute
# dialogue is about 2,500 bytes of script, i.e. ~14 B/s; only used to size chunks and tails.
SPEECH_BYTES_PER_S = 14.0
TAIL_RANGE = (1 / 3, 5 / 3)  # tails from 1/3 to 5/3 of tail_seconds count as near it (6 s: 2-10 s)

_TAG = re.compile(r"\[S[12]\]")
_SENTENCE_END = re.compile(r"(?<=[.!?\u2026])[\"'\u201d)\]]*\s+")
_SEED_STEP = 0x9E3779B97F4A7C15  # chunk k's seed: the row's seed moved k golden-ratio steps


@dataclass(frozen=True)
class Turn:
    """One speaker's stretch of script (``speaker`` is ``[S1]``/``[S2]``, or "" before any tag)."""

    speaker: str
    text: str

    @property
    def script(self) -> str:
        return f"{self.speaker} {self.text}".strip()

    @property
    def seconds(self) -> float:
        return expected_seconds(self.text)


def expected_seconds(text: str) -> float:
    """Seconds of speech a script is expected to take (bytes of text without speaker tags / rate)."""
    return len(_TAG.sub("", text).strip().encode("utf-8")) / SPEECH_BYTES_PER_S


def parse_turns(text: str) -> list[Turn]:
    """The script's turns in order. Raises DiaError on an empty turn (``[S1] [S2] Hi``)."""
    turns: list[Turn] = []
    marks = list(_TAG.finditer(text))
    head = text[: marks[0].start()] if marks else text
    if head.strip():
        turns.append(Turn("", " ".join(head.split())))
    for i, m in enumerate(marks):
        body = text[m.end(): marks[i + 1].start() if i + 1 < len(marks) else len(text)]
        body = " ".join(body.split())
        if not body:
            raise DiaError(f"turn {len(turns) + 1} ({m.group(0)} at character {m.start()}) is empty: "
                           "every speaker tag needs text after it")
        turns.append(Turn(m.group(0), body))
    if not turns:
        raise DiaError("script is empty")
    return turns


def _sentences(turn: Turn) -> list[Turn]:
    return [Turn(turn.speaker, s) for s in _SENTENCE_END.split(turn.text) if s.strip()]


def split_script(text: str, chunk_seconds: float, max_chunk_bytes: int, window_seconds: float) -> list[list[Turn]]:
    """Chunks of whole turns, each at most ``chunk_seconds`` of expected speech where the turns allow.

    A turn longer than ``chunk_seconds`` is cut at sentence ends; a sentence that alone is over the
    window (``window_seconds``, or ``max_chunk_bytes``) is refused: nothing is silently truncated.
    """
    if not chunk_seconds > 0:
        raise DiaError(f"chunk_seconds must be positive, got {chunk_seconds!r}")
    pieces: list[Turn] = []
    for turn in parse_turns(text):
        if turn.seconds <= chunk_seconds:
            pieces.append(turn)
            continue
        group: list[Turn] = []
        for sentence in _sentences(turn):
            if group and expected_seconds(" ".join(t.text for t in group + [sentence])) > chunk_seconds:
                pieces.append(Turn(turn.speaker, " ".join(t.text for t in group)))
                group = []
            group.append(sentence)
        pieces.append(Turn(turn.speaker, " ".join(t.text for t in group)))
    for piece in pieces:
        size = len(piece.script.encode("utf-8"))
        if piece.seconds > window_seconds or size > max_chunk_bytes:
            raise DiaError(
                f"a {piece.speaker or 'leading'} turn cannot be split under the model's window: "
                f"{piece.text[:60]!r}... is {size} bytes (~{piece.seconds:.0f} s of speech) with no sentence end "
                f"inside, over {max_chunk_bytes} bytes / {window_seconds:.0f} s; add sentence ends (. ! ?)"
            )
    chunks: list[list[Turn]] = [[]]
    for piece in pieces:
        current = chunks[-1]
        joined = " ".join(t.script for t in current + [piece])
        if current and (expected_seconds(joined) > chunk_seconds or len(joined.encode("utf-8")) > max_chunk_bytes):
            chunks.append([piece])
        else:
            current.append(piece)
    return chunks


def join_turns(turns: list[Turn]) -> str:
    return " ".join(t.script for t in turns)


def end_tag(text: str) -> str | None:
    """The seed's remedy for a cut-off last word: the second-to-last speaker's tag, to append.
    None where it does not apply (fewer than two turns, or the script already ends with a tag)."""
    tags = _TAG.findall(text)
    if len(tags) < 2 or _TAG.search(text.rstrip()[-4:]):
        return None
    return tags[-2]


def with_end_tag(text: str) -> tuple[str, bool]:
    tag = end_tag(text)
    return (f"{text.rstrip()} {tag}", True) if tag else (text, False)


def choose_tail(turns: list[Turn], frames: int, frame_rate: float, tail_seconds: float,
                max_text_bytes: int) -> tuple[int, str]:
    """(tail frames, tail transcript) to prompt the next chunk with, cut at a turn or sentence boundary.

    Boundaries are placed in the audio by the share of text before them. Among tails within
    ``TAIL_RANGE`` of ``tail_seconds`` (and at most ``MAX_TAIL_S``) whose transcript fits
    ``max_text_bytes``, one in which every speaker of the chunk speaks is preferred, then the one
    nearest ``tail_seconds``. Where none is in range, the nearest that fits is taken (a chunk shorter
    than the range gives its whole self).
    """
    pieces = [s for t in turns for s in _sentences(t)] or turns
    weights = np.array([max(len(p.text.encode("utf-8")), 1) for p in pieces], dtype=np.float64)
    starts = np.concatenate([[0.0], np.cumsum(weights)[:-1]]) / weights.sum()  # share of text before piece j
    speakers = {p.speaker for p in pieces}
    target = tail_seconds * frame_rate
    low, high = tail_seconds * TAIL_RANGE[0], min(MAX_TAIL_S, tail_seconds * TAIL_RANGE[1])
    best: tuple[tuple[float, ...], int, str] | None = None
    for j in range(len(pieces)):
        tail_frames = int(round(frames * (1.0 - starts[j])))
        transcript = join_turns(_merge(pieces[j:]))
        if tail_frames < 1 or len(transcript.encode("utf-8")) > max_text_bytes:
            continue
        seconds = tail_frames / frame_rate
        in_range = low <= seconds <= high or (j == 0 and seconds < low)
        covers = {p.speaker for p in pieces[j:]} == speakers
        key = (not in_range, not covers, abs(tail_frames - target))
        if best is None or key < best[0]:
            best = (key, tail_frames, transcript)
    if best is None:
        return 0, ""
    return best[1], best[2]


def _merge(pieces: list[Turn]) -> list[Turn]:
    """Adjacent sentences of one speaker back into one turn (one tag each)."""
    out: list[Turn] = []
    for p in pieces:
        if out and out[-1].speaker == p.speaker:
            out[-1] = Turn(p.speaker, f"{out[-1].text} {p.text}")
        else:
            out.append(p)
    return out


def chunk_seed(seed: int, k: int) -> int:
    return (seed + k * _SEED_STEP) % (1 << 63)


@dataclass(eq=False)
class ChunkId:
    """The id a chunk's internal request carries: which long-form run, which chunk."""

    run: "LongForm"
    index: int


@dataclass(eq=False)
class LongForm:
    """One long-form request on its way through the chunks."""

    request: Request
    chunks: list[list[Turn]]
    seed: int
    frame_rate: float
    text_limit: int
    codes: list[np.ndarray] = field(default_factory=list)
    info: list[ChunkInfo] = field(default_factory=list)
    prompt_texts: list[str | None] = field(default_factory=list)  # the transcript each chunk was given
    end_tag_applied: bool = False

    @classmethod
    def start(cls, req: Request, cfg: DiaConfig, frame_rate: float) -> "LongForm":
        """Split the request's script for a model of config ``cfg``; raises DiaError with what to fix."""
        if not isinstance(req.text, str):
            raise DiaError(f"script must be a string, got {type(req.text).__name__}")
        if not isinstance(req.chunk_seconds, (int, float)) or not 1.0 <= req.chunk_seconds <= 60.0:
            raise DiaError(f"chunk_seconds={req.chunk_seconds!r} must be a number in [1, 60]")
        if not isinstance(req.tail_seconds, (int, float)) or not 0.0 <= req.tail_seconds <= MAX_TAIL_S:
            raise DiaError(f"tail_seconds={req.tail_seconds!r} must be a number in [0, {MAX_TAIL_S:g}]")
        limit = cfg.text_length - (END_TAG_BYTES if req.end_tag else 0)
        transcript = len(req.prompt_transcript.encode("utf-8")) + 1 if isinstance(req.prompt_transcript, str) else 0
        window = max_new_frames_limit(cfg, int(MAX_TAIL_S * frame_rate)) / frame_rate
        chunks = split_script(req.text, float(req.chunk_seconds), limit - transcript, window)
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        return cls(req, chunks, int(seed), frame_rate, limit)

    def chunk_request(self, k: int, prompt: Any, transcript: str | None) -> Request:
        text = join_turns(self.chunks[k])
        applied = False
        if self.request.end_tag:
            text, applied = with_end_tag(text)
        self.end_tag_applied = self.end_tag_applied or applied
        self.prompt_texts.append(transcript)
        seed = self.seed if k == 0 else chunk_seed(self.seed, k)
        return replace(self.request, id=ChunkId(self, k), text=text, seed=seed, audio_prompt=prompt,
                       prompt_transcript=transcript, long_form=False, end_tag=False)

    def first(self) -> Request:
        return self.chunk_request(0, self.request.audio_prompt, self.request.prompt_transcript)

    def finished(self, result: GenerationResult) -> Request | None:
        """Record chunk ``len(self.codes)``; the next chunk's request, or None when all are done."""
        k = len(self.codes)
        start = sum(len(c) for c in self.codes)
        self.codes.append(result.codes)
        self.info.append(ChunkInfo(text=join_turns(self.chunks[k]), frames=len(result.codes), start_frame=start,
                                   prompt_frames=result.prompt_frames, prompt_text=self.prompt_texts[k], seed=result.seed,
                                   ended_by_eos=result.ended_by_eos))
        if k + 1 == len(self.chunks):
            return None
        room = self.text_limit - len(join_turns(self.chunks[k + 1]).encode("utf-8")) - 1
        tail, transcript = choose_tail(self.chunks[k], len(result.codes), self.frame_rate,
                                       self.request.tail_seconds, room)
        if tail == 0 or self.request.tail_seconds == 0:
            return self.chunk_request(k + 1, None, None)
        return self.chunk_request(k + 1, result.codes[-tail:], transcript)

    def result(self, template: GenerationResult) -> GenerationResult:
        """The whole script's result: the chunks' codes joined, ``chunks`` saying where each lies."""
        codes = np.concatenate(self.codes) if self.codes else template.codes[:0]
        return replace(template, codes=codes, ended_by_eos=self.info[-1].ended_by_eos, seed=self.seed,
                       prompt_frames=self.info[0].prompt_frames, id=self.request.id, audio=None,
                       chunks=list(self.info), end_tag_applied=self.end_tag_applied)


__all__ = ["LongForm", "ChunkId", "split_script", "parse_turns", "expected_seconds", "end_tag",
           "with_end_tag", "choose_tail", "SPEECH_BYTES_PER_S"]
