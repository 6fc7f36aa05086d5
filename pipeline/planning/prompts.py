"""Voice-clone prompt files: read by the replicas that need them, once each, checked.

A prompt is user input and may name anything: a FIFO, a device, a huge file, a slow mount. Each
read therefore runs in a daemon thread that the caller waits for only until a deadline, only regular files are opened, and at most ``max_bytes`` are read. A read that is refused, fails or
runs past its deadline becomes that row's error; the job goes on.
"""
from __future__ import annotations

import io
import os
import stat
import threading
import time
from collections import OrderedDict
from typing import Optional

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


class PromptReader:
    """Prompt file reads with a deadline: ``get(uri)`` returns ``(bytes, None)`` or ``(None, reason)``
    within ``timeout_s``, however the file behaves. Thread-safe: a replica's unit threads share one
    reader, and a second caller of a file being read waits for that read. A refusal is remembered (a
    bad file is not read again for every row that names it); file bytes are not: the caller keeps
    what it makes of them (a replica, the encoded codes)."""

    def __init__(self, *, timeout_s: float = DEFAULT_TIMEOUT_S, max_bytes: int = DEFAULT_MAX_BYTES,
                 capacity: int = 64) -> None:
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.capacity = capacity
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[None, str]] = OrderedDict()  # uri -> (None, reason)
        self._running: dict[str, tuple[threading.Event, list[tuple[Optional[bytes], Optional[str]]], float]] = {}

    def get(self, uri: str) -> tuple[Optional[bytes], Optional[str]]:
        with self._lock:
            if uri in self._cache:
                self._cache.move_to_end(uri)
                return self._cache[uri]
            if uri not in self._running:
                done, box = threading.Event(), []

                def work() -> None:
                    box.append(read_prompt(uri, self.max_bytes))
                    done.set()

                # a daemon thread: one stuck on a dead mount is abandoned at the deadline, never joined
                threading.Thread(target=work, name="prompt-read", daemon=True).start()
                self._running[uri] = (done, box, time.monotonic())
            done, box, started = self._running[uri]
        done.wait(max(0.0, started + self.timeout_s - time.monotonic()))
        entry = box[0] if box else (None, f"reading audio_prompt {uri} took longer than {self.timeout_s:g} s "
                                          "(data.prompt_timeout_s): a slow mount or a file that never ends?")
        with self._lock:
            self._running.pop(uri, None)
            if entry[0] is None:
                self._cache[uri] = entry
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return entry
