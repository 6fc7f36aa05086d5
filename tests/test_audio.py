"""Audio prompt loading and output writing (real soundfile/soxr, real files)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import soundfile as sf

from dia_model.audio.files import AudioError, audio_to_bytes, load_audio, write_audio


def _sine(n: int, sample_rate: int, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(n) / sample_rate)).astype(np.float32)


def _expected_length(n: int, source_rate: int, target_rate: int = 44100) -> int:
    return round(n * target_rate / source_rate)


def test_stereo_int16_22050_wav_becomes_mono_float32_44100(tmp_path):
    n = 11025
    left = _sine(n, 22050, amplitude=0.6)
    right = _sine(n, 22050, amplitude=0.2)
    pcm = np.round(np.stack([left, right], axis=1) * 32767).astype(np.int16)
    path = tmp_path / "prompt.wav"
    sf.write(path, pcm, 22050, subtype="PCM_16")

    audio = load_audio(path)

    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - _expected_length(n, 22050)) <= 1
    # channel mean (amplitude 0.4), int16 scaled to [-1, 1], resampled: compare away from the edges
    expected = _sine(len(audio), 44100, amplitude=0.4)
    middle = slice(1000, len(audio) - 1000)
    np.testing.assert_allclose(audio[middle], expected[middle], atol=2e-3)


@pytest.mark.parametrize(
    ("suffix", "sample_rate", "atol"),
    [
        (".flac", 44100, 1e-4),
        (".flac", 16000, None),
        (".ogg", 48000, None),
        (".mp3", 24000, None),
        (".mp3", 44100, None),
    ],
)
def test_formats_and_rates(tmp_path, suffix, sample_rate, atol):
    n = sample_rate // 2
    wave = _sine(n, sample_rate)
    path = tmp_path / f"prompt{suffix}"
    sf.write(path, wave, sample_rate)

    audio = load_audio(path)

    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - _expected_length(n, sample_rate)) <= 1
    assert 0.3 < np.abs(audio).max() < 0.7  # really the sine, not silence or noise
    if atol is not None:  # lossless at the target rate: the samples themselves
        np.testing.assert_allclose(audio, wave, atol=atol)


def test_file_object_and_bytes_sources(tmp_path):
    wave = _sine(4410, 44100)
    data = audio_to_bytes(wave, 44100, "flac")
    from_bytes = load_audio(data)
    from_file = load_audio(io.BytesIO(data))
    np.testing.assert_allclose(from_bytes, wave, atol=1e-4)
    np.testing.assert_array_equal(from_bytes, from_file)


def test_target_sample_rate(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, _sine(44100, 44100), 44100)
    assert abs(len(load_audio(path, target_sample_rate=24000)) - 24000) <= 1


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="nope.wav.*not found"):
        load_audio(path)


def test_garbage_bytes_name_the_file(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(AudioError, match="garbage.wav.*unreadable") as info:
        load_audio(path)
    assert isinstance(info.value, ValueError)


def test_empty_file_names_it(tmp_path):
    path = tmp_path / "empty.mp3"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="empty.mp3.*empty"):
        load_audio(path)
    with pytest.raises(AudioError, match="0 bytes"):
        load_audio(b"")


def test_zero_length_audio(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 22050)
    with pytest.raises(AudioError, match="silent.wav.*no audio samples"):
        load_audio(path)


def test_non_finite_samples(tmp_path):
    path = tmp_path / "nan.wav"
    wave = _sine(1000, 44100)
    wave[10] = np.nan
    sf.write(path, wave, 44100, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav.*non-finite"):
        load_audio(path)


def test_directory_is_not_audio(tmp_path):
    with pytest.raises(AudioError, match="not a regular file"):
        load_audio(tmp_path)


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".mp3"])
def test_write_audio_round_trip(tmp_path, suffix):
    wave = _sine(22050, 44100)
    wave[100] = 3.0  # out of range: clipped, not wrapped
    path = tmp_path / f"out{suffix}"

    write_audio(path, wave, 44100)

    back, rate = sf.read(path, dtype="float32")
    assert rate == 44100 and len(back) == len(wave)
    assert np.abs(back).max() <= 1.0 + 1e-3
    if suffix in (".wav", ".flac"):
        np.testing.assert_allclose(back, np.clip(wave, -1, 1), atol=1e-4)
    assert os.listdir(tmp_path) == [path.name]


def test_write_audio_explicit_format(tmp_path):
    path = tmp_path / "out.bin"
    write_audio(path, _sine(1000, 44100), 22050, format="flac")
    assert sf.info(path).format == "FLAC"
    with pytest.raises(AudioError, match="unknown audio format"):
        write_audio(tmp_path / "out.xyz", _sine(10, 44100))


def test_failed_write_leaves_no_partial_file(tmp_path):
    path = tmp_path / "out.mp3"
    # libsndfile creates the file, then refuses the rate: a direct write would leave 0 bytes behind
    with pytest.raises(AudioError, match="out.mp3"):
        write_audio(path, _sine(1000, 96000), 96000)
    assert os.listdir(tmp_path) == []

    write_audio(path, _sine(1000, 44100), 44100)
    before = path.read_bytes()
    with pytest.raises(AudioError):
        write_audio(path, _sine(1000, 96000), 96000)
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]


def test_write_audio_rejects_non_finite(tmp_path):
    wave = _sine(100, 44100)
    wave[3] = np.inf
    with pytest.raises(AudioError, match="non-finite"):
        write_audio(tmp_path / "x.wav", wave)
    assert os.listdir(tmp_path) == []


def test_audio_to_bytes_formats():
    wave = _sine(4410, 44100)
    for fmt in ("wav", "flac", "ogg", "mp3"):
        data = audio_to_bytes(wave, 44100, fmt)
        back = load_audio(data)
        assert len(back) == len(wave), fmt
