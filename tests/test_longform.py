"""Long-form generation: split points, voice carry-over through the previous chunk's tail, stitching,
chunks interleaved with short rows in stream(), and the end tag."""

import re

import numpy as np
import pytest

from dia_model import Dia, DiaError, Request, StreamStats, make_tiny_checkpoint
from dia_model.engine.longform import Turn, choose_tail, end_tag, expected_seconds, parse_turns, split_script

SENTENCE = "This is a sentence of an ordinary dialogue turn, said at an easy pace."  # ~70 bytes, ~5 s


def dialogue(turns: int, sentences: int = 1) -> str:
    return " ".join(f"[S{1 + i % 2}] " + " ".join([SENTENCE] * sentences) for i in range(turns))


@pytest.fixture(scope="module")
def dia(tmp_path_factory):
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-longform"))
    return Dia.from_pretrained(folder, device="cpu")


def norm(text: str) -> str:
    return " ".join(text.split())


# -- splitting -------------------------------------------------------------------------------------
def test_chunks_are_whole_turns_under_chunk_seconds():
    script = dialogue(7)
    chunks = split_script(script, chunk_seconds=12, max_chunk_bytes=1024, window_seconds=25)
    assert [len(c) for c in chunks] == [2, 2, 2, 1]  # two ~5 s turns fit 12 s, three do not
    assert all(expected_seconds(" ".join(t.script for t in c)) <= 12 for c in chunks)
    assert norm(" ".join(t.script for c in chunks for t in c)) == norm(script)
    assert [t.speaker for c in chunks for t in c] == ["[S1]", "[S2]"] * 3 + ["[S1]"]


def test_a_turn_too_long_alone_is_cut_at_sentence_ends_and_keeps_its_tag():
    long_turn = "[S2] " + " ".join(f"Sentence number {i} goes on for a little while here." for i in range(12))
    chunks = split_script("[S1] Hello there. " + long_turn, chunk_seconds=10, max_chunk_bytes=1024,
                          window_seconds=25)
    pieces = [t for c in chunks for t in c]
    assert pieces[0] == Turn("[S1]", "Hello there.")
    assert all(t.speaker == "[S2]" for t in pieces[1:]) and len(pieces) > 3
    assert all(t.text.endswith(".") for t in pieces)  # cut only at sentence ends
    assert all(t.seconds <= 10 for t in pieces)


def test_what_cannot_be_split_is_refused_with_what_to_fix():
    with pytest.raises(DiaError, match="no sentence end"):
        split_script("[S1] " + "word " * 200, chunk_seconds=10, max_chunk_bytes=1024, window_seconds=25)
    with pytest.raises(DiaError, match=r"turn 2 \(\[S2\] .*is empty"):
        parse_turns("[S1] Hi there. [S2]   [S1] Bye.")
    with pytest.raises(DiaError, match="empty"):
        parse_turns("   ")


def test_the_tail_is_cut_at_a_boundary_near_its_target_and_hears_both_speakers():
    turns = [Turn("[S1]", "a" * 100), Turn("[S2]", "b" * 100), Turn("[S1]", "c" * 100), Turn("[S2]", "d" * 100)]
    # 400 frames for 400 bytes: boundaries at 0/100/200/300 frames from the start
    frames, transcript = choose_tail(turns, 400, frame_rate=100.0, tail_seconds=1.5, max_text_bytes=1024)
    assert (frames, transcript) == (200, f"[S1] {'c' * 100} [S2] {'d' * 100}")  # 1 s hears only [S2]
    frames, _ = choose_tail(turns, 400, frame_rate=100.0, tail_seconds=3.2, max_text_bytes=1024)
    assert frames == 300
    frames, transcript = choose_tail(turns, 400, 100.0, 3.2, max_text_bytes=220)  # the next chunk needs room
    assert frames == 200 and len(transcript) <= 220


def test_end_tag_is_the_second_to_last_speakers():
    assert end_tag("[S1] Hi. [S2] Hello.") == "[S1]"
    assert end_tag("[S1] Hi. [S2] Hello. [S2] Again.") == "[S2]"
    assert end_tag("[S1] Just one turn.") is None
    assert end_tag("[S1] Hi. [S2] Hello. [S1]") is None  # already ends with a tag


