"""Per-row batched generation: invariance, settings, prompts, and input checks."""

from pathlib import Path

import numpy as np
import pytest

from dia_model import Dia, DiaError, validate_script

GOLDEN = Path(__file__).parent / "data" / "golden"
A = "[S1] Dia is an open weights text to dialogue model. [S2] You get full control over scripts and voices."
B = "[S1] Short one. [S2] Yes."
C = "[S1] Wow. Amazing. (laughs) [S2] Try it now on Git hub or Hugging Face."


@pytest.fixture(scope="module")
def model():
    return Dia.from_pretrained(GOLDEN / "checkpoint-0626", load_codec=False)


@pytest.fixture(scope="module")
def prompts():
    data = np.load(GOLDEN / "cases-0626.npz")
    return data["batch_prompts/prompt_0"], data["batch_prompts/prompt_1"]


def _rows(prompts):
    """Six requests that differ in every per-row setting."""
    p20, p7 = prompts
    return [
        dict(text=A, cfg_scale=3.0, temperature=0.0, top_p=0.95, top_k=45, max_new_frames=60, seed=1, prompt=None),
        dict(text=B, cfg_scale=1.5, temperature=1.2, top_p=0.95, top_k=45, max_new_frames=40, seed=2, prompt=None),
        dict(text=C, cfg_scale=4.0, temperature=1.8, top_p=0.80, top_k=20, max_new_frames=50, seed=3, prompt=p20),
        dict(text=A, cfg_scale=2.0, temperature=1.0, top_p=1.00, top_k=60, max_new_frames=30, seed=4, prompt=p7),
        dict(text=B, cfg_scale=3.0, temperature=0.0, top_p=0.95, top_k=10, max_new_frames=70, seed=5, prompt=p7),
        dict(text=C, cfg_scale=3.0, temperature=1.2, top_p=0.90, top_k=45, max_new_frames=45, seed=6, prompt=None),
    ]


def _generate(model, rows):
    return model.generate(
        [r["text"] for r in rows],
        cfg_scale=[r["cfg_scale"] for r in rows], temperature=[r["temperature"] for r in rows],
        top_p=[r["top_p"] for r in rows], top_k=[r["top_k"] for r in rows],
        max_new_frames=[r["max_new_frames"] for r in rows], seed=[r["seed"] for r in rows],
        audio_prompts=[r["prompt"] for r in rows],
    )


def test_row_result_independent_of_batch(model, prompts):
    rows = _rows(prompts)
    batch = _generate(model, rows)
    alone = [_generate(model, [r])[0] for r in rows]
    reordered = _generate(model, rows[::-1])[::-1]
    for i, (b, a, r) in enumerate(zip(batch, alone, reordered)):
        assert b.frames > 0, i
        np.testing.assert_array_equal(b.codes, a.codes, err_msg=f"row {i}: batch vs alone")
        np.testing.assert_array_equal(b.codes, r.codes, err_msg=f"row {i}: batch order")
        assert b.ended_by_eos == a.ended_by_eos


def test_settings_are_per_row(model, prompts):
    rows = _rows(prompts)
    results = _generate(model, rows)
    for r, res in zip(rows, results):
        assert res.frames <= r["max_new_frames"]
        assert res.ended_by_eos or res.frames == r["max_new_frames"]
        assert res.seed == r["seed"]
        assert res.prompt_frames == (0 if r["prompt"] is None else len(r["prompt"]))
        assert res.settings["cfg_scale"] == r["cfg_scale"] and res.settings["top_k"] == r["top_k"]


def test_sampling_depends_on_seed_only(model):
    texts = [C] * 3
    res = model.generate(texts, temperature=1.5, max_new_frames=30, seed=[7, 7, 8])
    assert np.array_equal(res[0].codes, res[1].codes)
    assert not np.array_equal(res[0].codes, res[2].codes)
    again = model.generate(C, temperature=1.5, max_new_frames=30, seed=7)[0]
    assert np.array_equal(again.codes, res[0].codes)


def test_missing_seed_is_drawn_and_reported(model):
    first = model.generate(C, temperature=1.5, max_new_frames=20)[0]
    replay = model.generate(C, temperature=1.5, max_new_frames=20, seed=first.seed)[0]
    assert np.array_equal(first.codes, replay.codes)


def test_cfg_scale_changes_the_result(model):
    res = model.generate([A, A], temperature=0.0, cfg_scale=[0.0, 5.0], max_new_frames=30)
    assert not np.array_equal(res[0].codes, res[1].codes)


