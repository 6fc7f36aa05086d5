"""The public entry point: ``Dia.from_pretrained(...)`` and ``Dia.generate(...)``."""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from . import checkpoint
from .config import DiaConfig
from .devices import resolve_device, resolve_dtype
from .errors import CheckpointError, DiaError
from .generate import RowRequest, generate_rows
from .model import DiaModel
from .text import encode_script, validate_script

if TYPE_CHECKING:
    from .streaming import StreamStats

DEFAULT_CODEC = "descript/dac_44khz"
MAX_SEED = 2**63 - 1


@dataclass
class GenerationResult:
    codes: np.ndarray  # int64 [frames, channels]: delay reverted, prompt excluded; what the codec decodes
    ended_by_eos: bool  # False: the row ran into its length limit
    seed: int | None  # the seed actually used (drawn at random when none was given)
    prompt_frames: int
    settings: dict[str, Any] = field(default_factory=dict)
    audio: np.ndarray | None = None  # float32 mono waveform, when decoded
    sample_rate: int = 44100
    frame_rate: float = 44100 / 512
    id: Any = None  # stream(): the request's id
    error: str | None = None  # stream(): why this request was not generated (codes are then empty)
    chunks: list[Any] | None = None  # long form: a longform.ChunkInfo per chunk (text, frames, prompt)
    end_tag_applied: bool = False  # end_tag=True: whether the script got the second-to-last speaker's tag

    @property
    def frames(self) -> int:
        return int(self.codes.shape[0])

    @property
    def duration_s(self) -> float:
        return self.frames / self.frame_rate


@dataclass
class Request:
    """One request for :meth:`Dia.stream`; the settings mean what they mean in :meth:`Dia.generate`."""

    id: Any
    text: str
    cfg_scale: float = 3.0
    temperature: float = 1.2
    top_p: float = 0.95
    top_k: int = 45
    max_new_frames: int | None = None
    seed: int | None = None
    audio_prompt: Any = None  # codes [frames, 9], an audio file path, or a file's bytes
    prompt_transcript: str | None = None
    long_form: bool = False  # split a long script into chunks that carry the voices over (dia_model.longform)
    chunk_seconds: float = 20.0  # long form: expected speech per chunk at most
    tail_seconds: float = 6.0  # long form: how much of a chunk's end prompts the next (0: none)
    end_tag: bool = False  # append the second-to-last speaker's tag (the seed's cut-off remedy)


CPU_SLOTS = 16
MAX_AUTO_SLOTS = 256


def _per_row(name: str, value: Any, n: int) -> list[Any]:
    if isinstance(value, (list, tuple, np.ndarray)) and not (name == "audio_prompts" and isinstance(value, np.ndarray)):
        if len(value) != n:
            raise DiaError(f"{name} has {len(value)} entries for {n} texts; give one per text or a single value")
        return list(value)
    return [value] * n


