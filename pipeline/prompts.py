"""Voice-clone prompt files: read on the driver off the scheduler loop, checked, and shared with
replicas through Ray's object store.

A prompt is user input and may name anything: a FIFO, a device, a huge file, a slow mount. Reads
therefore never run on the scheduler's thread: each one runs in a daemon thread with a deadline,
only regular files are opened, and at most ``max_bytes`` are read. A read that is refused, fails or
runs past its deadline becomes that row's error; the job goes on.
"""
from __future__ import annotations

import io
import os
import stat
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Optional

import soundfile as sf

from .inputs import filesystem_for, is_uri

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_BYTES = 64 << 20  # a 10 s voice clip is ~1 MB as 16-bit WAV


class PromptTooLarge(ValueError):
    """The prompt file is larger than the configured limit."""


def _read_local(path: str, max_bytes: int) -> bytes:
    info = os.stat(path)  # stat does not block on a FIFO; open() would
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("not a regular file (a pipe, device or folder cannot be a prompt)")
    if info.st_size > max_bytes:
        raise PromptTooLarge(f"{info.st_size} bytes, over the {max_bytes}-byte limit")
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PromptTooLarge(f"more than {max_bytes} bytes")
    return data


def _read_remote(uri: str, max_bytes: int) -> bytes:
    import pyarrow.fs as pafs

    fs, path = filesystem_for(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(uri)
    if info.type != pafs.FileType.File:
        raise ValueError("not a regular file")
    if info.size is not None and info.size > max_bytes:
        raise PromptTooLarge(f"{info.size} bytes, over the {max_bytes}-byte limit")
    with fs.open_input_stream(path) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PromptTooLarge(f"more than {max_bytes} bytes")
    return data


def read_prompt(uri: str, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Optional[bytes], Optional[str]]:
    """(file bytes, None) for a readable audio file, else (None, reason). Blocks: call it off-loop."""
    local = uri[len("file://"):] if uri.startswith("file://") else uri
    try:
        data = _read_remote(uri, max_bytes) if is_uri(uri) else _read_local(os.path.expanduser(local), max_bytes)
    except FileNotFoundError:
        return None, f"audio_prompt file not found: {uri}"
    except PromptTooLarge as e:
        return None, f"audio_prompt {uri} is too large ({e}; data.prompt_max_mb)"
    except Exception as e:
        return None, f"audio_prompt {uri} cannot be read: {type(e).__name__}: {e}"
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as e:
        return None, f"audio_prompt {uri} is not a readable audio file: {e}"
    if info.frames <= 0:
        return None, f"audio_prompt {uri} holds no audio"
    return data, None


@dataclass
class _Read:
    uri: str
    started: float
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[Optional[bytes], Optional[str]] = (None, None)


class PromptStore:
    """Asynchronous prompt reads plus a cache of each prompt's object reference (or its problem).

    ``get(uri)`` never blocks: it returns the cached ``(ObjectRef, None)`` or ``(None, reason)``, or
    None while the read is still under way (call ``poll()`` from the loop to collect finished reads).
    """

    def __init__(self, *, timeout_s: float = DEFAULT_TIMEOUT_S, max_bytes: int = DEFAULT_MAX_BYTES,
                 capacity: int = 512, max_parallel: int = 8) -> None:
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.capacity = capacity
        self.max_parallel = max_parallel
        self._cache: OrderedDict[str, tuple[Any, Optional[str]]] = OrderedDict()
        self._running: dict[str, _Read] = {}
        self._waiting: deque[str] = deque()

    def get(self, uri: str) -> Optional[tuple[Any, Optional[str]]]:
        """The prompt's entry, or None while it is being read (the read is started if needed)."""
        if uri in self._cache:
            self._cache.move_to_end(uri)
            return self._cache[uri]
        if uri not in self._running and uri not in self._waiting:
            self._waiting.append(uri)
            self._start_reads()
        return None

    def _start_reads(self) -> None:
        while self._waiting and len(self._running) < self.max_parallel:
            uri = self._waiting.popleft()
            read = _Read(uri, time.monotonic())

            def work(r: _Read = read) -> None:
                r.result = read_prompt(r.uri, self.max_bytes)
                r.done.set()

            # a daemon thread: one stuck on a dead mount can be abandoned and never blocks exit
            threading.Thread(target=work, name="prompt-read", daemon=True).start()
            self._running[uri] = read

    def poll(self) -> None:
        """Move finished (or overdue) reads into the cache; start waiting ones."""
        import ray

        now = time.monotonic()
        for uri, read in list(self._running.items()):
            if read.done.is_set():
                data, problem = read.result
                entry = (ray.put(data) if data is not None else None, problem)
            elif now - read.started > self.timeout_s:
                entry = (None, f"reading audio_prompt {uri} took longer than {self.timeout_s:g} s "
                               "(data.prompt_timeout_s): a slow mount or a file that never ends?")
            else:
                continue
            del self._running[uri]
            self._cache[uri] = entry
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        self._start_reads()
