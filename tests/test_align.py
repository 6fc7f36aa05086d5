"""Forced alignment on known answers: emissions built so the best CTC path is known (repeated tokens,
blanks, skipped blanks), checked against an exhaustive search, turn boundaries recovered exactly, and a
tiny random transformers CTC model end to end."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.quality.align import AlignmentError, CtcAligner, Turn, Vocabulary, ctc_align, script_turns, timed_turns

BLANK = 0


def emissions(path: list[int], vocab: int, sure: float = -0.01, other: float = -8.0) -> np.ndarray:
    """Log-probabilities where each frame is confident of ``path``'s token."""
    lp = np.full((len(path), vocab), other)
    lp[np.arange(len(path)), path] = sure
    return lp


def collapse(path: tuple[int, ...]) -> list[int]:
    out, prev = [], None
    for p in path:
        if p != prev and p != BLANK:
            out.append(p)
        prev = p
    return out


def brute_force(lp: np.ndarray, tokens: list[int]) -> np.ndarray:
    """The best path by trying every one (tiny cases only), as token spans."""
    best, best_path = -np.inf, None
    for path in itertools.product(range(lp.shape[1]), repeat=lp.shape[0]):
        if collapse(path) != tokens:
            continue
        score = lp[np.arange(len(path)), path].sum()
        if score > best:
            best, best_path = score, path
    spans, k, prev = [], -1, None
    for t, p in enumerate(best_path):
        if p != BLANK and p != prev:
            k += 1
            spans.append([t, t + 1])
        elif p != BLANK:
            spans[k][1] = t + 1
        prev = p
    return np.array(spans)


@pytest.mark.parametrize("path, tokens, spans", [
    ([0, 1, 1, 0, 1, 2, 2, 0], [1, 1, 2], [[1, 3], [4, 5], [5, 7]]),  # a repeat needs the blank between
    ([1, 2, 3], [1, 2, 3], [[0, 1], [1, 2], [2, 3]]),  # no blank at all
    ([0, 0, 3, 0, 0, 3, 3, 3, 0], [3, 3], [[2, 3], [5, 8]]),
    ([2, 2, 2, 2], [2], [[0, 4]]),
])
def test_the_best_path_of_designed_emissions_is_recovered(path, tokens, spans):
    assert ctc_align(emissions(path, 4), tokens, BLANK).tolist() == spans


def test_viterbi_equals_exhaustive_search_on_random_emissions():
    rng = np.random.default_rng(0)
    for tokens, frames in [([1, 1, 2], 6), ([2, 1, 2], 5), ([1], 4), ([1, 2, 1, 1], 7)]:
        for _ in range(4):
            lp = np.log(rng.dirichlet(np.ones(3), size=frames))
            assert ctc_align(lp, tokens, BLANK).tolist() == brute_force(lp, tokens).tolist(), (tokens, frames)


def test_too_few_frames_is_an_alignment_error():
    with pytest.raises(AlignmentError, match="too short"):
        ctc_align(emissions([1, 0, 1], 3)[:2], [1, 1], BLANK)  # two equal tokens need three frames


def test_turns_come_from_the_speaker_tags():
    turns = script_turns("Lead in. [S1] Hi there!  [S2] Oh,\nhello. (laughs) [S1] (sighs) [S2] Bye [S1] ")
    assert [(t.speaker, t.text) for t in turns] == [("S1", "Lead in."), ("S1", "Hi there!"),
                                                   ("S2", "Oh, hello. (laughs)"), ("S1", "(sighs)"), ("S2", "Bye")]


VOCAB = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")}}


def test_turn_boundaries_are_recovered_exactly():
    vocab = Vocabulary(VOCAB, blank=0)
    turns = [Turn("S1", "Hi, Ann!"), Turn("S2", "(laughs)"), Turn("S2", "Hello.")]
    # tokens: H I | A N N  |  H E L L O  (the laugh has none); frames chosen by hand, 20 ms each
    ids = {c: VOCAB[c] for c in "HIANELO|"}
    path = ([0, 0, ids["H"], ids["I"], 0, ids["|"], ids["A"], ids["A"], ids["N"], 0, ids["N"]]  # turn 1: frames 2-11
            + [0] * 5 + [ids["|"]] + [0] * 3  # a pause (where the laugh goes), then the delimiter
            + [ids["H"], ids["E"], ids["L"], 0, ids["L"], ids["O"], ids["O"]] + [0, 0])  # turn 3: frames 20-27
    out = timed_turns(turns, emissions(path, len(VOCAB)), vocab, frame_s=0.02)
    assert [(t.start_s, t.end_s) for t in out] == [(0.04, 0.22), (0.22, 0.4), (0.4, 0.54)]
    assert [t.text for t in out] == [t.text for t in turns]


def test_characters_outside_the_vocabulary_are_dropped_and_case_folded():
    vocab = Vocabulary(VOCAB, blank=0)
    assert vocab.tokens("Hé,  you’re (laughs) 42!") == [VOCAB["H"], VOCAB["E"], 2, VOCAB["Y"], VOCAB["O"], VOCAB["U"],
                                                     VOCAB["'"], VOCAB["R"], VOCAB["E"]]
    with pytest.raises(AlignmentError, match="no word"):
        timed_turns([Turn("S1", "(laughs) 123")], emissions([0, 0], len(VOCAB)), vocab, 0.02)


def test_a_tiny_random_ctc_model_aligns_end_to_end(tmp_path):
    from tiny_judges import tiny_asr

    aligner = CtcAligner(str(tiny_asr(tmp_path / "ctc")))
    rate = 44100
    audio = np.random.default_rng(1).normal(0, 0.1, rate * 3).astype(np.float32)
    script = "[S1] Hi there. [S2] Oh hello! (laughs) [S1] Bye."
    turns = aligner.align(audio, rate, script)
    assert [t.speaker for t in turns] == ["S1", "S2", "S1"]
    times = [(t.start_s, t.end_s) for t in turns]
    assert all(s is not None and 0 <= s < e <= 3.0 + 1e-6 for s, e in times), times
    assert all(times[k][1] <= times[k + 1][0] for k in range(len(times) - 1)), times  # in order, not overlapping
    with pytest.raises(AlignmentError):
        aligner.align(audio[: rate // 500], rate, script)  # 2 ms (two frames of this model) cannot hold the words
