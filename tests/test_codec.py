"""DacCodec on a tiny random DacModel (the real transformers class, random weights, no mocks)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from dia_model.audio.codec import CodecLoadError, DacCodec

TOLERANCE = 1e-5  # batched vs per-item decode: float rounding only (measured < 1e-6)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small convolutions run several times faster on one thread than on two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def codec() -> DacCodec:
    return DacCodec.random(0)


def _codes(frames: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1024, size=(frames, 9))


def _decode_alone(codec: DacCodec, codes: list[np.ndarray]) -> list[np.ndarray]:
    return [codec.decode([c])[0] for c in codes]


def test_attributes(codec):
    assert codec.sample_rate == 44100
    assert codec.hop_length == 512
    assert codec.num_codebooks == 9
    assert codec.codebook_size == 1024
    assert codec.frame_rate == pytest.approx(86.1328125)
    assert codec.device == torch.device("cpu") and codec.dtype == torch.float32
    assert not codec.model.training


def test_encode_shapes_dtype_range(codec):
    rng = np.random.default_rng(0)
    lengths = [0, 1, 511, 512, 513, 5000]
    waves = [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    codes = codec.encode(waves)
    assert len(codes) == len(waves)
    for n, c in zip(lengths, codes):
        assert c.shape == (-(-n // 512), 9)
        assert c.dtype == np.int64
        assert c.size == 0 or (c.min() >= 0 and c.max() < 1024)
    assert len(np.unique(codes[-1])) > 9  # a random codec still uses many entries


def test_encode_batched_equals_alone(codec):
    rng = np.random.default_rng(1)
    lengths = [3000, 51200, 49000, 47000, 20000, 512 * 5]
    waves = [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    alone = [codec.encode([w])[0] for w in waves]
    batched_codecs = (
        _with(codec, max_batch_frames=8192),
        _with(codec, max_batch_frames=8192, max_padding=1.0),
    )
    for batched in (c.encode(waves) for c in batched_codecs):
        for a, b in zip(alone, batched):
            np.testing.assert_array_equal(a, b)


def test_decode_length_and_rate(codec):
    audio = codec.decode([_codes(7, 0), _codes(1, 1)])
    assert [a.shape for a in audio] == [(7 * 512,), (512,)]
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in audio)
    assert 0.01 < float(np.std(audio[0])) < 1.0  # not silence: comparisons below mean something
    assert len(audio[0]) / codec.sample_rate == pytest.approx(7 / codec.frame_rate)


def test_decode_replaces_special_ids_by_zero(codec):
    codes = _codes(20, 2)
    special = codes.copy()
    special[3, 0], special[5, 4], special[19, 8] = 1024, 1025, -1
    cleaned = codes.copy()
    cleaned[3, 0] = cleaned[5, 4] = cleaned[19, 8] = 0
    np.testing.assert_array_equal(codec.decode([special])[0], codec.decode([cleaned])[0])


def test_naive_padding_changes_the_tail(codec):
    """Why decode repairs tails: padding a short item changes its last frames a lot."""
    short, long = _codes(40, 3), _codes(60, 4)
    alone = codec.decode([short])[0]
    padded = np.concatenate([short, np.zeros((20, 9), dtype=short.dtype)])
    batch = torch.from_numpy(np.stack([padded, long])).transpose(1, 2)
    with torch.inference_mode():
        naive = codec.model.decode(audio_codes=batch).audio_values[0, : 40 * 512].numpy()
    assert np.abs(naive - alone).max() > 1e-2
    np.testing.assert_allclose(naive[: 20 * 512], alone[: 20 * 512], atol=TOLERANCE)


@pytest.mark.parametrize(
    ("lengths", "settings"),
    [
        # padded group + tails, short exact-length groups
        ([100, 95, 90, 80, 3, 3, 20, 1], {"max_batch_frames": 8192}),
        # one heavily padded batch
        ([30, 200, 57, 24, 25, 140], {"max_batch_frames": 8192, "max_padding": 1.0}),
        # memory cap: many chunks
        ([50, 49, 48, 47, 46, 45], {"max_batch_frames": 100}),
        # CPU default: one item per forward
        ([50, 49, 0, 3], {}),
    ],
)
def test_batched_decode_equals_alone(codec, lengths, settings):
    codes = [_codes(n, seed) for seed, n in enumerate(lengths)]
    alone = _decode_alone(codec, codes)
    batched = _with(codec, **settings).decode(codes)
    for n, a, b in zip(lengths, alone, batched):
        assert b.shape == (n * 512,)
        np.testing.assert_allclose(b, a, atol=TOLERANCE, rtol=0)


def test_context_bounds_the_influence_of_one_frame(codec):
    """The repair relies on a frame influencing only frames within the computed context."""
    codes = _codes(80, 5)
    changed = codes.copy()
    changed[40] = (changed[40] + 1) % 1024
    a, b = codec.decode([codes, changed])
    touched = np.flatnonzero(np.abs(a - b) > 0) // 512
    assert touched.size and touched.min() >= 40 - codec._decoder_context
    assert touched.max() <= 40 + codec._decoder_context

    wave = (0.3 * np.random.default_rng(6).standard_normal(80 * 512)).astype(np.float32)
    bumped = wave.copy()
    bumped[40 * 512 : 41 * 512] += 0.5
    with torch.inference_mode():
        latents = codec.model.encoder(torch.from_numpy(np.stack([wave, bumped]))[:, None])
    touched = torch.nonzero((latents[0] - latents[1]).abs().amax(0) > 0).flatten()
    assert touched.min() >= 40 - codec._encoder_context
    assert touched.max() <= 40 + codec._encoder_context


def test_empty_inputs(codec):
    assert codec.decode([]) == [] and codec.encode([]) == []
    out = codec.decode(
        [np.zeros((0, 9), dtype=np.int64), _codes(3, 0), np.zeros((0, 9), dtype=np.int32)]
    )
    assert [a.shape for a in out] == [(0,), (1536,), (0,)]
    assert out[0].dtype == np.float32
    assert codec.decode([np.zeros((0, 9), dtype=np.int64)])[0].shape == (0,)
    assert codec.encode([np.zeros(0, dtype=np.float32)])[0].shape == (0, 9)


def test_bad_inputs(codec):
    with pytest.raises(ValueError, match=r"\[frames, 9\]"):
        codec.decode([np.zeros((5, 8), dtype=np.int64)])
    with pytest.raises(ValueError, match="integer"):
        codec.decode([np.zeros((5, 9), dtype=np.float32)])
    with pytest.raises(ValueError, match="1-D"):
        codec.encode([np.zeros((2, 100), dtype=np.float32)])


def test_random_is_deterministic_and_leaves_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = DacCodec.random(7), DacCodec.random(7), DacCodec.random(8)
    assert torch.equal(torch.rand(3), expected)
    sa, sb, sc = (x.model.state_dict() for x in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_save_pretrained_round_trip(codec, tmp_path):
    codec.save_pretrained(tmp_path / "dac")
    assert sorted(p.name for p in (tmp_path / "dac").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    assert json.loads((tmp_path / "dac" / "config.json").read_text())["sampling_rate"] == 44100

    loaded = DacCodec.from_pretrained(tmp_path / "dac")
    codes = [_codes(30, 0), _codes(12, 1)]
    for a, b in zip(codec.decode(codes), loaded.decode(codes)):
        np.testing.assert_array_equal(a, b)
    assert (loaded.sample_rate, loaded.hop_length, loaded.num_codebooks) == (44100, 512, 9)

    half = DacCodec.from_pretrained(str(tmp_path / "dac"), dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    audio = half.decode(codes[:1])[0]
    assert audio.dtype == np.float32 and audio.shape == (30 * 512,)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(CodecLoadError, match="no such file or folder"):
        DacCodec.from_pretrained(tmp_path / "missing.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CodecLoadError, match="missing config.json, model.safetensors"):
        DacCodec.from_pretrained(tmp_path / "empty")
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CodecLoadError, match="weights.pth"):
        DacCodec.from_pretrained(garbage)
    with pytest.raises(ValueError, match="dtype"):
        DacCodec.from_pretrained(tmp_path / "empty", dtype="int8")


def test_offline_hub_id_gives_advice(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    # huggingface_hub reads these variables once, at import: patch its constants too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))

    with pytest.raises(CodecLoadError) as info:
        DacCodec.from_pretrained("descript/dac_44khz")
    message = str(info.value)
    assert "descript/dac_44khz" in message
    assert "download" in message and "folder" in message


# --------------------------------------------------- original descript .pth release layout

# DacModel module path -> descript DAC module path (nested nn.Sequential indices).
_TO_ORIGINAL = [
    (r"encoder\.conv1", "encoder.block.0"),
    (r"encoder\.snake1", "encoder.block.5"),
    (r"encoder\.conv2", "encoder.block.6"),
    (r"encoder\.block\.(\d)\.res_unit(\d)\.(\w+)", "encoder.block.{b1}.block.{u0}.block.{layer}"),
    (r"encoder\.block\.(\d)\.snake1", "encoder.block.{b1}.block.3"),
    (r"encoder\.block\.(\d)\.conv1", "encoder.block.{b1}.block.4"),
    (r"decoder\.conv1", "decoder.model.0"),
    (r"decoder\.snake1", "decoder.model.5"),
    (r"decoder\.conv2", "decoder.model.6"),
    (r"decoder\.block\.(\d)\.snake1", "decoder.model.{b1}.block.0"),
    (r"decoder\.block\.(\d)\.conv_t1", "decoder.model.{b1}.block.1"),
    (r"decoder\.block\.(\d)\.res_unit(\d)\.(\w+)", "decoder.model.{b1}.block.{u2}.block.{layer}"),
    (r"quantizer\.(.+)", "quantizer.{rest}"),
]
_LAYER_INDEX = {"snake1": 0, "conv1": 1, "snake2": 2, "conv2": 3}
_PARAM_NAMES = {
    "parametrizations.weight.original0": "weight_g",
    "parametrizations.weight.original1": "weight_v",
}


def _original_key(key: str) -> str:
    for hf_param, original_param in _PARAM_NAMES.items():
        if key.endswith(hf_param):
            module, param = key[: -len(hf_param) - 1], original_param
            break
    else:
        module, _, param = key.rpartition(".")
    for pattern, template in _TO_ORIGINAL:
        match = re.fullmatch(pattern, module)
        if match:
            groups = match.groups()
            fields = {"rest": groups[0]} if pattern.startswith("quantizer") else {}
            if groups and not fields:
                fields["b1"] = int(groups[0]) + 1
                if len(groups) == 3:
                    fields["u0"], fields["u2"] = int(groups[1]) - 1, int(groups[1]) + 1
                    fields["layer"] = _LAYER_INDEX[groups[2]]
            return f"{template.format(**fields)}.{param}"
    raise AssertionError(f"no original name for {key}")


def _reference_with_weight_norm(seed: int):
    """A tiny DacModel whose convolutions use torch's own weight-norm parametrization."""
    reference = DacCodec.random(seed).model
    reference.apply_weight_norm()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in reference.state_dict().items():
            if name.endswith("original0"):  # g: not simply ||v||, so folding is really tested
                tensor.mul_(0.5 + torch.rand(tensor.shape, generator=generator))
    return reference.eval()