class Dia:
    """A loaded Dia model (and optionally its audio codec)."""

    def __init__(self, model: DiaModel, device: torch.device, info: dict[str, Any], codec: Any = None):
        self.model = model
        self.config: DiaConfig = model.cfg
        self.device = device
        self.info = info
        self.codec = codec

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike = "nari-labs/Dia-1.6B-0626",
        *,
        revision: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "float32",
        load_codec: bool = True,
        codec_source: str | os.PathLike | None = None,
        codec_dtype: str | torch.dtype = "float32",
        compile: bool = False,
    ) -> "Dia":
        """Load a checkpoint from a local folder/file or a Hub repo id (only needed files are fetched).

        Both config schemas and both key layouts are accepted; loading is strict.
        A folder with a ``codec/`` subfolder (tiny checkpoints) brings its own codec.
        ``compile=True`` compiles the decoder forward with ``torch.compile`` (dynamic
        shapes, so the growing timeline and shrinking batch do not recompile).
        ``codec_dtype``: the DAC's precision; ``"float16"`` halves its time on a GPU, within the
        tolerance ``bench/gpu_parity.py`` measures against fp32 (keep fp32 on a CPU: it is slower there).
        """
        dev, torch_dtype = resolve_device(device), resolve_dtype(dtype)
        resolved = checkpoint.resolve(source, revision)
        cfg = DiaConfig.from_json(str(resolved.config_path))
        with torch.device("meta"):
            model = DiaModel(cfg)
        params, layout = checkpoint.load_parameters(
            cfg, resolved.weight_files, torch_dtype, dev, model.parameter_shapes()
        )
        model.load_state_dict(params, strict=True, assign=True)
        del params
        model.init_buffers(dev)
        model.requires_grad_(False).eval()
        if compile:  # with torch's matmul: an opaque C++ kernel call would split the graph
            model.decoder.forward = torch.compile(model.decoder.forward, dynamic=True)
        elif dev.type == "cpu":
            from .cpu_kernels import cpu_matmul

            matmul = cpu_matmul()
            if matmul is not None:
                model.use_matmul(matmul)
        info = {
            "compiled": compile,
            "source": str(source), "revision": revision, "schema": cfg.schema, "layout": layout,
            "weights": [p.name for p in resolved.weight_files], "dtype": str(torch_dtype).replace("torch.", ""),
            "device": str(dev),
        }
        codec = None
        if load_codec:
            from .codec import DacCodec

            local = resolved.folder / "codec"
            src = codec_source or (local if (local / "config.json").is_file() else DEFAULT_CODEC)
            codec = DacCodec.from_pretrained(str(src), device=str(dev), dtype=codec_dtype)
            if codec.num_codebooks != cfg.channels or codec.codebook_size != cfg.eos_token:
                raise CheckpointError(
                    f"codec {src} has {codec.num_codebooks} codebooks of {codec.codebook_size} codes; this Dia "
                    f"model needs {cfg.channels} of {cfg.eos_token} (the 44.1 kHz DAC, descript/dac_44khz)"
                )
            info["codec"] = str(src)
            info["codec_dtype"] = str(codec.dtype).replace("torch.", "")
        return cls(model, dev, info, codec)

    # ------------------------------------------------------------------ facts
    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate if self.codec is not None else 44100

    @property
    def frame_rate(self) -> float:
        return self.codec.frame_rate if self.codec is not None else 44100 / 512

    @property
    def max_frames(self) -> int:
        return self.config.max_frames

    def max_new_frames_limit(self, prompt_frames: int = 0) -> int:
        """The most frames a row can generate after a prompt of this many frames."""
        return self.config.max_frames - self.config.max_delay - 1 - prompt_frames

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        texts: str | Sequence[str],
        *,
        cfg_scale: float | Sequence[float] = 3.0,
        temperature: float | Sequence[float] = 1.2,
        top_p: float | Sequence[float] = 0.95,
        top_k: int | Sequence[int] = 45,
        max_new_frames: int | None | Sequence[int | None] = None,
        seed: int | None | Sequence[int | None] = None,
        audio_prompts: Any = None,
        prompt_transcripts: str | None | Sequence[str | None] = None,
        decode_audio: bool = True,
        reference_prompt_span: bool = False,
        end_tag: bool = False,
        long_form: bool = False,
        chunk_seconds: float = 20.0,
        tail_seconds: float = 6.0,
    ) -> list[GenerationResult]:
        """Generate one result per text; every setting is a scalar or one value per text.

        ``top_k`` is the reference's ``cfg_filter_top_k``.  ``max_new_frames=None``
        means as many as the model allows after the row's prompt.  Audio prompts are
        codes ``[frames, 9]`` or audio file paths (needs the codec); the prompt's
        transcript is prefixed to the text when given.  All input is checked first:
        a :class:`DiaError` names every bad row before any decoding starts.

        A row's result depends only on its own inputs and seed.  The one place the
        reference lets rows interact (prompts of different lengths in one batch) is
        reproduced bit for bit with ``reference_prompt_span=True``.

        ``end_tag=True`` appends the second-to-last speaker's tag to each script (the seed's remedy
        for a cut-off last word; ``result.end_tag_applied`` says where it applied).
        ``long_form=True`` splits each script into chunks of at most ``chunk_seconds`` of expected
        speech, prompting each chunk with the last ~``tail_seconds`` of the one before, and joins
        them (see :mod:`dia_model.longform`; ``result.chunks`` describes each). Long-form rows run
        through :meth:`stream`, so chunks of different scripts share the batch.
        """
        single = isinstance(texts, str)
        text_list = [texts] if single else list(texts)
        n = len(text_list)
        if n == 0:
            return []
        if long_form:
            return self._generate_long_form(text_list, decode_audio=decode_audio, chunk_seconds=chunk_seconds,
                                            tail_seconds=tail_seconds, end_tag=end_tag, settings={
                                                "cfg_scale": cfg_scale, "temperature": temperature, "top_p": top_p,
                                                "top_k": top_k, "max_new_frames": max_new_frames, "seed": seed,
                                                "audio_prompt": audio_prompts,
                                                "prompt_transcript": prompt_transcripts})
        tagged = [False] * n
        if end_tag:
            from .longform import with_end_tag

            for i, text in enumerate(text_list):
                if isinstance(text, str):
                    text_list[i], tagged[i] = with_end_tag(text)
        rows = {
            "cfg_scale": _per_row("cfg_scale", cfg_scale, n),
            "temperature": _per_row("temperature", temperature, n),
            "top_p": _per_row("top_p", top_p, n),
            "top_k": _per_row("top_k", top_k, n),
            "max_new_frames": _per_row("max_new_frames", max_new_frames, n),
            "seed": _per_row("seed", seed, n),
            "audio_prompts": _per_row("audio_prompts", audio_prompts, n),
            "prompt_transcripts": _per_row("prompt_transcripts", prompt_transcripts, n),
        }
        problems: list[str] = []
        prompts = self._prompt_codes(rows["audio_prompts"], problems)
        requests: list[RowRequest] = []
        for i in range(n):
            req = self._row_request(i, text_list[i], prompts[i], {k: v[i] for k, v in rows.items()}, problems)
            if req is not None:
                requests.append(req)
        if problems:
            raise DiaError("cannot generate: " + "; ".join(problems))

        outputs = generate_rows(self.model, requests, self.device, reference_prompt_span)
        results = [
            GenerationResult(
                codes=o.codes, ended_by_eos=o.ended_by_eos, seed=r.seed,
                prompt_frames=0 if r.prompt is None else len(r.prompt),
                settings={"cfg_scale": r.cfg_scale, "temperature": r.temperature, "top_p": r.top_p,
                          "top_k": r.top_k, "max_new_frames": r.max_new_frames},
                sample_rate=self.sample_rate, frame_rate=self.frame_rate, end_tag_applied=t,
            )
            for o, r, t in zip(outputs, requests, tagged)
        ]
        if decode_audio and self.codec is not None:
            for res, wave in zip(results, self.decode_audio([r.codes for r in results])):
                res.audio = wave
        return results

    def _generate_long_form(self, texts: list[str], *, decode_audio: bool, chunk_seconds: float,
                            tail_seconds: float, end_tag: bool, settings: dict[str, Any]) -> list[GenerationResult]:
        n = len(texts)
        # (a single codes array is one prompt for every text, as in generate())
        per_row = {k: _per_row("audio_prompts" if k == "audio_prompt" else k, v, n) for k, v in settings.items()}
        requests = [Request(i, texts[i], long_form=True, chunk_seconds=chunk_seconds, tail_seconds=tail_seconds,
                            end_tag=end_tag, **{k: v[i] for k, v in per_row.items()}) for i in range(n)]
        results = sorted(self.stream(requests, slots=min(n, MAX_AUTO_SLOTS if self.device.type == "cuda"
                                                          else CPU_SLOTS), decode_audio=decode_audio),
                         key=lambda r: r.id)
        problems = [f"row {r.id}: {r.error}" for r in results if r.error]
        if problems:
            raise DiaError("cannot generate: " + "; ".join(problems))
        for r in results:
            r.id = None
        return results

    def stream(self, requests: Iterable[Request], *, slots: int | None = None, decode_audio: bool = True,
               cuda_graphs: bool | None = None, stats: "StreamStats | None" = None) -> Iterator[GenerationResult]:
        """Generate ``requests`` with continuous batching, yielding each result as it finishes.

        A fixed number of slots decode side by side; when a request finishes, its slot takes the
        next one (encoder pass, cross-attention K/V and prompt prefill, several at once) while the
        others keep decoding. ``requests`` is consumed lazily: a request is pulled only when a slot
        is free for it. A request that fails the checks comes back at once as a result whose
        ``error`` says why; the others go on. Each result equals ``generate()`` of its request
        alone. ``slots=None``: as many as fit in free accelerator memory (at most 256), 16 on a CPU.

        A source that is fed while the stream runs (a server, a work queue) may yield ``None`` for
        "nothing ready yet": the busy slots keep decoding and the source is asked again next step
        (when no slot is busy, after a short sleep). The stream ends when the iterable does.

        On CUDA the decode step runs as captured CUDA graphs (``cuda_graphs=False``: eagerly) and
        the codec decodes on its own stream beside it. Pass a ``StreamStats`` as ``stats`` to read
        what the call did (steps, slot occupancy, graphs, codec time) while and after it runs.
        """
        from .streaming import stream_requests

        return stream_requests(self, requests, slots=slots, decode_audio=decode_audio, cuda_graphs=cuda_graphs,
                               stats=stats)

    def encode_audio(self, sources: Sequence[str | os.PathLike | bytes | np.ndarray]) -> list[np.ndarray]:
        """Audio files (paths, or a file's bytes; any rate, mono or stereo) or 44.1 kHz waveforms ->
        prompt codes [frames, 9].

        Encode a voice prompt once and pass the codes to many ``generate`` calls. Bytes are decoded
        in memory, so a caller holding a file's contents needs no temporary file.
        """
        if self.codec is None:
            raise DiaError("no codec is loaded: use Dia.from_pretrained(..., load_codec=True)")
        from .audio import load_audio

        waves = [np.asarray(s, dtype=np.float32) if isinstance(s, np.ndarray) else load_audio(s, self.sample_rate)
                 for s in sources]
        return self.codec.encode(waves)

    def decode_audio(self, codes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Codes [frames, 9] per item -> float32 waveforms, decoded in batches."""
        if self.codec is None:
            raise DiaError("no codec is loaded: use Dia.from_pretrained(..., load_codec=True)")
        return self.codec.decode(list(codes))

    # ------------------------------------------------------------------ input checks
    def _prompt_codes(self, prompts: list[Any], problems: list[str]) -> list[np.ndarray | None]:
        """Per row: None, checked codes, or codes encoded from an audio file (batched)."""
        out: list[np.ndarray | None] = [None] * len(prompts)
        to_encode: list[tuple[int, np.ndarray]] = []
        cfg = self.config
        for i, p in enumerate(prompts):
            if p is None:
                continue
            if isinstance(p, (str, os.PathLike, bytes, bytearray)):
                if self.codec is None:
                    problems.append(f"row {i}: an audio-file prompt needs the codec (load_codec=True), or pass codes")
                    continue
                from .audio import AudioError, load_audio

                try:
                    to_encode.append((i, load_audio(p, self.codec.sample_rate)))
                except (AudioError, OSError) as e:
                    name = f"({len(p)} bytes)" if isinstance(p, (bytes, bytearray)) else repr(os.fspath(p))
                    problems.append(f"row {i}: audio prompt {name} cannot be used: {e}")
                continue
            codes = np.asarray(p)
            if codes.ndim != 2 or codes.shape[1] != cfg.channels or not np.issubdtype(codes.dtype, np.integer):
                problems.append(
                    f"row {i}: audio prompt codes must be integers of shape [frames, {cfg.channels}], "
                    f"got {codes.dtype} {list(codes.shape)}"
                )
            elif codes.size and (codes.min() < 0 or codes.max() >= cfg.eos_token):
                problems.append(f"row {i}: audio prompt codes must lie in 0..{cfg.eos_token - 1}")
            else:
                out[i] = codes.astype(np.int64)
        if to_encode:
            for (i, _), codes in zip(to_encode, self.codec.encode([w for _, w in to_encode])):
                out[i] = codes
        return out

    def _row_request(self, i: int, text: Any, prompt: np.ndarray | None, row: dict[str, Any],
                     problems: list[str]) -> RowRequest | None:
        before = len(problems)
        transcript = row["prompt_transcripts"]
        if transcript is not None:
            if not isinstance(transcript, str):
                problems.append(f"row {i}: prompt transcript must be a string")
            elif isinstance(text, str):
                text = f"{transcript.rstrip()} {text.lstrip()}"
        problems += [f"row {i}: {p}" for p in validate_script(text, self.config.text_length)]

        def number(name: str, lo: float, hi: float, integer: bool = False) -> Any:
            value = row[name]
            ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            ok = ok and math.isfinite(float(value))
            if ok and integer:
                ok = isinstance(value, (int, np.integer)) or float(value).is_integer()
                value = int(value) if ok else value
            if not ok or not lo <= value <= hi:
                kind = "an integer" if integer else "a number"
                problems.append(f"row {i}: {name}={value!r} must be {kind} in [{lo}, {hi}]")
                return None
            return value if integer else float(value)

        cfg_scale = number("cfg_scale", 0.0, 100.0)
        temperature = number("temperature", 0.0, 100.0)
        top_p = number("top_p", 1e-6, 1.0)
        top_k = number("top_k", 1, self.config.audio_vocab, integer=True)
        prompt_frames = 0 if prompt is None else len(prompt)
        limit = self.max_new_frames_limit(prompt_frames)
        if limit < 1:
            problems.append(
                f"row {i}: the audio prompt has {prompt_frames} frames, which leaves no room in the model's "
                f"{self.config.max_frames}-frame timeline; use a prompt of at most {self.max_new_frames_limit() - 1} frames"
            )
        max_new = row["max_new_frames"]
        if max_new is None:
            max_new = max(limit, 1)
        else:
            max_new = number("max_new_frames", 1, max(limit, 1), integer=True)
            if max_new is None and limit >= 1:
                problems[-1] += (
                    f" (the model holds {self.config.max_frames} frames: at most {limit} new frames after a "
                    f"{prompt_frames}-frame prompt)"
                )
        seed = row["seed"]
        if seed is None:
            seed = secrets.randbits(63)
        else:
            seed = number("seed", 0, MAX_SEED, integer=True)
        if len(problems) > before:
            return None
        return RowRequest(encode_script(text), prompt, max_new, cfg_scale, temperature, top_p, top_k, seed)

