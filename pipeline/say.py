"""``dia-say``: one script in, one audio file out (or N candidate takes side by side).

    dia-say "[S1] Hi. [S2] Hello! (laughs)" -o hi.flac --seed 3
    dia-say -f script.txt -o take.wav --voice-s1 alice.wav --voice-s1-text "I read the news." --candidates 4
    echo "[S1] From stdin." | dia-say -o out.flac --model tiny-random      # no download: noise

The model loads as in the pipeline (``--model`` a Hub id, a local folder or ``tiny-random``;
``--codec``); a named voice comes from the job configs' voice library (``configs/voices/*.yaml``, or
``--voices FILE``). The seed of every take is printed, so a take can be made again exactly. Bad input
is one line that says what to fix, exit status 2.
"""
from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from .config import TINY_RANDOM

FORMATS = {".flac": "flac", ".wav": "wav", ".ogg": "ogg", ".mp3": "mp3"}
DEFAULT_MODEL = "nari-labs/Dia-1.6B-0626"


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
    return ap


def read_script(args: argparse.Namespace) -> str:
    if args.script is not None and args.file is not None:
        raise UsageError("give the script as an argument or with --file, not both")
    if args.file == "-" or (args.script is None and args.file is None):
        if sys.stdin.isatty():
            raise UsageError("no script: pass it as an argument, with --file FILE, or on stdin")
        text = sys.stdin.read()
    elif args.file is not None:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read --file {args.file}: {e}") from None
    else:
        text = args.script
    if not text.strip():
        raise UsageError("the script is empty")
    return text.strip()


def voice_library(files: list[str]) -> dict[str, Any]:
    """name -> VoiceConfig from voices YAML files (default: the ones shipped with the job configs)."""
    from omegaconf import OmegaConf

    from .config import check_voices, register

    register()  # the ${pipeline_examples:...} resolver the bundled library uses
    if not files:
        configs = Path(__file__).resolve().parents[1] / "configs" / "voices"
        if not configs.is_dir():
            configs = Path(__file__).resolve().parent / "conf" / "voices"
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
    from .voices import voice_transcript

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

    from . import audio as audio_io
    from .config import ModelConfig
    from .model_loader import load_model
    from .scripts import WINDOW_S, over_window

    out = Path(args.output).expanduser()
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UsageError(f"-o {args.output}: the extension must be one of {', '.join(FORMATS)}")
    if not out.parent.is_dir():
        raise UsageError(f"-o {args.output}: the folder {out.parent} does not exist")
    if args.candidates < 1:
        raise UsageError("--candidates must be at least 1")
    text = read_script(args)
    clips, transcript = voice_prompt(args)
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
            path = out if args.candidates == 1 else out.with_name(f"{out.stem}-{res.id + 1}{out.suffix}")
            path.write_bytes(audio_io.encode(res.audio, model.sample_rate, fmt))
            written += 1
            extra = f", {len(res.chunks)} chunks" if res.chunks else ""
            print(f"{path}: {res.duration_s:.2f} s, seed {res.seed}{extra}"
                  f"{'' if res.ended_by_eos else ' (hit the length cap)'}")
    finally:
        stop.set()
        bar.join()
    return 0 if written else 1


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from dia_model import DiaError
    from dia_model import AudioError

    from .errors import PipelineError

    try:
        return say(args)
    except (UsageError, DiaError, AudioError, PipelineError) as e:
        message = " ".join(str(e).split()) if not isinstance(e, PipelineError) else str(e)
        print(f"dia-say: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dia-say: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
