"""Per-turn segments of a dialogue row: its turns from the script, and their times from forced alignment.

Dia returns one mixed clip per dialogue and no timing. Training formats want one supervision per
speaker turn, so the script is split at its speaker tags (``script_turns``) and, when an alignment
model is configured (``quality.align_model``: any transformers CTC checkpoint, e.g. a wav2vec2 or
MMS model, a folder or a Hub id), the script's characters are force-aligned to the audio:

1. the CTC model gives log-probabilities per audio frame (~20 ms) over its character vocabulary;
2. each turn's text becomes vocabulary tokens (case folded, accents kept when the vocabulary has
   them, spaces as the word delimiter, anything else dropped; non-verbals such as ``(laughs)`` are
   not words and are dropped);
3. ``ctc_align`` finds the single best CTC path (Viterbi) that emits exactly those tokens, blanks
   allowed between them and required between two equal tokens;
4. a turn starts at its first token's first frame and ends after its last token's last frame. A
   turn with no alignable token (only a non-verbal) takes the gap between its neighbours.

Rows whose alignment cannot be computed (audio too short for the tokens, too long to align in
memory) keep their turns without times, and say why.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

import numpy as np

from .judges import load_error

_TAG = re.compile(r"\[S([12])\]")
_NON_VERBAL = re.compile(r"\([^)]*\)")
MAX_TRELLIS = 64 << 20  # frames x states of one alignment (its back-pointers take one byte each)
ALIGN_RATE = 16000  # what CTC speech models read


class AlignmentError(ValueError):
    """This row's script cannot be aligned to its audio (the message says why)."""


@dataclass(frozen=True)
class Turn:
    """One speaker turn: the tag as written (``S1``/``S2``), its text, and its times when aligned."""

    speaker: str
    text: str
    start_s: Optional[float] = None
    end_s: Optional[float] = None

    def as_dict(self) -> dict[str, Any]:
        return {"speaker": self.speaker, "text": self.text, "start_s": self.start_s, "end_s": self.end_s}


def script_turns(script: str) -> list[Turn]:
    """The script's turns in order; text before the first tag (if any) belongs to ``S1``, as Dia reads it."""
    turns: list[Turn] = []
    pieces = _TAG.split(script or "")
    lead = pieces[0].strip()
    if lead:
        turns.append(Turn("S1", " ".join(lead.split())))
    for k in range(1, len(pieces), 2):
        text = " ".join(pieces[k + 1].split())
        if text:
            turns.append(Turn(f"S{pieces[k]}", text))
    return turns


def ctc_align(log_probs: np.ndarray, tokens: Sequence[int], blank: int) -> np.ndarray:
    """The Viterbi CTC alignment of ``tokens`` to ``log_probs`` (frames x vocabulary).

    Returns an int array (len(tokens), 2): each token's first frame and its last frame + 1. The path
    runs over the usual extended sequence (blank, t1, blank, t2, ..., tn, blank): each frame stays in
    its state or moves one on, or two on when that skips a blank between two different tokens."""
    lp = np.asarray(log_probs, dtype=np.float64)
    frames = lp.shape[0]
    n = len(tokens)
    if n == 0:
        return np.zeros((0, 2), dtype=np.int64)
    labels = np.full(2 * n + 1, blank, dtype=np.int64)
    labels[1::2] = np.asarray(tokens, dtype=np.int64)
    states = len(labels)
    needed = n + sum(1 for a, b in zip(tokens, tokens[1:]) if a == b)  # a repeat needs a blank between
    if frames < needed:
        raise AlignmentError(f"{frames} audio frames cannot hold {needed} tokens (the audio is too short "
                             "for its script)")
    if frames * states > MAX_TRELLIS:
        raise AlignmentError(f"{frames} frames x {states} states is over the {MAX_TRELLIS >> 20} M trellis "
                             "limit (align shorter rows)")
    skip = np.zeros(states, dtype=bool)  # state s may be reached from s - 2
    skip[3::2] = labels[3::2] != labels[1:-2:2]
    back = np.zeros((frames, states), dtype=np.int8)
    neg = -np.inf
    score = np.full(states, neg)
    score[0] = lp[0, labels[0]]
    score[1] = lp[0, labels[1]]
    for t in range(1, frames):
        one = np.concatenate(([neg], score[:-1]))
        two = np.concatenate(([neg, neg], score[:-2]))
        two[~skip] = neg
        choice = np.stack((score, one, two))
        step = np.argmax(choice, axis=0)
        back[t] = step
        score = choice[step, np.arange(states)] + lp[t, labels]
    end = states - 1 if score[states - 1] >= score[states - 2] else states - 2
    if not np.isfinite(score[end]):
        raise AlignmentError("no CTC path emits this script")
    path = np.empty(frames, dtype=np.int64)
    s = end
    for t in range(frames - 1, -1, -1):
        path[t] = s
        s -= back[t, s]
    spans = np.zeros((n, 2), dtype=np.int64)
    token_of = (path - 1) // 2
    on_token = path % 2 == 1
    idx = np.nonzero(on_token)[0]
    which = token_of[idx]
    spans[:, 0] = frames
    np.minimum.at(spans[:, 0], which, idx)
    np.maximum.at(spans[:, 1], which, idx + 1)
    return spans


