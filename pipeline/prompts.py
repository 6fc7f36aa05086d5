"""Voice-clone prompt files: read once on the driver, checked, and shared with replicas through Ray."""
from __future__ import annotations

import io
from collections import OrderedDict
from typing import Any, Optional

import soundfile as sf

from .inputs import filesystem_for


def read_prompt(uri: str) -> tuple[Optional[bytes], Optional[str]]:
    """(file bytes, None) for a readable audio file, else (None, reason)."""
    try:
        fs, path = filesystem_for(uri)
        with fs.open_input_file(path) as f:
            data = f.read()
    except FileNotFoundError:
        return None, f"audio_prompt file not found: {uri}"
    except Exception as e:
        return None, f"audio_prompt {uri} cannot be read: {type(e).__name__}: {e}"
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as e:
        return None, f"audio_prompt {uri} is not a readable audio file: {e}"
    if info.frames <= 0:
        return None, f"audio_prompt {uri} holds no audio"
    return data, None


class PromptStore:
    """Caches each prompt's object-store reference (or its problem), for the most recent ``capacity`` prompts."""

    def __init__(self, capacity: int = 512) -> None:
        self.capacity = capacity
        self._cache: OrderedDict[str, tuple[Any, Optional[str]]] = OrderedDict()

    def get(self, uri: str) -> tuple[Any, Optional[str]]:
        """(ObjectRef, None) for a usable prompt, else (None, reason)."""
        import ray

        if uri in self._cache:
            self._cache.move_to_end(uri)
            return self._cache[uri]
        data, problem = read_prompt(uri)
        entry = (ray.put(data) if data is not None else None, problem)
        self._cache[uri] = entry
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return entry
