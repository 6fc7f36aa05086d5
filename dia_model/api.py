"""The public entry point: ``Dia.from_pretrained(...)`` and ``Dia.generate(...)``."""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from .config import DiaConfig
from .errors import CheckpointError, DiaError
from .hub import CODEC_REPO
from .nn import checkpoint
from .nn.devices import resolve_device, resolve_dtype
from .nn.model import DiaModel
from .types import GenerationResult, Request, StreamStats
from .engine.admission import RowChecker
from .engine.longform import with_end_tag
from .engine.loop import CPU_SLOTS, MAX_AUTO_SLOTS, StreamModel, stream_requests
from .engine.static import generate_rows
from .engine.timeline import RowRequest, max_new_frames_limit

DEFAULT_CODEC = CODEC_REPO


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
            from .nn.cpu_kernels import cpu_matmul

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
            from .audio.codec import DacCodec

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
    def checker(self) -> RowChecker:
        """The checks every row passes, in generate() and stream() (with the codec loaded now)."""
        return RowChecker(self.config, self.codec)

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
        return max_new_frames_limit(self.config, prompt_frames)

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
        them (see :mod:`dia_model.engine.longform`; ``result.chunks`` describes each). Long-form rows run
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
        checker = self.checker
        prompts = checker.prompt_codes(rows["audio_prompts"], problems)
        requests: list[RowRequest] = []
        for i in range(n):
            req = checker.row_request(i, text_list[i], prompts[i], {k: v[i] for k, v in rows.items()}, problems)
            if req is not None:
                requests.append(req)
        if problems:
            raise DiaError("cannot generate: " + "; ".join(problems))

        outputs = generate_rows(self.model, requests, self.device, reference_prompt_span)
        results = [
            GenerationResult(
                codes=o.codes, ended_by_eos=o.ended_by_eos, seed=r.seed, prompt_frames=r.prompt_frames,
                settings=r.settings,
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
               cuda_graphs: bool | None = None, stats: StreamStats | None = None,
               lookahead: int | None = None) -> Iterator[GenerationResult]:
        """Generate ``requests`` with continuous batching, yielding each result as it finishes.

        A fixed number of slots decode side by side; when a request finishes, its slot takes the
        next one (encoder pass, cross-attention K/V and prompt prefill, several at once) while the
        others keep decoding. ``requests`` is consumed lazily: when a slot frees up, the stream
        pulls until ``lookahead`` requests wait beyond the free slots (None: as many as there are
        slots), and seats the longest waiting one first (its timeline, then its script), so short
        ones fill in around long ones and the last rows do not run alone; a request is passed over
        at most ``lookahead`` times. ``lookahead=0`` seats them in arrival order, each pulled only
        when a slot is free for it. A request that fails the checks comes back at once as a result
        whose ``error`` says why; the others go on. Each result equals ``generate()`` of its request
        alone, wherever and whenever it is seated. ``slots=None``: as many as fit in free
        accelerator memory (at most 256), 16 on a CPU.

        A source that is fed while the stream runs (a server, a work queue) may yield ``None`` for
        "nothing ready yet": the busy slots keep decoding and the source is asked again next step
        (when no slot is busy, after a short sleep). The stream ends when the iterable does.

        On CUDA the decode step runs as captured CUDA graphs (``cuda_graphs=False``: eagerly) and
        the codec decodes on its own stream beside it. Pass a ``StreamStats`` as ``stats`` to read
        what the call did (steps, slot occupancy, graphs, codec time) while and after it runs.
        """
        ctx = StreamModel(self.model, self.device, self.checker, self.decode_audio if self.codec is not None else None,
                          self.sample_rate, self.frame_rate)
        return stream_requests(ctx, requests, slots=slots, decode_audio=decode_audio, cuda_graphs=cuda_graphs,
                               stats=stats, lookahead=lookahead)

    def encode_audio(self, sources: Sequence[str | os.PathLike | bytes | np.ndarray]) -> list[np.ndarray]:
        """Audio files (paths, or a file's bytes; any rate, mono or stereo) or 44.1 kHz waveforms ->
        prompt codes [frames, 9].

        Encode a voice prompt once and pass the codes to many ``generate`` calls. Bytes are decoded
        in memory, so a caller holding a file's contents needs no temporary file.
        """
        if self.codec is None:
            raise DiaError("no codec is loaded: use Dia.from_pretrained(..., load_codec=True)")
        from .audio.files import load_audio

        waves = [np.asarray(s, dtype=np.float32) if isinstance(s, np.ndarray) else load_audio(s, self.sample_rate)
                 for s in sources]
        return self.codec.encode(waves)

    def decode_audio(self, codes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Codes [frames, 9] per item -> float32 waveforms, decoded in batches."""
        if self.codec is None:
            raise DiaError("no codec is loaded: use Dia.from_pretrained(..., load_codec=True)")
        return self.codec.decode(list(codes))


__all__ = ["Dia", "DEFAULT_CODEC"]