# -- generation --------------------------------------------------------------------------------------
def test_each_chunk_is_prompted_with_the_tail_of_the_one_before(dia):
    script = dialogue(6, sentences=2)
    res = dia.generate(script, long_form=True, chunk_seconds=12, tail_seconds=0.15, seed=11)[0]
    chunks = res.chunks
    assert len(chunks) >= 3 and chunks[0].prompt_frames == 0 and chunks[0].seed == 11
    # stitched: the chunks' new frames in order, decoded once (no prompt audio repeated)
    assert res.frames == sum(c.frames for c in chunks) > 0
    assert [c.start_frame for c in chunks] == list(np.cumsum([0] + [c.frames for c in chunks[:-1]]))
    assert len(res.audio) == res.frames * 512
    carried = 0
    for before, chunk in zip(chunks, chunks[1:]):
        if not before.frames:
            assert chunk.prompt_frames == 0
            continue
        tail = res.codes[before.start_frame + before.frames - chunk.prompt_frames: before.start_frame + before.frames]
        assert 0 < chunk.prompt_frames <= before.frames and chunk.prompt_text
        assert chunk.prompt_text in before.text  # the tail's transcript is the end of that chunk's text
        alone = dia.generate(chunk.text, audio_prompts=[tail], prompt_transcripts=chunk.prompt_text,
                             seed=chunk.seed, decode_audio=False)[0]
        assert np.array_equal(alone.codes, res.codes[chunk.start_frame: chunk.start_frame + chunk.frames])
        carried += 1
    assert carried >= 1


def test_a_three_minute_script_runs_in_chunks_and_loses_no_text(dia):
    turns = [f"[S{1 + i % 2}] Turn {i}: " + " ".join(f"here is sentence {j} of it." for j in range(4))
             for i in range(22)]
    script = " ".join(turns)
    assert 2300 < len(script.encode()) < 2800 and 150 < expected_seconds(script) < 210  # ~3 minutes
    res = dia.generate(script, long_form=True, seed=5, decode_audio=False)[0]
    assert len(res.chunks) >= 9
    assert norm(" ".join(c.text for c in res.chunks)) == norm(script)
    assert all(expected_seconds(c.text) <= 20 for c in res.chunks)
    assert res.frames == sum(c.frames for c in res.chunks)


def test_long_scripts_interleave_with_short_ones_in_stream(dia):
    script = dialogue(6, sentences=2)
    short = [Request(f"s{i}", "[S1] A short line. [S2] Yes.", seed=i) for i in range(4)]
    stats = StreamStats()
    order = [r.id for r in dia.stream([Request("long", script, seed=3, long_form=True, chunk_seconds=12,
                                               tail_seconds=0.15), *short], slots=2, decode_audio=False,
                                      stats=stats)]
    assert order.index("long") == len(order) - 1 and sorted(order) == sorted(["long"] + [r.id for r in short])
    assert stats.admissions >= 4  # chunks were admitted one after another as slots freed
    streamed = [r for r in dia.stream([Request("long", script, seed=3, long_form=True, chunk_seconds=12,
                                               tail_seconds=0.15)], slots=1, decode_audio=False)][0]
    alone = dia.generate(script, long_form=True, chunk_seconds=12, tail_seconds=0.15, seed=3, decode_audio=False)[0]
    assert np.array_equal(streamed.codes, alone.codes)


def test_a_bad_long_script_is_an_error_result_and_the_stream_goes_on(dia):
    results = {r.id: r for r in dia.stream([Request("bad", "[S1] Hi. [S2] ", long_form=True),
                                            Request("ok", "[S1] Fine. [S2] Good.", seed=1)],
                                           slots=2, decode_audio=False)}
    assert "empty" in results["bad"].error and results["ok"].error is None
    with pytest.raises(DiaError, match="row 0: .*empty"):
        dia.generate("[S1] Hi. [S2] ", long_form=True)


def test_the_end_tag_is_appended_and_reported(dia):
    text = "[S1] Hello there. [S2] Hi, how are you?"
    tagged = dia.generate(text, end_tag=True, seed=2, decode_audio=False)[0]
    by_hand = dia.generate(text + " [S1]", seed=2, decode_audio=False)[0]
    assert tagged.end_tag_applied and np.array_equal(tagged.codes, by_hand.codes)
    single = dia.generate("[S1] Only me.", end_tag=True, seed=2, decode_audio=False)[0]
    assert not single.end_tag_applied
    streamed = next(dia.stream([Request("t", text, seed=2, end_tag=True)], slots=1, decode_audio=False))
    assert streamed.end_tag_applied and np.array_equal(streamed.codes, by_hand.codes)
    long = dia.generate(dialogue(4), long_form=True, chunk_seconds=12, end_tag=True, seed=2, decode_audio=False)[0]
    assert long.end_tag_applied and all(not re.search(r"\[S[12]\]$", c.text) for c in long.chunks)


def test_one_prompt_array_serves_every_long_text(dia):
    prompt = dia.generate("[S1] A voice to carry.", seed=4, decode_audio=False)[0].codes
    assert len(prompt) > 0
    texts = [dialogue(3), dialogue(2)]
    both = dia.generate(texts, long_form=True, chunk_seconds=12, audio_prompts=prompt,
                        prompt_transcripts="[S1] A voice to carry.", seed=1, decode_audio=False)
    assert [r.chunks[0].prompt_frames for r in both] == [len(prompt)] * 2
