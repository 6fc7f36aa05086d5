"""What a replica keeps so that work is done once: prompt codes per prompt file and per voice, the
speaker embedding of each prompt, and the planners of the shards it runs rows of. Each cache owns
its lock."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..planning.prompts import PromptReader
from ..planning.voices import VoiceBook
from .results import describe_error

if TYPE_CHECKING:
    from ..model.protocol import SpeechModel
    from ..planning.planner import JobContext, ShardPlanner

PLANNERS_KEPT = 3  # shard planners a replica keeps (each holds its shard's decoded cells)


class PromptCache:
    """Prompt codes, read and encoded once per replica: audio_prompt files by URI, named voices by
    (S1, S2), and the speaker embedding of each prompt the speaker judge compares against."""

    def __init__(self, model: "SpeechModel", voices: dict[str, tuple[bytes, str]], *, timeout_s: float,
                 max_bytes: int) -> None:
        self.model = model
        self._files = PromptReader(timeout_s=timeout_s, max_bytes=max_bytes)
        self._voices = VoiceBook(lambda clip: model.encode_audio([clip])[0], voices)
        self._codes: dict[str, tuple[Any, int]] = {}  # uri -> (codes, frames)
        self._embeddings: dict[int, Any] = {}  # id(prompt codes) -> (codes, speaker embedding)
        self._lock = threading.Lock()

    def prompt(self, uri: str) -> tuple[Any, int]:
        """A prompt file's (codes, frames). Raises ValueError with the reason when the file cannot be used."""
        with self._lock:
            if uri in self._codes:
                return self._codes[uri]
        data, problem = self._files.get(uri)  # waits at most data.prompt_timeout_s
        if problem:
            raise ValueError(problem)
        with self._lock:
            if uri not in self._codes:
                codes = self.model.encode_audio([data])[0]  # file bytes, decoded in memory
                self._codes[uri] = (codes, len(codes))
            return self._codes[uri]

    def voice_prompt(self, voices: Any) -> tuple[Any, str]:
        """(prompt codes, prompt transcript) for a row's (S1, S2) voice names; each voice's clip is
        encoded once per replica."""
        return self._voices.prompt(tuple(voices))

    def speaker_embedding(self, codes: Any, embed: Callable[[Any, int], Any]) -> Any:
        """The speaker embedding of a prompt as the model heard it (its codes decoded), once per prompt."""
        key = id(codes)  # prompt codes are cached objects: one per voice or prompt file
        with self._lock:
            if key not in self._embeddings:
                wave = self.model.decode_audio([codes])[0]
                self._embeddings[key] = (codes, embed(wave, self.model.sample_rate))
            return self._embeddings[key][1]


class PlannerCache:
    """The planners of the shards a replica runs rows of, made once each (a planner reads its shard);
    the last few are kept."""

    def __init__(self, job: Optional["JobContext"], where: str) -> None:
        self.job = job
        self.where = where  # "replica <name> on <host>", for the message when a shard cannot be read
        self._planners: "OrderedDict[str, ShardPlanner]" = OrderedDict()  # shard -> planner, newest last
        self._lock = threading.Lock()

    def get(self, shard: str) -> "ShardPlanner":
        with self._lock:
            planner = self._planners.get(shard)
            if planner is None:
                if self.job is None:
                    raise RuntimeError("this replica was started without a job to plan rows from")
                try:
                    planner = self._planners[shard] = self.job.planner(shard)
                except Exception as e:  # e.g. a path that exists only on the driver's machine
                    raise RuntimeError(
                        f"{self.where} cannot plan rows of input shard {shard}: {describe_error(e)}. Replicas "
                        "read their rows themselves: data.input must be reachable from every node (a shared "
                        "folder or an object-store URI)") from e
                while len(self._planners) > PLANNERS_KEPT:
                    self._planners.popitem(last=False)
            self._planners.move_to_end(shard)
            return planner
