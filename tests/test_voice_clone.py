"""Audio prompts from files through the real (tiny, random) DAC codec, and decoded audio."""

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dia_model import Dia, DiaError, make_tiny_checkpoint
from dia_model.audio.files import load_audio


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=1)
    return Dia.from_pretrained(folder)


def _tone(path, seconds, rate, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 220 * t)
    sf.write(path, np.stack([wave] * channels, axis=1) if channels > 1 else wave, rate)
    return path


def test_tiny_checkpoint_brings_its_codec(model):
    assert model.codec is not None and model.sample_rate == 44100
    assert model.info["codec"].endswith("codec")


def test_prompt_files_of_different_lengths_and_rates(model, tmp_path):
    short = _tone(tmp_path / "short.wav", 0.5, 22050, channels=2)  # stereo, resampled to 44.1 kHz
    long = _tone(tmp_path / "long.flac", 1.2, 48000)
    texts = ["[S1] First clone.", "[S2] Second clone, longer prompt.", "[S1] No prompt."]
    results = model.generate(texts, audio_prompts=[str(short), long, None], max_new_frames=20, seed=[1, 2, 3],
                             prompt_transcripts=["[S1] Hello.", "[S2] Hi there.", None])
    assert [r.prompt_frames for r in results] == [math.ceil(22050 / 512), math.ceil(52920 / 512), 0]
    for r in results:
        assert r.sample_rate == 44100
        assert r.audio is not None and r.audio.dtype == np.float32
        assert len(r.audio) == r.frames * 512  # the prompt's audio is not part of the output
        assert np.isfinite(r.audio).all()


def test_file_prompt_equals_its_codes(model, tmp_path):
    path = _tone(tmp_path / "p.wav", 0.4, 44100)
    codes = model.codec.encode([load_audio(path)])[0]
    from_file = model.generate("[S1] Same prompt.", audio_prompts=[path], max_new_frames=15, seed=4)[0]
    from_codes = model.generate("[S1] Same prompt.", audio_prompts=[codes], max_new_frames=15, seed=4)[0]
    np.testing.assert_array_equal(from_file.codes, from_codes.codes)


def test_unreadable_prompt_names_row_and_file(model, tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(DiaError, match=r"row 1: audio prompt .*broken\.wav.* cannot be used"):
        model.generate(["[S1] ok", "[S1] bad prompt"], audio_prompts=[None, bad], max_new_frames=5)
    with pytest.raises(DiaError, match=r"row 0: audio prompt .*missing\.wav"):
        model.generate("[S1] gone", audio_prompts=[tmp_path / "missing.wav"], max_new_frames=5)


def test_decode_audio_batches_rows(model):
    results = model.generate(["[S1] One.", "[S2] Two, a bit longer."], max_new_frames=[10, 25], seed=[5, 6],
                             decode_audio=False)
    assert all(r.audio is None for r in results)
    waves = model.decode_audio([r.codes for r in results])
    alone = [model.decode_audio([r.codes])[0] for r in results]
    for w, a, r in zip(waves, alone, results):
        assert len(w) == r.frames * 512
        np.testing.assert_allclose(w, a, atol=1e-5)


def test_encode_audio_gives_reusable_prompt_codes(model, tmp_path):
    path = _tone(tmp_path / "again.ogg", 0.3, 16000)
    codes = model.encode_audio([path])[0]
    assert codes.shape == (math.ceil(0.3 * 44100 / 512), 9) and codes.dtype == np.int64
    a = model.generate("[S1] Reused.", audio_prompts=[codes], max_new_frames=10, seed=9)[0]
    b = model.generate("[S1] Reused.", audio_prompts=[path], max_new_frames=10, seed=9)[0]
    np.testing.assert_array_equal(a.codes, b.codes)
    from_bytes = model.encode_audio([Path(path).read_bytes()])[0]  # a file's bytes, no temporary file
    np.testing.assert_array_equal(from_bytes, codes)


def test_stream_decodes_audio_and_takes_prompt_files_and_bytes(model, tmp_path):
    """stream() with the codec: prompt as a path and as a file's bytes, audio decoded on the codec
    thread equals decode_audio() of the same codes, and codes equal generate() alone."""
    from dia_model import Request, StreamStats

    voice = _tone(tmp_path / "voice.wav", 0.6, 16000)
    requests = [
        Request(id="path", text="[S1] From a file.", audio_prompt=str(voice), prompt_transcript="[S1] Hi.",
                max_new_frames=15, seed=1),
        Request(id="bytes", text="[S1] From bytes.", audio_prompt=Path(voice).read_bytes(),
                prompt_transcript="[S1] Hi.", max_new_frames=25, seed=2),
        Request(id="plain", text="[S2] No prompt at all.", max_new_frames=10, seed=3),
        Request(id="broken", text="[S1] Bad prompt.", audio_prompt=b"not audio", seed=4),
    ]
    stats = StreamStats()
    results = {r.id: r for r in model.stream(requests, slots=2, stats=stats)}
    assert stats.codec_rows == 3 and stats.codec_s > 0  # the codec thread's share of the time is measured
    assert "audio prompt (9 bytes) cannot be used" in results["broken"].error
    assert results["path"].prompt_frames == results["bytes"].prompt_frames == math.ceil(0.6 * 44100 / 512)
    for req in requests[:3]:
        got = results[req.id]
        want = model.generate(req.text, audio_prompts=[req.audio_prompt], prompt_transcripts=req.prompt_transcript,
                              max_new_frames=req.max_new_frames, seed=req.seed, decode_audio=False)[0]
        np.testing.assert_array_equal(got.codes, want.codes)
        assert got.audio is not None and len(got.audio) == got.frames * 512
        np.testing.assert_allclose(got.audio, model.decode_audio([got.codes])[0], atol=1e-6)


def test_a_half_precision_codec_stays_close_to_fp32(model, tmp_path):
    """codec_dtype: the same codes through a bf16 DAC give the fp32 waveform within a few percent
    (random tiny weights here; bench/gpu_parity.py measures the real architecture on a GPU)."""
    folder = Path(model.info["source"])
    half = Dia.from_pretrained(folder, codec_dtype="bfloat16")
    assert half.info["codec_dtype"] == "bfloat16" and model.info["codec_dtype"] == "float32"
    codes = model.generate("[S1] Half precision.", max_new_frames=40, seed=5, decode_audio=False)[0].codes
    full, low = model.decode_audio([codes])[0], half.decode_audio([codes])[0]
    assert low.dtype == np.float32 and low.shape == full.shape
    rel = np.sqrt(np.mean((low - full) ** 2)) / np.sqrt(np.mean(full**2))
    assert 0 < rel < 0.05, rel
