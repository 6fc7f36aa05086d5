"""``dia-say``: one script in, one audio file out (or N candidate takes side by side).

    dia-say "[S1] Hi. [S2] Hello! (laughs)" -o hi.flac --seed 3
    dia-say -f script.txt -o take.wav --voice-s1 alice.wav --voice-s1-text "I read the news." --candidates 4
    echo "[S1] From stdin." | dia-say -o out.flac --model tiny-random      # no download: noise

The model loads as in the pipeline (``--model`` a Hub id, a local folder or ``tiny-random``;
``--codec``); a named voice comes from the job configs' voice library (``configs/voices/*.yaml``, or
``--voices FILE``). The seed of every take is printed, so a take can be made again exactly. Bad input
is one line that says what to fix, exit status 2, and is found before the model loads: the output
folder must exist and take new files, no output may be an input (a voice clip, the script file), and
an existing output is refused unless ``--force`` (then it is replaced whole by a rename: a symlink
there is replaced, its target never written). ``--file`` reads regular files only; a script is at
most 1 MB.
"""
from __future__ import annotations

import argparse
import os
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import TINY_RANDOM
from ..files import atomic_write_bytes

FORMATS = {".flac": "flac", ".wav": "wav", ".ogg": "ogg", ".mp3": "mp3"}
DEFAULT_MODEL = "nari-labs/Dia-1.6B-0626"
MAX_SCRIPT_BYTES = 1 << 20  # far over the job's 1,800 s cap on one row; only a bound on what is read


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dia-say", description="Synthesize one Dia script to an audio file.")
    ap.add_argument("script", nargs="?", help="the script, e.g. \"[S1] Hi. [S2] Hello!\" (or -f FILE, or stdin)")
    ap.add_argument("-f", "--file", help="read the script from this file ('-': stdin)")
    ap.add_argument("-o", "--output", required=True, help="output file: .flac, .wav, .ogg or .mp3")
    ap.add_argument("--seed", type=int, default=None, help="seed of the (first) take; default: random, printed")
    ap.add_argument("--candidates", type=int, default=1, help="write N takes with seeds seed, seed+1, ...")
    ap.add_argument("--cfg-scale", type=float, default=3.0)
    ap.add_argument("--temperature", type=float, default=1.2)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--top-k", type=int, default=45)
    ap.add_argument("--max-seconds", type=float, default=None, help="length cap of the new audio")
    for role in ("s1", "s2"):
        ap.add_argument(f"--voice-{role}", help=f"[{role.upper()}]'s voice: an audio clip, or a name in the voice library")
        ap.add_argument(f"--voice-{role}-text", help=f"what is said in --voice-{role}'s clip (not needed for a named voice)")
    ap.add_argument("--voices", action="append", default=[], help="a voices YAML file (name: {audio, transcript}); "
                    "default: the job configs' configs/voices/*.yaml")
    ap.add_argument("--long-form", action="store_true", help="generate in chunks (automatic for scripts over one window)")
    ap.add_argument("--no-end-tag", action="store_true", help="do not append the second-to-last speaker's tag")
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"Hub id, local folder, or {TINY_RANDOM} (default {DEFAULT_MODEL})")
    ap.add_argument("--codec", default=None, help="DAC codec folder, .pth file or Hub id")
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when there is one)")
    ap.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bfloat16 on cuda)")
    ap.add_argument("--cache-dir", default=None, help=f"where {TINY_RANDOM} checkpoints are built")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--force", action="store_true", help="replace output files that exist (the file or link is "
                    "replaced whole; a link's target is never written)")
    return ap


def read_script(args: argparse.Namespace) -> str:
    """The script from the argument, ``--file`` (a regular file) or stdin, at most ``MAX_SCRIPT_BYTES``."""
    if args.script is not None and args.file is not None:
        raise UsageError("give the script as an argument or with --file, not both")
    if args.file == "-" or (args.script is None and args.file is None):
        if sys.stdin.isatty():
            raise UsageError("no script: pass it as an argument, with --file FILE, or on stdin")
        text = _capped(sys.stdin.read, "stdin")
    elif args.file is not None:
        text = _read_script_file(args.file)
    else:
        text = args.script
    if not text.strip():
        raise UsageError("the script is empty")
    return text.strip()


