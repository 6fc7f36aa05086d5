"""Quality retries on a replica: measure each attempt of a row, keep the best, and queue the row
again with its next derived seed while it fails a gate and has retries left; and the timing of the
kept attempt's turns by forced alignment (``quality.align_model``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from ..config import QualityConfig
from ..quality.align import AlignmentError, CtcAligner
from ..quality.gates import check, score
from ..quality.judges import AsrJudge, SpeakerJudge, clean_heard, error_rates
from ..quality.metrics import row_metrics
from .prepare import Prepared

if TYPE_CHECKING:
    from ..model.protocol import SpeechModel
    from .caches import PromptCache


class QualityRetries:
    """The replica's judges (loaded here: ASR and speaker models, when configured) and its retry rule."""

    def __init__(self, quality: QualityConfig, model: "SpeechModel", prompts: "PromptCache",
                 requeue: Callable[[Prepared], None]) -> None:
        self.quality, self.model, self.prompts, self.requeue = quality, model, prompts, requeue
        device = str(getattr(model, "device", "cpu"))
        self.asr = AsrJudge(quality.asr_model, device) if quality.asr_model else None
        self.speaker = SpeakerJudge(quality.speaker_model, device) if quality.speaker_model else None
        self.aligner = CtcAligner(quality.align_model, device) if quality.align_model else None

    def align(self, script: str, audio: Any, rate: int) -> tuple[Optional[list[dict[str, Any]]], Optional[str]]:
        """(turns with times, None), or (None, why) when this row cannot be aligned: exports then
        list its turns without times."""
        try:
            return [t.as_dict() for t in self.aligner.align(audio, rate, script)], None
        except AlignmentError as e:
            return None, str(e)

    def judge(self, p: Prepared, res: Any) -> bool:
        """Measure this attempt and keep it if it is the best so far. True when the row failed a gate
        and has retries left: it is queued again (same key, next derived seed)."""
        sr = self.model.sample_rate
        metrics = row_metrics(res.audio, sr, p.row.text or "")
        if self.asr is not None:
            heard = clean_heard(self.asr.transcribe(res.audio, sr))
            metrics["asr_text"] = heard
            metrics["cer"], metrics["wer"] = error_rates(p.row.text or "", heard)
        if self.speaker is not None and p.prompt is not None:
            reference = self.prompts.speaker_embedding(p.prompt, self.speaker.embed)
            metrics["speaker_sim"] = self.speaker.similarity(self.speaker.embed(res.audio, sr), reference)
        failures = check(metrics, self.quality)
        p.tries.append(res.seed)
        if p.best is None or score(failures) < p.best[0]:
            p.best = (score(failures), res, metrics, failures)
        if failures and p.attempt < self.quality.retries:
            p.attempt += 1
            p.seated_at = 0.0
            self.requeue(p)
            return True
        return False
