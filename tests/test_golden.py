"""Parity with the reference implementation on the golden tiny checkpoint (fp32, CPU)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dia_model import Dia
from dia_model.nn.model import KVCache
from dia_model.text import encode_script, text_batch

GOLDEN = Path(__file__).parent / "data" / "golden"
CHECKPOINTS = {"0626": "checkpoint-0626", "v0.1": "checkpoint-v0.1", "hf": "checkpoint-hf"}
FORMAT_OF = {"0626": "0626", "v0.1": "v0.1", "hf": "0626"}
LOGIT_TOL = 1e-5  # measured: max |Δ| 2.6e-6 (0626, HF layout) and 2.4e-6 (v0.1) against the reference


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def golden_model(request):
    return request.param, Dia.from_pretrained(GOLDEN / CHECKPOINTS[request.param], device="cpu", load_codec=False)


def test_checkpoint_semantics_follow_schema(golden_model):
    name, model = golden_model
    assert model.info["schema"] == FORMAT_OF[name]
    assert model.info["layout"] == ("hf" if name == "hf" else "native")


def test_teacher_forced_logits_match(golden_model):
    name, model = golden_model
    ref = np.load(GOLDEN / f"forward-{FORMAT_OF[name]}.npz")
    ids, real = text_batch([encode_script(bytes(ref["text"]).decode())], torch.device("cpu"))
    enc_ids = torch.stack((torch.zeros_like(ids), ids), dim=1).flatten(0, 1)
    enc_real = real.repeat_interleave(2, dim=0)
    cfg = model.config
    with torch.inference_mode():
        cross = model.model.decoder.cross_keys_values(model.model.encoder(enc_ids, enc_real))
        cache = KVCache(cfg.dec_layers, 2, cfg.dec_kv_heads, 64, cfg.dec_head_dim, torch.float32, torch.device("cpu"))
        frames = torch.as_tensor(ref["decoder_input_delayed"]).long()[None].repeat(2, 1, 1)
        logits = model.model.decoder(frames, 0, cache, cross, enc_real[:, None, None, :])
    tol = LOGIT_TOL
    assert (logits[0] - torch.as_tensor(ref["logits_uncond"])).abs().max().item() < tol
    assert (logits[1] - torch.as_tensor(ref["logits_cond"])).abs().max().item() < tol


def _cases(fmt):
    return json.loads((GOLDEN / f"cases-{fmt}.json").read_text())["cases"]


@pytest.mark.parametrize("case_name", [c["name"] for c in _cases("0626")])
def test_greedy_codes_match_reference(golden_model, case_name):
    name, model = golden_model
    fmt = FORMAT_OF[name]
    case = next(c for c in _cases(fmt) if c["name"] == case_name)
    data = np.load(GOLDEN / f"cases-{fmt}.npz")
    n = len(case["texts"])
    prompts = [data[f"{case_name}/prompt_{i}"] for i in range(n)] if "prompt_frames" in case else None
    results = model.generate(
        case["texts"], cfg_scale=case["cfg_scale"], top_k=case["cfg_filter_top_k"], temperature=0.0,
        top_p=0.95, max_new_frames=case["max_output_frames"], audio_prompts=prompts,
        reference_prompt_span=True,
    )
    for i, res in enumerate(results):
        expected = data[f"{case_name}/codes_{i}"]
        assert res.frames == case["lengths"][i]
        assert res.ended_by_eos == case["ended_by_eos"][i]
        np.testing.assert_array_equal(res.codes, expected)


def test_batch_rows_equal_single_requests():
    """The reference property the golden vectors show (batch_abc vs single_*), for every format."""
    data = np.load(GOLDEN / "cases-0626.npz")
    for single, idx in (("single_a", 0), ("single_b", 1), ("single_c", 2)):
        np.testing.assert_array_equal(data[f"{single}/codes_0"], data[f"batch_abc/codes_{idx}"])