def _read_script_file(name: str) -> str:
    """A regular file only: a FIFO would block and /dev/zero would never end."""
    try:
        fd = os.open(os.path.expanduser(name), os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise UsageError(f"cannot read --file {name}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"--file {name} is not a regular file (use '-f -' to read a pipe)")
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_SCRIPT_BYTES + 1)
    if len(data) > MAX_SCRIPT_BYTES:
        raise UsageError(f"--file {name} is over {MAX_SCRIPT_BYTES >> 10} KB: {_TOO_LONG}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"--file {name} is not UTF-8 text (byte {e.start})") from None


def _capped(read: Callable[[int], str], what: str) -> str:
    try:
        text = read(MAX_SCRIPT_BYTES + 1)  # characters: at least as many bytes
    except UnicodeDecodeError as e:
        raise UsageError(f"the script on {what} is not UTF-8 text (byte {e.start})") from None
    if len(text) > MAX_SCRIPT_BYTES or len(text.encode()) > MAX_SCRIPT_BYTES:
        raise UsageError(f"the script on {what} is over {MAX_SCRIPT_BYTES >> 10} KB: {_TOO_LONG}")
    return text


_TOO_LONG = "that is many hours of speech; split it into several scripts"


def voice_library(files: list[str]) -> dict[str, Any]:
    """name -> VoiceConfig from voices YAML files (default: the ones shipped with the job configs)."""
    from omegaconf import OmegaConf

    from ..config import check_voices, register

    register()  # the ${pipeline_examples:...} resolver the bundled library uses
    if not files:
        package = Path(__file__).resolve().parents[1]  # pipeline/
        configs = package.parent / "configs" / "voices"
        if not configs.is_dir():
            configs = package / "conf" / "voices"
        files = [str(p) for p in sorted(configs.glob("*.yaml"))]
    voices: dict[str, Any] = {}
    for f in files:
        try:
            data = OmegaConf.to_container(OmegaConf.load(f), resolve=True) or {}
        except Exception as e:
            raise UsageError(f"cannot read voices file {f}: {e}") from None
        try:
            voices.update(check_voices(data))
        except Exception as e:
            raise UsageError(f"{f}: {e}") from None
    return voices


def voice_prompt(args: argparse.Namespace) -> tuple[Optional[list[Any]], Optional[str]]:
    """(clip sources for the voices named, in role order, the prompt transcript), or (None, None)."""
    from ..planning.voices import voice_transcript

    clips, texts, names = [], {}, []
    library: Optional[dict[str, Any]] = None
    for role in ("s1", "s2"):
        value, text = getattr(args, f"voice_{role}"), getattr(args, f"voice_{role}_text")
        if value is None:
            if text is not None:
                raise UsageError(f"--voice-{role}-text was given without --voice-{role}")
            names.append(None)
            continue
        if Path(value).expanduser().is_file():
            if not text:
                raise UsageError(f"--voice-{role} {value} needs --voice-{role}-text: what is said in the clip "
                                 "(Dia needs the transcript of a voice prompt)")
            clips.append(str(Path(value).expanduser()))
            texts[role] = text
        else:
            library = voice_library(args.voices) if library is None else library
            if value not in library:
                known = ", ".join(sorted(library)) or "none"
                raise UsageError(f"--voice-{role} {value}: no such file, and no voice of that name "
                                 f"(voice library: {known})")
            clips.append(library[value].audio)
            texts[role] = text or library[value].transcript
        names.append(role)
    if not clips:
        return None, None
    return clips, voice_transcript(tuple(names), texts)


def _progress(stats: Any, total_frames: int, quiet: bool) -> tuple[threading.Event, threading.Thread]:
    """A progress bar fed from the stream's step counter (steps ~ frames of the longest take)."""
    stop = threading.Event()

    def run() -> None:
        from tqdm import tqdm

        with tqdm(total=total_frames, unit="frame", disable=quiet, file=sys.stderr, leave=False) as bar:
            while not stop.wait(0.2):
                bar.update(min(stats.steps, total_frames) - bar.n)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return stop, thread


def say(args: argparse.Namespace) -> int:
    import numpy as np

    from dia_model import Request, StreamStats
    from dia_model import expected_seconds

    from .. import audio as audio_io
    from ..config import ModelConfig
    from ..model.loader import load_model
    from ..model.script_checks import WINDOW_S, over_window

    text = read_script(args)
    clips, transcript = voice_prompt(args)
    if args.candidates < 1:
        raise UsageError("--candidates must be at least 1")
    inputs = [p for p in [args.file if args.file not in (None, "-") else None, *(clips or [])] if p]
    outputs, fmt = plan_outputs(args.output, args.candidates, inputs, force=args.force)
    long_form = args.long_form or over_window(text, end_tag=not args.no_end_tag)
    if args.model == TINY_RANDOM:
        print("dia-say: model tiny-random is random weights: its audio is noise", file=sys.stderr)
    model = load_model(ModelConfig(source=args.model, codec_source=args.codec, device=args.device,
                                   dtype=args.dtype, cache_dir=args.cache_dir), has_gpu=_has_gpu())
    prompt = None
    if clips:
        prompt = np.concatenate(model.encode_audio(clips))
    import secrets

    first = args.seed if args.seed is not None else secrets.randbits(31)
    max_new = None if args.max_seconds is None else max(1, int(args.max_seconds * model.frame_rate))
    requests = [Request(id=k, text=text, cfg_scale=args.cfg_scale, temperature=args.temperature, top_p=args.top_p,
                        top_k=args.top_k, max_new_frames=max_new, seed=first + k, audio_prompt=prompt,
                        prompt_transcript=transcript, long_form=long_form, end_tag=not args.no_end_tag)
                for k in range(args.candidates)]
    stats = StreamStats()
    frames = max_new or int(min(expected_seconds(text), WINDOW_S) * model.frame_rate * 1.5) or 1
    stop, bar = _progress(stats, frames, args.quiet or not sys.stderr.isatty())
    written = 0
    try:
        for res in model.stream(requests, slots=args.candidates, stats=stats):  # first finished, first written
            if res.error:
                raise UsageError(res.error)
            path = outputs[res.id]
            replaced = os.path.lexists(path)
            atomic_write_bytes(path, audio_io.encode(res.audio, model.sample_rate, fmt))
            written += 1
            if replaced:
                print(f"dia-say: replaced {path} (--force)", file=sys.stderr)
            extra = f", {len(res.chunks)} chunks" if res.chunks else ""
            print(f"{path}: {res.duration_s:.2f} s, seed {res.seed}{extra}"
                  f"{'' if res.ended_by_eos else ' (hit the length cap)'}")
    finally:
        stop.set()
        bar.join()
    return 0 if written else 1


def plan_outputs(output: str, candidates: int, inputs: list[str], *, force: bool) -> tuple[list[Path], str]:
    """The file of each take and the audio format, checked before any model loads: a known extension,
    an existing folder this process can create files in, no input overwritten, and no existing file
    replaced without ``force`` (a replaced file, or link, is swapped whole by a rename, never written
    through)."""
    out = Path(output).expanduser()
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UsageError(f"-o {output}: the extension must be one of {', '.join(FORMATS)}")
    folder = out.parent
    if not folder.is_dir():
        raise UsageError(f"-o {output}: the folder {folder} does not exist")
    paths = [out] if candidates == 1 else [out.with_name(f"{out.stem}-{k + 1}{out.suffix}") for k in range(candidates)]
    for path in paths:
        if path.is_dir():
            raise UsageError(f"-o {output}: {path} is a folder; give a file name")
        for source in inputs:
            if os.path.abspath(path) == os.path.abspath(os.path.expanduser(source)) or (
                    path.exists() and os.path.exists(source) and os.path.samefile(path, source)):
                raise UsageError(f"-o {output}: {path} is an input of this run ({source}); write elsewhere")
        if os.path.lexists(path) and not force:
            raise UsageError(f"-o {output}: {path} exists; pass --force to replace it, or choose another name")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".dia-say-", suffix=".part")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"-o {output}: cannot create files in {folder}: {e.strerror}") from None
    return paths, fmt


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from dia_model import DiaError
    from dia_model import AudioError

    from ..errors import PipelineError

    try:
        return say(args)
    except (UsageError, DiaError, AudioError, PipelineError) as e:
        message = " ".join(str(e).split()) if not isinstance(e, PipelineError) else str(e)
        print(f"dia-say: error: {message}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the disk filled up while writing a take: what was written stays whole
        where = f"{e.filename}: " if isinstance(e.filename, str) else ""
        print(f"dia-say: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dia-say: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
