"""Loading every published form of the weights, strictly."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dia_model import CheckpointError, Dia, DiaConfig, HubUnavailableError
from dia_model.tiny import save_random_checkpoint

GOLDEN = Path(__file__).parent / "data" / "golden"
TEXT = "[S1] Loading test. [S2] Same weights, same codes."


def _codes(model: Dia) -> np.ndarray:
    return model.generate(TEXT, temperature=0.0, max_new_frames=24, seed=0)[0].codes


@pytest.fixture(scope="module")
def reference_codes():
    return _codes(Dia.from_pretrained(GOLDEN / "checkpoint-0626", load_codec=False))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def test_hf_layout_equals_native(reference_codes):
    assert np.array_equal(_codes(Dia.from_pretrained(GOLDEN / "checkpoint-hf", load_codec=False)), reference_codes)


def test_sharded_safetensors_with_index(tmp_path, reference_codes):
    folder = _copy(GOLDEN / "checkpoint-hf", tmp_path / "sharded")
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, folder / file)
        weight_map.update({k: file for k in keys})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model = Dia.from_pretrained(folder, load_codec=False)
    assert model.info["weights"] == list(shards)
    assert np.array_equal(_codes(model), reference_codes)


@pytest.mark.parametrize("name,wrap", [("pytorch_model.bin", False), ("dia-v0_1.pth", True)])
def test_pickled_state_dicts_load_weights_only(tmp_path, reference_codes, name, wrap):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(GOLDEN / "checkpoint-0626" / "config.json", folder / "config.json")
    state = load_file(GOLDEN / "checkpoint-0626" / "model.safetensors")
    torch.save({"state_dict": state} if wrap else state, folder / name)
    model = Dia.from_pretrained(folder, load_codec=False)
    assert model.info["weights"] == [name]
    assert np.array_equal(_codes(model), reference_codes)


def test_pickle_with_code_is_refused(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(GOLDEN / "checkpoint-0626" / "config.json", folder / "config.json")
    torch.save({"x": torch.zeros(1), "payload": Path("/etc/passwd")}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights-only"):
        Dia.from_pretrained(folder, load_codec=False)


def _edited_checkpoint(tmp_path: Path, edit) -> Path:
    folder = _copy(GOLDEN / "checkpoint-0626", tmp_path / "edited")
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")
    return folder


def test_missing_key_is_named(tmp_path):
    folder = _edited_checkpoint(tmp_path, lambda t: t.pop("decoder.layers.1.mlp.wo.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys: decoder\.layers\.1\.mlp\.wo\.weight"):
        Dia.from_pretrained(folder, load_codec=False)


def test_unexpected_key_is_named(tmp_path):
    folder = _edited_checkpoint(tmp_path, lambda t: t.update({"decoder.extra.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys: decoder\.extra\.weight"):
        Dia.from_pretrained(folder, load_codec=False)


def test_wrong_shape_is_named(tmp_path):
    def edit(t):
        t["encoder.norm.weight"] = torch.ones(65)

    folder = _edited_checkpoint(tmp_path, edit)
    with pytest.raises(CheckpointError, match=r"wrong shapes: encoder\.norm\.weight \[65\] \(expected \[64\]\)"):
        Dia.from_pretrained(folder, load_codec=False)


def test_config_from_other_model_is_refused(tmp_path):
    folder = _copy(GOLDEN / "checkpoint-0626", tmp_path / "mismatch")
    raw = json.loads((folder / "config.json").read_text())
    raw["decoder_config"]["num_hidden_layers"] = 3
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"missing keys: decoder\.layers\.2\."):
        Dia.from_pretrained(folder, load_codec=False)


def test_unknown_config_schema(tmp_path):
    folder = _copy(GOLDEN / "checkpoint-0626", tmp_path / "badcfg")
    (folder / "config.json").write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(CheckpointError, match="neither the current Dia schema"):
        Dia.from_pretrained(folder, load_codec=False)


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text((GOLDEN / "checkpoint-0626" / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no weights in"):
        Dia.from_pretrained(tmp_path, load_codec=False)


def test_truncated_safetensors(tmp_path):
    folder = _copy(GOLDEN / "checkpoint-0626", tmp_path / "trunc")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        Dia.from_pretrained(folder, load_codec=False)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_loads_and_generates(dtype, reference_codes):
    model = Dia.from_pretrained(GOLDEN / "checkpoint-0626", dtype=dtype, load_codec=False)
    assert model.model.decoder.head.weight.dtype == getattr(torch, dtype)
    assert model.model.decoder.layers[0].mlp_norm.weight.dtype == torch.float32  # norms stay fp32
    codes = _codes(model)
    assert codes.shape[1] == 9 and codes.min() >= 0 and codes.max() < 1024
    # Half precision follows fp32 closely at first (the exact bits diverge once a sample flips).
    assert (codes[:4] == reference_codes[:4]).mean() > 0.5


@pytest.mark.parametrize("schema", ["0626", "v0.1"])
@pytest.mark.parametrize("layout", ["native", "hf"])
def test_random_checkpoint_roundtrip(tmp_path, schema, layout):
    cfg = DiaConfig.from_json(str(GOLDEN / "checkpoint-0626" / "config.json")).replace(schema=schema)
    save_random_checkpoint(tmp_path / "rand", cfg, seed=3, layout=layout)
    model = Dia.from_pretrained(tmp_path / "rand", load_codec=False)
    assert model.info["schema"] == schema and model.info["layout"] == layout
    assert DiaConfig.from_json(str(tmp_path / "rand" / "config.json")) == cfg


def test_native_and_hf_random_checkpoints_are_the_same_model(tmp_path):
    cfg = DiaConfig.from_json(str(GOLDEN / "checkpoint-0626" / "config.json"))
    codes = []
    for layout in ("native", "hf"):
        save_random_checkpoint(tmp_path / layout, cfg, seed=5, layout=layout)
        codes.append(_codes(Dia.from_pretrained(tmp_path / layout, load_codec=False)))
    assert np.array_equal(*codes)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_unreachable_hub_says_how_to_use_a_local_folder(offline_hub):
    with pytest.raises(HubUnavailableError, match=r"hf download nari-labs/Dia-1\.6B-0626.*from_pretrained"):
        Dia.from_pretrained("nari-labs/Dia-1.6B-0626", load_codec=False)


def test_hub_repo_from_local_cache_when_offline(offline_hub, reference_codes):
    """A repo id resolves through huggingface_hub's cache: config + only the chosen weights file."""
    commit = "0" * 40
    repo = offline_hub / "models--nari-labs--Dia-1.6B-0626"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    shutil.copy(GOLDEN / "checkpoint-0626" / "config.json", snap / "config.json")
    state = load_file(GOLDEN / "checkpoint-0626" / "model.safetensors")
    torch.save(state, snap / "pytorch_model.bin")  # the 0626 repo ships native weights as .bin
    model = Dia.from_pretrained("nari-labs/Dia-1.6B-0626", load_codec=False)
    assert model.info["weights"] == ["pytorch_model.bin"]
    assert np.array_equal(_codes(model), reference_codes)


def test_nonexistent_local_path(tmp_path):
    with pytest.raises(CheckpointError, match="neither an existing folder"):
        Dia.from_pretrained(str(tmp_path / "nope" / "deeper"), load_codec=False)
