"""The audition UI: try a script with a few voices, settings and seeds, listen, pick, export as a job.

    python -m pipeline.audition --model tiny-random            # http://127.0.0.1:7860
    dia-audition --model nari-labs/Dia-1.6B-0626 --voices configs/voices/mine.yaml

Why not Gradio: this is one page and a few JSON endpoints on the standard library's HTTP server, so
it adds no dependency to a package that already pins Ray, torch and transformers (Gradio brings
FastAPI, uvicorn, pandas and more), it works offline with no console errors (Gradio's default theme
fetches web fonts), and it is tested with the same headless Chromium as report.html.

This module is the application: the model, the voice library, the queue of batches and their takes,
and exports. ``audition_server`` is the HTTP side (who may call, how big a request may be) and
``audition_page`` the page. The model loads once; one worker thread runs one batch at a time, each
batch's candidates through ``Dia.stream()`` together, so the first finished take is served first.

Everything is bounded (``Limits``): batches waiting, takes kept (older batches' files are deleted),
the script (the checks and length cap of one job row), voices and their bytes on disk. Takes,
uploaded voices and exports live under ``--workdir`` (default ``runs/audition``) and nowhere else;
takes are scratch, so the ones a previous run left are removed at start.
"""
from __future__ import annotations

import argparse
import enum
import io
import logging
import os
import queue
import re
import shlex
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .audition_server import Busy, serve
from ..files import atomic_write_bytes

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")  # always with fullmatch: `$` would accept a trailing newline
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
VOICE_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
RESERVED_EXPORT_NAMES = {"config"}  # an export called config.yaml would shadow the pipeline's own


@dataclass(frozen=True)
class Limits:
    """What one audition server accepts at most (a local tool, but any page or process may call it)."""

    candidates: int = 8
    queued_batches: int = 4  # waiting behind the running one; more is 429
    kept_batches: int = 16  # finished batches whose takes stay on disk and in memory
    script_bytes: int = 64 << 10  # before the job-row checks (which cap expected speech at 1,800 s)
    voices: int = 64  # uploaded voices
    voices_bytes: int = 256 << 20  # uploaded voices on disk, together
    upload_bytes: int = 32 << 20  # one voice clip
    json_bytes: int = 1 << 20  # one JSON request body