def test_original_pth_checkpoint(tmp_path, codec):
    reference = _reference_with_weight_norm(3)
    state_dict = {_original_key(k): v.clone() for k, v in reference.state_dict().items()}
    assert "encoder.block.1.block.0.block.1.weight_g" in state_dict
    assert "decoder.model.4.block.4.block.3.weight_v" in state_dict
    metadata = {
        "kwargs": {
            "encoder_dim": 8,
            "encoder_rates": [2, 4, 8, 8],
            "latent_dim": None,
            "decoder_dim": 32,
            "decoder_rates": [8, 8, 4, 2],
            "n_codebooks": 9,
            "codebook_size": 1024,
            "codebook_dim": 8,
            "quantizer_dropout": False,
            "sample_rate": 44100,
        }
    }
    path = tmp_path / "weights_44khz_8kbps_0.0.1.pth"
    torch.save({"state_dict": state_dict, "metadata": metadata}, path)

    loaded = DacCodec.from_pretrained(path)

    codes = [_codes(40, 0), _codes(25, 1)]
    reference_codec = DacCodec(reference)
    for a, b in zip(reference_codec.decode(codes), loaded.decode(codes)):
        np.testing.assert_allclose(b, a, atol=TOLERANCE, rtol=0)
    wave = (0.3 * np.random.default_rng(0).standard_normal(20000)).astype(np.float32)
    np.testing.assert_array_equal(loaded.encode([wave])[0], reference_codec.encode([wave])[0])
    assert loaded.sample_rate == 44100

    state_dict["decoder.model.9.alpha"] = torch.ones(1)
    torch.save({"state_dict": state_dict, "metadata": metadata}, path)
    with pytest.raises(CodecLoadError, match="decoder.model.9.alpha"):
        DacCodec.from_pretrained(path)


def _with(codec: DacCodec, **settings) -> DacCodec:
    """The same weights with other batching settings."""
    return DacCodec(codec.model, **settings)


def test_a_long_item_decoded_in_windows_equals_it_decoded_whole(codec, monkeypatch):
    import dia_model.audio.codec as codec_module

    codes = [_codes(230, 7), _codes(61, 8), _codes(20, 9)]
    whole = codec.decode(codes)
    monkeypatch.setattr(codec_module, "MAX_ITEM_FRAMES", 60)  # 230 frames: five overlapping windows
    windowed = codec.decode(codes)
    for a, b in zip(whole, windowed):
        assert b.shape == a.shape
        np.testing.assert_allclose(b, a, atol=TOLERANCE, rtol=0)
