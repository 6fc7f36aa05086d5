"""What the pipeline asks of a model: the ``SpeechModel`` protocol, which ``dia_model.Dia`` and
``NullModel`` both meet, and the request/result types of ``dia_model`` it speaks in.

Replicas take these names from here rather than from ``dia_model``, so that ``model/`` stays the
one place in the pipeline that knows where the model comes from (the apps may use ``dia_model``'s
public names directly). Importing this module imports ``dia_model`` (and so torch): the replica's
modules import it inside the functions that need it.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Protocol, Sequence, runtime_checkable

from dia_model import GenerationResult, Request, StreamStats

__all__ = ["SpeechModel", "GenerationResult", "Request", "StreamStats"]


@runtime_checkable
class SpeechModel(Protocol):
    """A loaded text-to-speech model as replicas and apps use it."""

    info: dict[str, Any]  # source, revision, schema, layout, dtype, device (metadata columns)

    @property
    def sample_rate(self) -> int: ...

    @property
    def frame_rate(self) -> float: ...

    @property
    def max_frames(self) -> int: ...

    def max_new_frames_limit(self, prompt_frames: int = 0) -> int:
        """The most frames a row can generate after a prompt of this many frames."""
        ...

    def encode_audio(self, sources: Sequence[Any]) -> list[Any]:
        """Audio (file bytes, paths or waveforms) as prompt codes, one array per source."""
        ...

    def decode_audio(self, codes: Sequence[Any]) -> list[Any]:
        """Codes back to waveforms, one per array."""
        ...

    def stream(self, requests: Iterable[Any], *, slots: int | None = None, decode_audio: bool = True,
               stats: Any = None, lookahead: int | None = None) -> Iterator[GenerationResult]:
        """Results of ``requests`` as each finishes (a ``None`` request: nothing ready yet); ``stats``
        gets ``slots`` as it starts. ``lookahead``: requests it may hold beyond its free slots (a
        replica passes 0)."""
        ...

    def generate(self, texts: Any, **settings: Any) -> list[GenerationResult]:
        """One result per text, generated together (a replica's rescue path after a failed stream)."""
        ...