class BatchState(enum.Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


@dataclass
class Batch:
    """One Generate press: its settings, and its takes as they finish."""

    id: str
    text: str
    settings: dict[str, Any]
    state: BatchState = BatchState.queued
    takes: list[dict[str, Any]] = field(default_factory=list)
    error: Optional[str] = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def finished(self) -> bool:
        return self.state in (BatchState.done, BatchState.failed, BatchState.cancelled)

    def view(self) -> dict[str, Any]:
        return {"takes": list(self.takes), "done": self.finished, "state": self.state.value, "error": self.error}


class Audition:
    """The model, the voice library, the batches and their takes: everything the HTTP handler calls.

    Errors a caller should see are ``ValueError`` (bad input, 400), ``KeyError`` (no such thing, 404)
    and ``Busy`` (a limit is full, 429); their texts name no absolute path."""

    def __init__(self, model: Any, model_source: str, workdir: Path, voices: dict[str, Any],
                 limits: Limits = Limits(), max_script_seconds: float = 1800.0) -> None:
        from ..planning.voices import VoiceBook

        self.model = model
        self.model_source = model_source
        self.workdir = Path(workdir)
        self.limits = limits
        self.max_script_seconds = max_script_seconds
        for sub in ("takes", "voices", "exports"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        for old in (self.workdir / "takes").iterdir():  # scratch of an earlier run: nothing refers to it now
            if old.is_file() or old.is_symlink():
                old.unlink()
        self.library = dict(voices)  # name -> VoiceConfig from the voices YAML files (never replaced)
        self.voices = dict(voices)  # library + uploads
        self.book = VoiceBook(lambda clip: model.encode_audio([clip])[0],
                              {n: (v.audio, v.transcript) for n, v in voices.items()})
        self.batches: dict[str, Batch] = {}  # insertion order = age
        self.lock = threading.Lock()
        self._work: queue.Queue[Optional[Batch]] = queue.Queue(maxsize=limits.queued_batches)
        self._closed = False
        self._worker = threading.Thread(target=self._serve_batches, name="audition-worker", daemon=True)
        self._worker.start()

    # -- voices ---------------------------------------------------------------------------------
    def add_voice(self, name: str, transcript: str, filename: str, data: bytes) -> list[str]:
        """Keep an uploaded clip as a voice; returns every voice name."""
        import soundfile as sf

        from ..config import VoiceConfig

        if not _NAME.fullmatch(name):
            raise ValueError("a voice name is a letter, then up to 39 letters, digits, _ or -")
        if name in self.library:
            raise ValueError(f"{name!r} is a voice of the library; give the upload another name")
        transcript = " ".join(_check_text(transcript, "the transcript").split())
        if not transcript:
            raise ValueError("give the clip's transcript: Dia needs the words of a voice prompt")
        if len(transcript.encode()) > 1024:
            raise ValueError("the transcript is over 1,024 bytes: a voice clip should be 5-10 s of speech")
        suffix = os.path.splitext(filename)[1].lower() or ".wav"
        if suffix not in VOICE_SUFFIXES:
            raise ValueError("upload a .wav, .flac, .mp3 or .ogg clip")
        if len(data) > self.limits.upload_bytes:
            raise Busy(f"a clip may have {self.limits.upload_bytes >> 20} MB at most", status=413)
        try:
            info = sf.info(io.BytesIO(data))
        except Exception:
            raise ValueError("the clip is not a readable audio file (wav, flac, mp3 or ogg)") from None
        if info.frames <= 0:
            raise ValueError("the clip holds no audio")
        folder = self.workdir / "voices"
        with self.lock:
            others = [p for p in folder.iterdir() if p.is_file() and p.stem != name]
            if name not in self.voices and len(self.voices) - len(self.library) >= self.limits.voices:
                raise Busy(f"{self.limits.voices} uploaded voices at most: delete some from {folder.name}/ "
                           "in the workdir and restart")
            held = sum(p.stat().st_size for p in others)
            if held + len(data) > self.limits.voices_bytes:
                raise Busy(f"uploaded voices may take {self.limits.voices_bytes >> 20} MB at most and hold "
                           f"{held / 2**20:.1f} MB: delete some from {folder.name}/ in the workdir")
            path = folder / f"{name}{suffix}"
            atomic_write_bytes(path, data)
            for stale in folder.glob(f"{name}.*"):  # the same voice uploaded earlier as another format
                if stale.name != path.name and stale.suffix in VOICE_SUFFIXES:
                    stale.unlink()
            self.voices[name] = VoiceConfig(audio=str(path.resolve()), transcript=transcript)
            self.book.add(name, str(path.resolve()), transcript)
            return sorted(self.voices)

    def voice_names(self) -> list[str]:
        with self.lock:
            return sorted(self.voices)

    # -- batches --------------------------------------------------------------------------------
    def start(self, form: dict[str, Any]) -> str:
        """Check the form, then queue its candidates; returns the batch id (``Busy`` when the queue is full)."""
        settings = _settings(form, self.limits.candidates)
        text = form.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text: give a script, e.g. [S1] Hello. [S2] Hi!")
        text = text.strip()
        if len(text.encode()) > self.limits.script_bytes:
            raise ValueError(f"the script is over {self.limits.script_bytes >> 10} KB: split it into several rows")
        for role in ("voice_s1", "voice_s2"):
            if settings[role] is not None and settings[role] not in self.voices:
                raise ValueError(f"{role}: no voice named {settings[role]!r}")
        problems = self._check_script(text, settings["end_tag"])
        if problems:
            raise ValueError("; ".join(problems))
        batch = Batch(uuid.uuid4().hex[:16], text, settings)
        with self.lock:
            try:
                self._work.put_nowait(batch)
            except queue.Full:
                raise Busy(f"{self.limits.queued_batches} batches are already waiting: wait for them or "
                           "cancel one") from None
            self.batches[batch.id] = batch
            self._forget_old_batches()
        return batch.id

    def _check_script(self, text: str, end_tag: bool) -> list[str]:
        """The checks a job row's script gets (Dia's, and the long-form ones with the job's length cap)."""
        from ..config import EndTagMode, GenerationConfig
        from ..model.script_checks import script_checker

        gen = GenerationConfig(end_tag=EndTagMode.auto if end_tag else EndTagMode.off,
                               max_script_seconds=self.max_script_seconds)
        return script_checker(gen)(text)

    def batch(self, batch_id: str) -> dict[str, Any]:
        with self.lock:
            state = self.batches.get(batch_id)
            if state is None:
                raise KeyError("no such batch (batches are kept while the server runs, the newest "
                               f"{self.limits.kept_batches} once finished)")
            return state.view()

    def cancel(self, batch_id: str) -> dict[str, Any]:
        """Stop a batch: a waiting one never starts, a running one stops at its next finished take."""
        with self.lock:
            state = self.batches.get(batch_id)
            if state is None:
                raise KeyError("no such batch")
            state.cancel.set()
            if state.state == BatchState.queued:
                state.state = BatchState.cancelled
            return state.view()

    def take_file(self, name: str) -> Path:
        """The file of a take the server made (``KeyError`` otherwise)."""
        if not re.fullmatch(r"[0-9a-f]{16}-[0-9]{1,2}\.wav", name):
            raise KeyError("no such take")
        path = self.workdir / "takes" / name
        if not path.is_file() or path.is_symlink():
            raise KeyError("no such take")
        return path

    def _forget_old_batches(self) -> None:
        """Drop the oldest finished batches past ``kept_batches``, files included (caller holds the lock)."""
        finished = [b for b in self.batches.values() if b.finished]
        for old in finished[: max(0, len(finished) - self.limits.kept_batches)]:
            del self.batches[old.id]
            for take in old.takes:
                (self.workdir / take["audio"]).unlink(missing_ok=True)

    def close(self) -> None:
        """Cancel every batch and let the worker thread end (after the batch it is running, if any)."""
        with self.lock:
            self._closed = True
            for batch in self.batches.values():
                batch.cancel.set()
        try:
            self._work.put_nowait(None)  # wakes an idle worker; a busy one sees _closed next
        except queue.Full:
            pass

    def _serve_batches(self) -> None:
        while not self._closed:
            batch = self._work.get()
            if batch is None:
                break
            with self.lock:
                if batch.cancel.is_set():
                    continue
                batch.state = BatchState.running
            try:
                self._run(batch)
                final, error = (BatchState.cancelled, None) if batch.cancel.is_set() else (BatchState.done, None)
            except Exception as e:  # a generation that failed: its batch says why, the server goes on
                final, error = BatchState.failed, _plain(e)
                log.warning("audition batch %s failed: %s", batch.id, error)
            with self.lock:
                batch.state, batch.error = final, error
                self._forget_old_batches()

    def _run(self, batch: Batch) -> None:
        from dia_model import Request

        from .. import audio as audio_io
        from ..quality.metrics import row_metrics
        from ..model.script_checks import over_window

        s, text = batch.settings, batch.text
        voices = (s["voice_s1"], s["voice_s2"])
        prompt, transcript = self.book.prompt(voices) if any(voices) else (None, None)
        long_form = over_window(text, end_tag=s["end_tag"])
        max_new = None if s["max_seconds"] is None else max(1, int(s["max_seconds"] * self.model.frame_rate))
        grid = s["cfg_scales"] or [s["cfg_scale"]]
        requests = [Request(id=k, text=text, cfg_scale=grid[k % len(grid)], temperature=s["temperature"],
                            top_p=s["top_p"], top_k=s["top_k"], max_new_frames=max_new,
                            seed=s["seed"] + k, audio_prompt=prompt, prompt_transcript=transcript,
                            long_form=long_form, end_tag=s["end_tag"])
                    for k in range(s["candidates"])]
        results = self.model.stream(requests, slots=len(requests))  # first finished, first served
        try:
            for res in results:
                if res.error:
                    raise ValueError(res.error)
                name = f"{batch.id}-{res.id + 1}.wav"
                atomic_write_bytes(self.workdir / "takes" / name, audio_io.encode(res.audio, self.model.sample_rate, "wav"))
                metrics = row_metrics(res.audio, self.model.sample_rate, text)
                take = {"n": res.id + 1, "audio": f"takes/{name}", "seed": res.seed,
                        "cfg_scale": requests[res.id].cfg_scale, "seconds": round(res.duration_s, 3),
                        "ended_by_eos": res.ended_by_eos,
                        "metrics": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in metrics.items()}}
                with self.lock:
                    batch.takes.append(take)
                if batch.cancel.is_set():
                    break
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()  # stops the engine's loop at once

    # -- export ---------------------------------------------------------------------------------
    def export(self, batch_id: str, take: int, name: str) -> dict[str, Any]:
        """The chosen take's settings as a Hydra config file the pipeline loads (``--config-name``).

        A config file rather than command-line overrides: transcripts hold spaces, quotes and commas
        that Hydra's override grammar and the shell would each have to be quoted for."""
        from omegaconf import OmegaConf

        if not _NAME.fullmatch(name) or name in RESERVED_EXPORT_NAMES:
            raise ValueError("an export name is a letter, then up to 39 letters, digits, _ or - (not 'config')")
        with self.lock:
            state = self.batches.get(batch_id)
            chosen = next((t for t in (state.takes if state else []) if t["n"] == take), None)
            if state is None or chosen is None:
                raise KeyError("no such take: generate, then export one of its takes")
            s = dict(state.settings)
            voices = {v: self.voices[v] for v in (s["voice_s1"], s["voice_s2"]) if v}
        generation: dict[str, Any] = {"cfg_scale": chosen["cfg_scale"], "temperature": s["temperature"],
                                      "top_p": s["top_p"], "top_k": s["top_k"],
                                      "end_tag": "auto" if s["end_tag"] else "off"}
        if s["max_seconds"] is not None:
            generation["max_seconds"] = s["max_seconds"]
        doc = {"defaults": ["config", "_self_"], "model": {"source": self.model_source},
               "data": {"name": name}, "generation": generation,
               "voices": {v: {"audio": c.audio, "transcript": c.transcript} for v, c in voices.items()}}
        columns = {f"voice_{role}": s[f"voice_{role}"] for role in ("s1", "s2") if s[f"voice_{role}"]}
        folder = self.workdir / "exports"
        command = ("python -m pipeline --config-dir " + shlex.quote(_shown(folder)) + f" --config-name {name} "
                   "data=parquet data.input=<your scripts>")
        header = [f"# exported by the audition UI: the settings of take {take}", f"# run: {command}",
                  f"# seeds: each row gets its own, derived from generation.seed and its id; a row with a seed "
                  f"column of {chosen['seed']} and this script makes this very take"]
        if columns:
            header.append("# rows pick the voices with the columns: " + ", ".join(f"{k}={v}" for k, v in columns.items()))
        atomic_write_bytes(folder / f"{name}.yaml", ("\n".join(header) + "\n" + OmegaConf.to_yaml(doc)).encode())
        return {"file": f"exports/{name}.yaml", "command": command, "columns": columns,
                "settings": {"generation": generation, "voices": sorted(voices)}}


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is under it (as the user typed it), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def _plain(e: BaseException) -> str:
    """An error as one line for the page."""
    return " ".join(f"{e}".split()) or type(e).__name__


def _number(form: dict[str, Any], key: str, default: float, lo: float, hi: float, integer: bool = False) -> Any:
    raw = form.get(key)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise ValueError(f"{key} must be {'an integer' if integer else 'a number'}")
    try:
        value = int(raw) if integer else float(raw)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{key} must be {'an integer' if integer else 'a number'}, got {str(raw)[:40]!r}") from None
    if not lo <= value <= hi:  # also refuses nan
        raise ValueError(f"{key} must be in [{lo:g}, {hi:g}], got {value:g}")
    return value


def _settings(form: dict[str, Any], max_candidates: int) -> dict[str, Any]:
    raw_grid = form.get("cfg_grid") or ""
    if not isinstance(raw_grid, str) or len(raw_grid) > 200:
        raise ValueError("cfg_grid must be a few numbers, e.g. 2 3 4")
    cfg_scales = [_number({"cfg_grid": g}, "cfg_grid", 0, 0.0, 100.0) for g in raw_grid.replace(",", " ").split()]
    voices = {}
    for role in ("voice_s1", "voice_s2"):
        value = form.get(role)
        value = None if value is None or value == "" else value
        if value is not None and not (isinstance(value, str) and _NAME.fullmatch(value)):
            raise ValueError(f"{role} must be a voice name")
        voices[role] = value
    end_tag = form.get("end_tag", True)
    if not isinstance(end_tag, bool):
        raise ValueError("end_tag must be true or false")
    return {
        "cfg_scale": _number(form, "cfg_scale", 3.0, 0.0, 100.0), "cfg_scales": cfg_scales,
        "temperature": _number(form, "temperature", 1.2, 0.0, 100.0), "top_p": _number(form, "top_p", 0.95, 1e-6, 1.0),
        "top_k": _number(form, "top_k", 45, 1, 1024, integer=True),
        "seed": _number(form, "seed", 0, 0, 2**31, integer=True),
        "candidates": _number(form, "candidates", 2, 1, max_candidates, integer=True),
        "max_seconds": None if form.get("max_seconds") in (None, "") else _number(form, "max_seconds", 0, 0.1, 35.0),
        **voices, "end_tag": end_tag,
    }


def _check_text(value: str, what: str) -> str:
    if _CONTROL.search(value):
        raise ValueError(f"{what} holds control characters")
    return value


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="dia-audition", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nari-labs/Dia-1.6B-0626", help="Hub id, local folder or tiny-random")
    ap.add_argument("--codec", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--voices", action="append", default=[], help="voices YAML file(s); default: configs/voices/*.yaml")
    ap.add_argument("--workdir", default="runs/audition", help="takes, uploaded voices and exports go here")
    ap.add_argument("--host", default="127.0.0.1", help="address to serve on. 127.0.0.1 or ::1: this machine only. "
                    "0.0.0.0 or :: serves every network this machine is on: anyone there who has the printed "
                    "address (it carries the token) can generate and upload")
    ap.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                    help="another name this server may be reached by (the Host header), e.g. the machine's DNS "
                         "name when serving a network; loopback names and IP addresses need none")
    ap.add_argument("--port", type=int, default=7860)
    args = ap.parse_args(argv)
    from .audition_server import AuditionServer, ServerError
    from ..config import ModelConfig
    from ..errors import PipelineError
    from ..model.loader import load_model
    from .say import UsageError, _has_gpu, voice_library

    try:
        server = AuditionServer(args.host, args.port, allowed_hosts=args.allow_host)  # bind before the model loads
    except ServerError as e:
        print(f"dia-audition: error: {e}", file=sys.stderr)
        return 2
    try:
        library = voice_library(args.voices)
        print(f"loading {args.model} ...", file=sys.stderr)
        model = load_model(ModelConfig(source=args.model, codec_source=args.codec, device=args.device,
                                       dtype=args.dtype, cache_dir=args.cache_dir), has_gpu=_has_gpu())
        app = Audition(model, args.model, Path(args.workdir).resolve(), library)
    except (UsageError, PipelineError, OSError) as e:
        server.server_close()
        print(f"dia-audition: error: {_plain(e)}", file=sys.stderr)
        return 2
    serve(app, server=server)  # the address printed carries the token: the page needs it once
    where = ("this machine only" if server.loopback else
             f"every network {args.host} reaches: anyone with this address can generate and upload")
    print(f"audition UI on {server.url} ({where}); Ctrl-C stops it", file=sys.stderr)
    if args.model == "tiny-random":
        print("model tiny-random is random weights: its audio is noise", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
