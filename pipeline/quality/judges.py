"""Model-based quality metrics: what an ASR model hears (CER/WER against the script) and how close the
voice is to the row's prompt (speaker-verification embeddings). Both are optional and load like Dia:
a local folder or a Hugging Face Hub id, through transformers.

- ASR: any checkpoint transformers' ``automatic-speech-recognition`` pipeline runs, e.g.
  ``openai/whisper-large-v3-turbo`` (Whisper) or a CTC model; long audio is read in 30 s windows.
- Speaker similarity: an x-vector model (``AutoModelForAudioXVector``), e.g.
  ``microsoft/wavlm-base-plus-sv``: cosine similarity of the row's and the prompt's embeddings.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Any, Optional

import numpy as np

from ..errors import PipelineError
from .metrics import spoken_words

JUDGE_RATE = 16000  # both kinds of model read 16 kHz audio


def resample(audio: np.ndarray, rate: int) -> np.ndarray:
    import soxr

    audio = np.asarray(audio, dtype=np.float32)
    return audio if rate == JUDGE_RATE else soxr.resample(audio, rate, JUDGE_RATE).astype(np.float32)


def _normalise(text: str) -> list[str]:
    """Words for scoring: the script's spoken words (no tags, no non-verbals), case and accents folded."""
    words = []
    for word in spoken_words(text):  # tags and non-verbals out first (they are matched as written)
        folded = unicodedata.normalize("NFKD", word.lower())
        words.append("".join(ch for ch in folded if not unicodedata.combining(ch)).replace("\u2019", "'"))
    return words


def _edits(ref: list[Any], hyp: list[Any]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def error_rates(script: str, heard: str) -> tuple[Optional[float], Optional[float]]:
    """(CER, WER) of what was heard against the script's spoken words; None when the script has none."""
    ref, hyp = _normalise(script), _normalise(heard)
    if not ref:
        return None, None
    ref_chars, hyp_chars = list(" ".join(ref)), list(" ".join(hyp))
    return _edits(ref_chars, hyp_chars) / len(ref_chars), _edits(ref, hyp) / len(ref)


def load_error(key: str, source: str, e: BaseException) -> PipelineError:
    return PipelineError(
        f"cannot load {key}={source}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
        f"Give a local folder, or a Hub id this machine can download (offline: on a machine with Hub access "
        f"run `huggingface-cli download {source} --local-dir <folder>`, copy it here and set {key}=<folder>)"
    )


class AsrJudge:
    """Transcribes rows with a transformers ASR pipeline."""

    def __init__(self, source: str, device: str = "cpu") -> None:
        try:
            from transformers import pipeline

            self.pipe = pipeline("automatic-speech-recognition", model=source, device=device)
        except Exception as e:
            raise load_error("quality.asr_model", source, e) from e

    def transcribe(self, audio: np.ndarray, rate: int) -> str:
        out = self.pipe({"raw": resample(audio, rate), "sampling_rate": JUDGE_RATE}, chunk_length_s=30)
        return str(out.get("text", "")).strip()


class SpeakerJudge:
    """Speaker embeddings from an x-vector model; similarity is their cosine."""

    def __init__(self, source: str, device: str = "cpu") -> None:
        try:
            from transformers import AutoFeatureExtractor, AutoModelForAudioXVector

            self.features = AutoFeatureExtractor.from_pretrained(source)
            self.model = AutoModelForAudioXVector.from_pretrained(source).to(device).eval()
        except Exception as e:
            raise load_error("quality.speaker_model", source, e) from e
        self.device = device

    def embed(self, audio: np.ndarray, rate: int) -> np.ndarray:
        import torch

        inputs = self.features(resample(audio, rate), sampling_rate=JUDGE_RATE, return_tensors="pt")
        with torch.inference_mode():
            vector = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).embeddings[0]
        vector = vector.float().cpu().numpy()
        return vector / (np.linalg.norm(vector) or 1.0)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.dot(a, b))


def clean_heard(text: str) -> str:
    """An ASR transcript as stored: one line, at most 2,000 characters."""
    return re.sub(r"\s+", " ", text).strip()[:2000]
