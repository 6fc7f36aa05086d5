"""Descript Audio Codec (DAC, 44.1 kHz) wrapper: waveforms <-> Dia's audio codes.

Built on transformers' ``DacModel`` rather than the ``descript-audio-codec`` package,
which needs torchaudio and pins protobuf below what Ray needs. transformers is imported
lazily (it takes seconds) so that ``import dia_model`` stays fast.

Codes are ``[frames, num_codebooks]`` int64 arrays, one frame per ``hop_length`` (512)
samples, the layout Dia's decoder uses.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import CodecLoadError
from ..hub import CODEC_CONFIG_FILE, CODEC_REPO, CODEC_WEIGHTS_FILE, download_command
from ..nn.devices import resolve_dtype

if TYPE_CHECKING:
    from transformers import DacConfig, DacModel

DEFAULT_REPO = CODEC_REPO
ORIGINAL_WEIGHTS_NAME = "weights_44khz_8kbps_0.0.1.pth"
CONFIG_NAME = CODEC_CONFIG_FILE
WEIGHTS_NAME = CODEC_WEIGHTS_FILE
GPU_BATCH_FRAMES = 4096  # default cap per forward off CPU: ~5 GB of float32 activations
# Longer items (a long-form script: 30 min is ~155k frames) are decoded in overlapping windows of
# this many frames; whole, the last layers alone would need ~20 GB of activations.
MAX_ITEM_FRAMES = 8192

# Kernel sizes and dilations fixed by DacModel's architecture (not by its config); they
# bound how far one frame influences its neighbours (see DacCodec._context_frames).
_RESIDUAL_REACH = 3 * (1 + 3 + 9)  # three residual units: kernel 7, dilations 1, 3, 9
_OUTER_CONV_REACH = 3  # kernel-7 convolutions at the waveform side of the codec
_LATENT_CONV_REACH = {"encoder": 1, "decoder": 3}  # kernel 3 / kernel 7 at the frame rate

# Original descript ResidualUnit.block indices -> DacResidualUnit attribute names.
_RESIDUAL_LAYERS = ("snake1", "conv1", "snake2", "conv2")

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class DacCodec:
    """A DAC model in eval mode plus batched, padding-exact encode/decode.

    Padding a batch changes the edge of each shorter item: the codec's convolutions see
    neighbouring padding activations instead of their own zero padding (measured on a
    random codec: up to 0.45 absolute difference in the last ~9 frames of a decoded
    item, a few changed codes in the last 4 frames of an encoded one). ``encode`` and
    ``decode`` therefore repair those edges (see ``_run_batched``) so that every item
    comes out as if it had been processed alone, up to float rounding (< 1e-6).
    On CPU the default is one item per forward (see ``__init__``).
    """

    def __init__(
        self, model: DacModel, *, max_batch_frames: int | None = None, max_padding: float = 0.25
    ) -> None:
        """``max_batch_frames`` caps batch size x padded frames per forward (memory: about
        1.2 MB per frame for the full-size codec in float32); a single item longer than
        the cap still runs, alone. ``None`` picks by device at call time: one item per
        forward on CPU, where a batch measured slower than its items one by one (larger
        working set, no idle cores), and ``GPU_BATCH_FRAMES`` elsewhere. ``max_padding``
        is the largest fraction of an item's padded length that may be padding."""
        if max_batch_frames is not None and max_batch_frames < 1:
            raise ValueError(f"max_batch_frames must be >= 1, got {max_batch_frames}")
        if not 0.0 <= max_padding <= 1.0:
            raise ValueError(f"max_padding must be in [0, 1], got {max_padding}")
        config = model.config
        self.model = model.eval().requires_grad_(False)
        self.max_batch_frames = max_batch_frames
        self.max_padding = max_padding
        self.sample_rate: int = int(config.sampling_rate)
        self.hop_length: int = int(np.prod(config.downsampling_ratios))
        self.num_codebooks: int = int(config.n_codebooks)
        self.codebook_size: int = int(config.codebook_size)
        self.frame_rate: float = self.sample_rate / self.hop_length
        self._encoder_context = _context_frames(config, "encoder")
        self._decoder_context = _context_frames(config, "decoder")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def __repr__(self) -> str:
        return (
            f"DacCodec(sample_rate={self.sample_rate}, hop_length={self.hop_length}, "
            f"num_codebooks={self.num_codebooks}, codebook_size={self.codebook_size}, "
            f"device={self.device}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike[str] = DEFAULT_REPO,
        *,
        revision: str | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        max_batch_frames: int | None = None,
        max_padding: float = 0.25,
    ) -> DacCodec:
        """Load DAC weights from a folder, an original ``.pth`` release file or the Hub.

        ``source`` is one of: a folder in transformers' DacModel format (``config.json``
        + ``model.safetensors``); the original descript release file
        (``weights_44khz_8kbps_0.0.1.pth``, read with ``weights_only=True``); or a Hub
        repo id, of which only ``config.json`` and ``model.safetensors`` are fetched.
        Weights are loaded strictly: a missing or unexpected tensor is an error, never
        silently random audio.
        """
        torch_dtype = resolve_dtype(dtype)
        path = Path(os.fspath(source)).expanduser()
        if path.is_dir():
            config, state_dict = _read_hf_files(*_folder_files(path))
        elif path.is_file():
            config, state_dict = _read_original_checkpoint(path)
        elif _REPO_ID.match(str(source)) and path.suffix not in (".pth", ".pt", ".safetensors"):
            config, state_dict = _read_hf_files(*_download(str(source), revision))
        else:
            raise CodecLoadError(f"DAC codec source {str(source)!r}: no such file or folder")
        model = _build_model(config, state_dict, source)
        model = model.to(device=device, dtype=torch_dtype)
        return cls(model, max_batch_frames=max_batch_frames, max_padding=max_padding)

    @classmethod
    def random(
        cls,
        seed: int = 0,
        *,
        tiny: bool = True,
        device: str | torch.device = "cpu",
        max_batch_frames: int | None = None,
        max_padding: float = 0.25,
    ) -> DacCodec:
        """A randomly initialised 44.1 kHz codec (hop 512, 9 x 1024 codes) for tests and demos.

        ``tiny`` shrinks only the channel widths (0.49 M instead of 76.7 M parameters).
        transformers' initialisation (std 0.02) decodes to near silence (peak ~0.01),
        which makes numeric comparisons meaningless, so convolutions get PyTorch's
        default init and codebooks unit-variance entries: output std ~0.17, and codes
        that use many codebook entries. The caller's RNG state is left untouched.
        """
        from transformers import DacConfig, DacModel

        sizes = {"encoder_hidden_size": 8, "decoder_hidden_size": 32} if tiny else {}
        config = DacConfig(sampling_rate=44100, **sizes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = DacModel(config)
            for module in model.modules():
                if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                    module.reset_parameters()
                elif isinstance(module, torch.nn.Embedding):
                    torch.nn.init.normal_(module.weight, std=1.0)
        return cls(model.to(device), max_batch_frames=max_batch_frames, max_padding=max_padding)

    def save_pretrained(self, folder: str | os.PathLike[str]) -> None:
        """Write ``config.json`` + ``model.safetensors`` (no pickle) for ``from_pretrained``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.config.to_json_file(str(folder / CONFIG_NAME))
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})

    # ------------------------------------------------------------------ inference

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a waveform of ``num_samples`` (the last one zero-padded)."""
        return -(-num_samples // self.hop_length)

    @torch.inference_mode()
    def encode(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Mono float waveforms at ``sample_rate`` -> int64 codes ``[ceil(len / hop), codebooks]``.

        Each waveform is zero-padded to a whole number of frames, exactly as the
        reference does before encoding a voice prompt. Items of different lengths share
        forward passes; their edges are repaired as described in ``_run_batched``.
        """
        items, frames = [], []
        for i, waveform in enumerate(waveforms):
            wave = np.asarray(waveform, dtype=np.float32)
            if wave.ndim != 1:
                raise ValueError(f"waveform {i}: expected a 1-D mono array, got shape {wave.shape}")
            n = self.num_frames(wave.shape[0])
            padded = np.zeros((1, n * self.hop_length), dtype=np.float32)
            padded[0, : wave.shape[0]] = wave
            items.append(torch.from_numpy(padded))
            frames.append(n)

        def forward(batch: torch.Tensor) -> torch.Tensor:
            batch = batch.to(device=self.device, dtype=self.dtype)
            return self.model.encode(batch, return_dict=True).audio_codes

        codes = self._run_batched(
            items, frames, self.hop_length, 1, self.num_codebooks, forward, self._encoder_context
        )
        return [c.T.to(device="cpu", dtype=torch.int64).numpy() for c in codes]

    @torch.inference_mode()
    def decode(self, codes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Int codes ``[frames, num_codebooks]`` -> float32 waveforms of ``frames * hop`` samples.

        Values outside ``0..codebook_size-1`` (Dia's EOS/PAD/BOS ids, -1 placeholders)
        become 0 first, as in the reference. Unlike the reference, which decodes one
        item at a time, items of different lengths share forward passes; each result
        matches decoding that item alone (see ``_run_batched``).
        """
        items, frames = [], []
        for i, item in enumerate(codes):
            array = np.asarray(item)
            if array.ndim != 2 or array.shape[1] != self.num_codebooks:
                raise ValueError(
                    f"codes {i}: expected shape [frames, {self.num_codebooks}], got {array.shape}"
                )
            if array.size and not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"codes {i}: expected integer codes, got dtype {array.dtype}")
            array = array.astype(np.int64)
            array[(array < 0) | (array >= self.codebook_size)] = 0
            items.append(torch.from_numpy(np.ascontiguousarray(array.T)))
            frames.append(array.shape[0])

        def forward(batch: torch.Tensor) -> torch.Tensor:
            audio = self.model.decode(
                audio_codes=batch.to(self.device), return_dict=True
            ).audio_values
            return audio.unsqueeze(1)

        pieces, spans = self._windows(items, frames, self._decoder_context)
        audio = self._run_batched(
            pieces, [p.shape[1] for p in pieces], 1, self.hop_length, 1, forward, self._decoder_context
        )
        waves = []
        for parts in spans:  # an item's windows, each trimmed to the frames it decodes exactly
            cut = [audio[k][0, lo * self.hop_length: hi * self.hop_length] for k, lo, hi in parts]
            waves.append(torch.cat(cut).to(device="cpu", dtype=torch.float32).numpy())
        return waves

    def _windows(self, items: list[torch.Tensor], frames: list[int],
                 context: int) -> tuple[list[torch.Tensor], list[list[tuple[int, int, int]]]]:
        """Items over ``MAX_ITEM_FRAMES`` cut into overlapping windows: each window carries ``context``
        frames on either side of the stretch it keeps, so every kept frame has all its inputs and the
        joined result equals decoding the item whole. Returns the pieces and, per item, its
        (piece, first kept frame, end) triples."""
        step = max(MAX_ITEM_FRAMES - 2 * context, 1)
        pieces: list[torch.Tensor] = []
        spans: list[list[tuple[int, int, int]]] = []
        for item, n in zip(items, frames):
            if n <= MAX_ITEM_FRAMES:
                spans.append([(len(pieces), 0, n)])
                pieces.append(item)
                continue
            parts = []
            for start in range(0, n, step):
                lo, hi = max(0, start - context), min(n, start + step + context)
                parts.append((len(pieces), start - lo, min(start + step, n) - lo))
                pieces.append(item[:, lo:hi])
            spans.append(parts)
        return pieces, spans

    def _run_batched(
        self,
        items: list[torch.Tensor],
        frames: list[int],
        in_hop: int,
        out_hop: int,
        out_channels: int,
        forward: Callable[[torch.Tensor], torch.Tensor],
        context: int,
    ) -> list[torch.Tensor]:
        """Run ``forward`` over ``[channels, frames * in_hop]`` items with few, big batches.

        ``forward`` maps ``[B, C, T * in_hop]`` to ``[B, C', T * out_hop]`` and is
        convolutional: output frame t depends only on input frames within ``context``
        of t. So a right-padded item is exact except for its last ``context`` frames.
        Strategy, per chunk of at most ``max_batch_frames`` padded frames:

        * items of at most ``2 * context`` frames: grouped by exact length, no padding;
        * longer items: sorted by length, chunked (an item joins only if at most
          ``max_padding`` of its padded length is padding), right-padded to the chunk's
          longest; then
          for each padded item its last ``2 * context`` frames are run again on their
          own (all such tails have the same length, so they batch without padding) and
          the second half of that tail output, whose left context is complete and whose
          right edge is the item's true end, replaces the item's last ``context`` frames.

        The extra work is ``2 * context`` frames (24 when decoding) per padded item.
        A single item longer than ``max_batch_frames`` runs alone.
        """
        limit = self.max_batch_frames or (1 if self.device.type == "cpu" else GPU_BATCH_FRAMES)
        window = 2 * context
        results: list[torch.Tensor | None] = [None] * len(items)
        short: dict[int, list[int]] = defaultdict(list)
        long: list[int] = []
        for i, n in enumerate(frames):
            if n == 0:
                results[i] = torch.zeros((out_channels, 0))
            elif n <= window:
                short[n].append(i)
            else:
                long.append(i)

        for n, group in short.items():
            for chunk in _chunks(group, n, limit):
                out = forward(torch.stack([items[i] for i in chunk]))
                for row, i in enumerate(chunk):
                    results[i] = out[row]

        long.sort(key=lambda i: -frames[i])
        tails: list[int] = []
        start = 0
        while start < len(long):
            longest = frames[long[start]]
            stop = start + 1
            while (
                stop < len(long)
                and (stop - start + 1) * longest <= limit
                and frames[long[stop]] >= (1.0 - self.max_padding) * longest
            ):
                stop += 1
            chunk, start = long[start:stop], stop
            batch = items[chunk[0]].new_zeros(
                (len(chunk), items[chunk[0]].shape[0], longest * in_hop)
            )
            for row, i in enumerate(chunk):
                batch[row, :, : frames[i] * in_hop] = items[i]
            out = forward(batch)
            for row, i in enumerate(chunk):
                results[i] = out[row, :, : frames[i] * out_hop].clone()
                if frames[i] < longest:
                    tails.append(i)

        for chunk in _chunks(tails, window, limit):
            inputs = [items[i][:, (frames[i] - window) * in_hop :] for i in chunk]
            out = forward(torch.stack(inputs))
            for row, i in enumerate(chunk):
                results[i][:, (frames[i] - context) * out_hop :] = out[row, :, context * out_hop :]

        return results  # type: ignore[return-value]


def _chunks(indices: list[int], length: int, max_frames: int) -> list[list[int]]:
    """Split equal-length items into batches of at most ``max_frames`` frames (>= one item)."""
    size = max(1, max_frames // length)
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def _context_frames(config: DacConfig, side: str) -> int:
    """Upper bound, in frames, on how far a frame influences outputs of the ``side`` network.

    Summed layer by layer: each convolution reaches (kernel // 2) * dilation input
    samples, a stride-s (transposed) convolution with kernel 2s reaches 1.5 input
    samples of its own rate; reaches are converted to frames by the layer's samples per
    frame. For the 44.1 kHz layout the bounds are 10.4 frames (decoder) and 8.4
    (encoder); measured on a random codec: 9 to the right and 10.25 to the left
    (decoder), 4 (encoder). One frame of margin is added (-> 12 and 10).
    """
    hop = int(np.prod(config.downsampling_ratios))
    reach = _LATENT_CONV_REACH[side] + _OUTER_CONV_REACH / hop
    if side == "encoder":
        rate = hop  # input samples per frame, before each block
        for stride in config.downsampling_ratios:
            reach += (_RESIDUAL_REACH + 1.5 * stride) / rate
            rate //= stride
    else:
        rate = 1  # samples per frame, before each block
        for stride in config.upsampling_ratios:
            reach += 1.5 / rate
            rate *= stride
            reach += _RESIDUAL_REACH / rate
    return math.ceil(reach) + 1


# ---------------------------------------------------------------------- loading helpers


def _download(repo_id: str, revision: str | None) -> tuple[Path, Path]:
    """Fetch only the config and the safetensors weights (not the whole repo)."""
    from huggingface_hub import hf_hub_download

    try:
        config_file = hf_hub_download(repo_id, CONFIG_NAME, revision=revision)
        weights_file = hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision)
    except Exception as exc:  # offline, no network, unknown repo, missing file: same advice
        command = download_command(repo_id, revision, (CONFIG_NAME, WEIGHTS_NAME))
        raise CodecLoadError(
            f"could not get the DAC codec {repo_id!r} from the Hugging Face Hub "
            f"({type(exc).__name__}: {exc}). If this machine is offline, download it where the "
            f"Hub is reachable (`{command}`), copy that folder here and pass its path as the "
            f"codec source (the original '{ORIGINAL_WEIGHTS_NAME}' file also works)."
        ) from exc
    return Path(config_file), Path(weights_file)


def _folder_files(folder: Path) -> tuple[Path, Path]:
    """The config and weights files of a DacModel-format folder."""
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    missing = [p.name for p in (config_file, weights_file) if not p.is_file()]
    if missing:
        raise CodecLoadError(
            f"{folder}: not a DAC codec folder, missing {', '.join(missing)} "
            f"(expected {CONFIG_NAME} + {WEIGHTS_NAME} as written by save_pretrained)"
        )
    return config_file, weights_file


def _read_hf_files(
    config_file: Path, weights_file: Path
) -> tuple[DacConfig, dict[str, torch.Tensor]]:
    """Config and state dict in transformers' DacModel format."""
    from safetensors.torch import load_file
    from transformers import DacConfig

    try:
        config = DacConfig.from_dict(json.loads(config_file.read_text()))
        state_dict = load_file(str(weights_file), device="cpu")
    except Exception as exc:
        raise CodecLoadError(
            f"{config_file.parent}: unreadable DAC config or weights: {exc}"
        ) from exc
    return config, _fold_weight_norm(state_dict)


def _read_original_checkpoint(path: Path) -> tuple[DacConfig, dict[str, torch.Tensor]]:
    """Config and DacModel-layout state dict from descript's own ``.pth`` release file."""
    from transformers import DacConfig

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CodecLoadError(
            f"{path}: not a loadable DAC checkpoint (expected a DacModel folder or the original "
            f"'{ORIGINAL_WEIGHTS_NAME}'): {exc}"
        ) from exc
    if not isinstance(checkpoint, dict) or not {"state_dict", "metadata"} <= checkpoint.keys():
        raise CodecLoadError(
            f"{path}: expected a dict with 'state_dict' and 'metadata' (original DAC release)"
        )
    kwargs: dict[str, Any] = dict(checkpoint["metadata"].get("kwargs", {}))
    encoder_rates = list(kwargs.get("encoder_rates", (2, 4, 8, 8)))
    decoder_rates = list(kwargs.get("decoder_rates", encoder_rates[::-1]))
    encoder_dim = int(kwargs.get("encoder_dim", 64))
    latent_dim = kwargs.get("latent_dim")
    if decoder_rates != encoder_rates[::-1] or latent_dim not in (
        None,
        encoder_dim * 2 ** len(encoder_rates),
    ):
        raise CodecLoadError(
            f"{path}: unsupported DAC layout (decoder_rates {decoder_rates} must reverse "
            f"encoder_rates {encoder_rates}; latent_dim {latent_dim} must be "
            f"encoder_dim * 2**{len(encoder_rates)})"
        )
    config = DacConfig(
        encoder_hidden_size=encoder_dim,
        downsampling_ratios=encoder_rates,
        decoder_hidden_size=int(kwargs.get("decoder_dim", 1536)),
        n_codebooks=int(kwargs.get("n_codebooks", 9)),
        codebook_size=int(kwargs.get("codebook_size", 1024)),
        codebook_dim=int(kwargs.get("codebook_dim", 8)),
        quantizer_dropout=float(kwargs.get("quantizer_dropout", 0.0)),
        sampling_rate=int(kwargs.get("sample_rate", 44100)),
    )
    state_dict = {}
    for key, tensor in checkpoint["state_dict"].items():
        module, _, param = key.rpartition(".")
        try:
            state_dict[f"{_original_module_name(module, len(encoder_rates))}.{param}"] = tensor
        except (KeyError, IndexError, ValueError) as exc:
            raise CodecLoadError(f"{path}: unexpected tensor {key!r} for a DAC checkpoint") from exc
    return config, _fold_weight_norm(state_dict)


def _original_module_name(module: str, num_blocks: int) -> str:
    """Map a module path of descript's DAC to DacModel's (raises KeyError/IndexError if unknown).

    descript nests ``nn.Sequential`` lists: ``encoder.block.{0, 1..n, n+1, n+2}`` are
    conv1, the n encoder blocks, snake1, conv2 (``decoder.model.*`` likewise); an
    encoder block holds residual units 0-2 then snake (3) and strided conv (4); a
    decoder block holds snake (0), transposed conv (1) and residual units 2-4; a
    residual unit is snake, conv, snake, conv (0-3). Quantizer names are identical.
    """
    parts = module.split(".")
    if parts[0] == "quantizer":
        return module
    side, outer = {"encoder": ("encoder", "block"), "decoder": ("decoder", "model")}[parts[0]]
    if parts[1] != outer:
        raise KeyError(module)
    index = int(parts[2])
    if len(parts) == 3:
        return {
            0: f"{side}.conv1",
            num_blocks + 1: f"{side}.snake1",
            num_blocks + 2: f"{side}.conv2",
        }[index]
    if parts[3] != "block" or not 1 <= index <= num_blocks:
        raise KeyError(module)
    block, layer = f"{side}.block.{index - 1}", int(parts[4])
    first_unit = 0 if side == "encoder" else 2
    if len(parts) == 5:
        own = {3: "snake1", 4: "conv1"} if side == "encoder" else {0: "snake1", 1: "conv_t1"}
        return f"{block}.{own[layer]}"
    if len(parts) != 7 or parts[5] != "block" or not first_unit <= layer < first_unit + 3:
        raise KeyError(module)
    return f"{block}.res_unit{layer - first_unit + 1}.{_RESIDUAL_LAYERS[int(parts[6])]}"


def _fold_weight_norm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace weight-norm pairs (``weight_g``/``weight_v`` or parametrization
    ``original0``/``original1``) by the plain ``weight`` DacModel uses at inference:
    weight = g * v / ||v||, the norm taken over every dimension but the first."""
    pairs = {
        ".weight_g": ".weight_v",
        ".parametrizations.weight.original0": ".parametrizations.weight.original1",
    }
    folded = dict(state_dict)
    for g_suffix, v_suffix in pairs.items():
        for g_key in [k for k in state_dict if k.endswith(g_suffix)]:
            prefix = g_key[: -len(g_suffix)]
            if (
                prefix + v_suffix in folded
            ):  # an unpaired tensor is left for the strict load to report
                g, v = folded.pop(g_key), folded.pop(prefix + v_suffix)
                folded[prefix + ".weight"] = v * (
                    g / v.norm(dim=tuple(range(1, v.dim())), keepdim=True)
                )
    return folded


def _build_model(
    config: DacConfig, state_dict: dict[str, torch.Tensor], source: object
) -> DacModel:
    """A DacModel holding exactly ``state_dict`` (built on the meta device: no wasted init)."""
    from transformers import DacModel

    with torch.device("meta"):
        model = DacModel(config)
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as exc:
        raise CodecLoadError(
            f"{source}: weights do not match the DAC architecture in its config: {exc}"
        ) from exc
    return model