class Vocabulary:
    """Characters -> token ids of a CTC character vocabulary (e.g. wav2vec2's: upper case, ``|`` between words)."""

    def __init__(self, vocab: dict[str, int], blank: int, word_delimiter: Optional[str] = "|") -> None:
        self.ids = dict(vocab)
        self.blank = blank
        self.space = self.ids.get(word_delimiter) if word_delimiter else None

    def _char(self, ch: str) -> Optional[int]:
        for form in (ch, ch.lower(), ch.upper()):
            if form in self.ids and self.ids[form] != self.blank:
                return self.ids[form]
        plain = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        if plain != ch and plain:
            return self._char(plain) if len(plain) == 1 else None
        return None

    def tokens(self, text: str) -> list[int]:
        """The alignable tokens of one turn: words separated by the delimiter, no leading/trailing one."""
        out: list[int] = []
        for word in _NON_VERBAL.sub(" ", text).replace("\u2019", "'").split():
            ids = [i for i in (self._char(c) for c in word) if i is not None]
            if not ids:
                continue
            if out and self.space is not None:
                out.append(self.space)
            out.extend(ids)
        return out


def timed_turns(turns: list[Turn], log_probs: np.ndarray, vocab: Vocabulary, frame_s: float) -> list[Turn]:
    """``turns`` with start/end times from aligning their tokens (all turns at once) to ``log_probs``."""
    tokens: list[int] = []
    owner: list[int] = []  # the turn of each token; -1 for the delimiters between turns
    for k, turn in enumerate(turns):
        ids = vocab.tokens(turn.text)
        if not ids:
            continue
        if tokens and vocab.space is not None:
            tokens.append(vocab.space)
            owner.append(-1)
        tokens.extend(ids)
        owner.extend([k] * len(ids))
    if not tokens:
        raise AlignmentError("the script has no word the alignment model's vocabulary can spell")
    spans = ctc_align(log_probs, tokens, vocab.blank)
    owners = np.asarray(owner)
    times: list[Optional[tuple[float, float]]] = []
    for k in range(len(turns)):
        mine = spans[owners == k]
        times.append(None if not len(mine) else (round(float(mine[0, 0] * frame_s), 3),
                                                  round(float(mine[-1, 1] * frame_s), 3)))
    for k, t in enumerate(times):  # a non-verbal-only turn sits in the gap between its neighbours
        if t is None:
            before = next((times[j][1] for j in range(k - 1, -1, -1) if times[j] is not None), None)
            after = next((times[j][0] for j in range(k + 1, len(times)) if times[j] is not None), None)
            if before is not None and after is not None and after >= before:
                times[k] = (before, after)
    return [replace(turn, start_s=t[0], end_s=t[1]) if t else turn for turn, t in zip(turns, times)]


class CtcAligner:
    """A transformers CTC model (``AutoModelForCTC``) and its processor, used for forced alignment."""

    def __init__(self, source: str, device: str = "cpu") -> None:
        try:
            from transformers import AutoModelForCTC, AutoProcessor

            self.processor = AutoProcessor.from_pretrained(source)
            self.model = AutoModelForCTC.from_pretrained(source).to(device).eval()
        except Exception as e:  # the judges' message: what failed, and how to bring the model offline
            raise load_error("quality.align_model", source, e) from e
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        blank = self.model.config.pad_token_id
        if blank is None:
            blank = tokenizer.pad_token_id
        self.vocab = Vocabulary(tokenizer.get_vocab(), int(blank), getattr(tokenizer, "word_delimiter_token", "|"))
        self.device = device

    def log_probs(self, audio: np.ndarray, rate: int) -> tuple[np.ndarray, float]:
        """(frames x vocabulary log-probabilities, seconds per frame) of one clip."""
        import torch

        from .judges import resample

        wave = resample(audio, rate)
        extractor = getattr(self.processor, "feature_extractor", self.processor)
        inputs = extractor(wave, sampling_rate=ALIGN_RATE, return_tensors="pt")
        with torch.inference_mode():
            logits = self.model(inputs["input_values"].to(self.device)).logits[0]
        lp = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
        return lp, (len(wave) / ALIGN_RATE) / max(1, lp.shape[0])

    def align(self, audio: np.ndarray, rate: int, script: str) -> list[Turn]:
        """The script's turns, timed; raises ``AlignmentError`` when this row cannot be aligned."""
        turns = script_turns(script)
        if not turns:
            return []
        lp, frame_s = self.log_probs(audio, rate)
        return timed_turns(turns, lp, self.vocab, frame_s)


def speaker_id(tag: str, voices: tuple[Optional[str], Optional[str]], row_key: str) -> str:
    """A stable speaker id for a turn: the voice name when the row used a named voice for that role,
    else the row's key and the tag (an unnamed voice is that take's own)."""
    voice = voices[0] if tag == "S1" else voices[1]
    return voice if voice else f"{row_key}:{tag}"
