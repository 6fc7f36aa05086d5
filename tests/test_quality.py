"""Signal metrics on synthetic signals with known answers, and the gates' logic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.config import QualityConfig
from pipeline.quality.metrics import clipping_ratio, loudness_lufs, row_metrics, silences, spoken_words
from pipeline.quality.gates import check, check_settings, retry_seed, score

SR = 44100


def tone(seconds: float, amplitude: float = 0.3, hz: float = 997.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def gap(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def test_silences_leading_trailing_and_inner():
    audio = np.concatenate([gap(0.5), tone(1.0), gap(1.0), tone(0.7), gap(0.25), tone(0.3), gap(0.3)])
    lead, trail, inner = silences(audio, SR)
    assert lead == pytest.approx(0.5, abs=0.011)
    assert trail == pytest.approx(0.3, abs=0.011)
    assert inner == pytest.approx(1.0, abs=0.011)  # the 1 s gap, not the 0.25 s one
    assert silences(gap(2.0), SR) == pytest.approx((2.0, 0.0, 0.0))


def test_clipping_ratio_of_a_clipped_sine():
    t = np.arange(SR) / SR
    clipped = np.clip(2.0 * np.sin(2 * np.pi * 100 * t), -1.0, 1.0)
    expected = 1.0 - (2 / math.pi) * math.asin(0.999 / 2.0)  # share of a period where |2 sin| >= 0.999
    assert clipping_ratio(clipped) == pytest.approx(expected, abs=2e-3)
    assert clipping_ratio(tone(1.0)) == 0.0


def test_loudness_of_a_known_sine():
    # BS.1770: a 997 Hz sine at 0 dBFS in one channel reads -3.01 LUFS; at -20 dBFS, -23.01
    assert loudness_lufs(tone(3.0, amplitude=0.1), SR) == pytest.approx(-23.01, abs=0.1)
    assert loudness_lufs(tone(0.2), SR) is None  # under one 400 ms block
    assert loudness_lufs(gap(2.0), SR) is None  # silence has no loudness


def test_speaking_rate_counts_spoken_words_only():
    assert spoken_words("[S1] Hello there (laughs) friend. [S2] I'm fine!") == ["Hello", "there", "friend", "I'm", "fine"]
    m = row_metrics(np.concatenate([tone(1.0), gap(0.5), tone(1.0)]), SR, "[S1] One two. [S2] Three (sighs) four five.")
    assert m["duration_s"] == pytest.approx(2.5) and m["speaking_rate_wps"] == pytest.approx(2.0)
    assert m["max_inner_silence_s"] == pytest.approx(0.5, abs=0.011) and m["clipping_ratio"] == 0.0


def test_gates_report_each_failure_and_score_prefers_fewer_smaller_ones():
    cfg = QualityConfig(speaking_rate=[1.0, 4.0], max_silence_s=2.0, max_edge_silence_s=1.0, max_clipping=0.01)
    good = {"speaking_rate_wps": 2.5, "max_inner_silence_s": 0.5, "leading_silence_s": 0.1,
            "trailing_silence_s": 0.2, "clipping_ratio": 0.0, "loudness_lufs": -20.0, "duration_s": 3.0}
    assert check(good, cfg) == []
    fast = {**good, "speaking_rate_wps": 6.0}
    bad = {**good, "speaking_rate_wps": 6.0, "max_inner_silence_s": 3.0}
    assert [f.check for f in check(fast, cfg)] == ["speaking_rate"]
    assert "speaking_rate_wps 6 > 4" in check(fast, cfg)[0].message
    assert [f.check for f in check(bad, cfg)] == ["speaking_rate", "max_silence_s"]
    assert score(check(good, cfg)) < score(check(fast, cfg)) < score(check(bad, cfg))
    slightly = {**good, "speaking_rate_wps": 4.5}
    assert score(check(slightly, cfg)) < score(check(fast, cfg))  # same count, smaller violation
    assert check({**good, "speaking_rate_wps": None}, cfg) == []  # no words: rate is not judged


def test_retry_seeds_are_derived_and_settings_are_checked():
    seeds = [retry_seed(1234, k) for k in range(4)]
    assert seeds[0] == 1234 and len(set(seeds)) == 4 and seeds == [retry_seed(1234, k) for k in range(4)]
    assert "low <= high" in check_settings(QualityConfig(speaking_rate=[5.0, 1.0]))
    assert "no gate is" in check_settings(QualityConfig(retries=2))
    assert check_settings(QualityConfig(max_silence_s=2.0, retries=2)) is None


# -- model-based metrics ------------------------------------------------------------------------------
def test_error_rates_count_spoken_words_only():
    from pipeline.quality.judges import error_rates

    cer, wer = error_rates("[S1] Hello there (laughs) friend.", "hello their friend")
    assert wer == pytest.approx(1 / 3) and cer == pytest.approx(2 / 18)  # "there" -> "their": 2 letters
    assert error_rates("[S1] Café, Ünïcode!", "cafe unicode") == (0.0, 0.0)
    assert error_rates("(laughs)", "anything") == (None, None)


def test_judges_load_from_folders_and_say_how_to_fetch_a_missing_one(tmp_path, monkeypatch):
    from pipeline.errors import PipelineError
    from pipeline.quality.judges import AsrJudge, SpeakerJudge
    from tiny_judges import tiny_asr, tiny_speaker

    asr = AsrJudge(str(tiny_asr(tmp_path / "asr")))
    assert isinstance(asr.transcribe(tone(1.0), SR), str)  # random weights: some string
    speaker = SpeakerJudge(str(tiny_speaker(tmp_path / "sv")))
    a, b = speaker.embed(tone(1.0), SR), speaker.embed(np.concatenate([gap(0.3), tone(0.7, hz=220)]), SR)
    assert speaker.similarity(a, a) == pytest.approx(1.0, abs=1e-5) and speaker.similarity(a, b) < 0.9999
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PipelineError, match=r"quality.asr_model=nobody-here/no-such-asr.*huggingface-cli download"):
        AsrJudge("nobody-here/no-such-asr")


def test_model_gates_need_their_model():
    assert "needs quality.asr_model" in check_settings(QualityConfig(max_cer=0.2))
    assert "needs quality.speaker_model" in check_settings(QualityConfig(min_speaker_sim=0.5))
    cfg = QualityConfig(max_cer=0.2, min_speaker_sim=0.6, asr_model="x", speaker_model="y")
    assert [f.check for f in check({"cer": 0.5, "speaker_sim": 0.4}, cfg)] == ["max_cer", "min_speaker_sim"]
    assert check({"cer": 0.1, "speaker_sim": None}, cfg) == []  # no prompt: similarity is not judged