def test_prompt_is_excluded_and_shapes(model, prompts):
    res = model.generate(A, temperature=0.0, audio_prompts=[prompts[0]], max_new_frames=25)[0]
    assert res.codes.ndim == 2 and res.codes.shape[1] == 9 and res.codes.dtype == np.int64
    assert res.codes.min() >= 0 and res.codes.max() <= 1023
    assert res.prompt_frames == 20 and res.frames <= 25


def test_default_length_is_what_the_model_holds(model):
    assert model.max_new_frames_limit() == 3072 - 16
    assert model.max_new_frames_limit(100) == 3072 - 16 - 100


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(texts=""), "row 0: script is empty"),
        (dict(texts=["[S1] ok", "   "]), "row 1: script is empty"),
        (dict(texts="[S1] " + "x" * 1100), "over the model's limit of 1024"),
        (dict(texts="[S1] bad \x01 byte"), "raw control character 0x01"),
        (dict(texts="[S1] null \x00 byte"), "0x00"),
        (dict(texts="[S1] hi [S3] who?"), r"unknown speaker tag\(s\) \[S3\]"),
        (dict(texts="[s1] lower case"), r"unknown speaker tag\(s\) \[s1\]"),
        (dict(texts=B, max_new_frames=5000), "at most 3056 new frames"),
        (dict(texts=B, max_new_frames=0), "max_new_frames=0"),
        (dict(texts=B, temperature=-1), "temperature=-1"),
        (dict(texts=B, top_p=0.0), "top_p=0.0"),
        (dict(texts=B, top_k=0), "top_k=0"),
        (dict(texts=B, top_k=2.5), "top_k=2.5"),
        (dict(texts=B, cfg_scale=float("nan")), "cfg_scale=nan"),
        (dict(texts=B, seed=-3), "seed=-3"),
        (dict(texts=[B, B], cfg_scale=[1.0, 2.0, 3.0]), "cfg_scale has 3 entries for 2 texts"),
        (dict(texts=B, audio_prompts=[np.zeros((3060, 9), dtype=np.int64)]), "leaves no room"),
        (dict(texts=B, audio_prompts=[np.zeros((10, 8), dtype=np.int64)]), r"shape \[frames, 9\]"),
        (dict(texts=B, audio_prompts=[np.full((10, 9), 1024)]), "must lie in 0..1023"),
        (dict(texts=B, audio_prompts=["/no/such/prompt.wav"]), "needs the codec"),
    ],
)
def test_bad_input_is_refused_before_decoding(model, kwargs, message):
    texts = kwargs.pop("texts")
    with pytest.raises(DiaError, match=message):
        model.generate(texts, **kwargs)


def test_all_bad_rows_are_named_at_once(model):
    with pytest.raises(DiaError) as err:
        model.generate(["", "[S1] fine", "[S7] no"], max_new_frames=[10, 10, 10])
    assert "row 0" in str(err.value) and "row 2" in str(err.value) and "row 1" not in str(err.value)


def test_validate_script_reports_without_generating():
    assert validate_script("[S1] Hello. [S2] Hi. (laughs)") == []
    assert validate_script("") == ["script is empty"]
    assert len(validate_script("[S9] \x02" + "y" * 2000)) == 3
    assert validate_script(12) == ["script must be a string, got int"]


def test_prompt_transcript_is_prefixed(model, prompts):
    joined = model.generate("[S1] Transcript here. [S2] New line.", temperature=0.0, max_new_frames=20,
                            audio_prompts=[prompts[1]])[0]
    split = model.generate("[S2] New line.", prompt_transcripts="[S1] Transcript here.", temperature=0.0,
                           max_new_frames=20, audio_prompts=[prompts[1]])[0]
    assert np.array_equal(joined.codes, split.codes)


def test_compiled_decoder_gives_the_same_codes(model):
    compiled = Dia.from_pretrained(GOLDEN / "checkpoint-0626", load_codec=False, compile=True)
    texts, lengths = [A, B, C], [30, 12, 20]  # rows finish at different steps: the batch shrinks
    kwargs = dict(temperature=[0.0, 1.2, 1.5], max_new_frames=lengths, seed=[1, 2, 3])
    for eager, fast in zip(model.generate(texts, **kwargs), compiled.generate(texts, **kwargs)):
        np.testing.assert_array_equal(eager.codes, fast.codes)
