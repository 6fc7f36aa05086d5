"""The offline real-model path: the driver finds an unreachable Hub once, before any replica starts.

huggingface_hub reads its environment (HF_HUB_OFFLINE, HF_HOME, HF_HUB_CACHE, HF_ENDPOINT) once, at
import. In-process tests set the variables and re-derive the module's constants from them
(``hub_env``); tests that contact an endpoint run in a subprocess with a clean environment, so that
only loopback addresses are ever contacted (no proxy, no public host).
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipeline.config import TINY_RANDOM, ModelConfig
from pipeline.errors import PipelineError
from pipeline.model.hub_check import check_model_sources, hub_sources, missing_sources

REPO = Path(__file__).resolve().parents[1]
MODEL, CODEC = "nari-labs/Dia-1.6B-0626", "descript/dac_44khz"
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def assert_offline_advice(text: str, *, model: bool = True, codec: bool = True) -> None:
    """The one message: each missing repo with an `hf download` command, and the overrides."""
    assert "hf download" in text and "huggingface-cli" not in text and "from_pretrained" not in text
    assert (f"hf download {MODEL}" in text) is model and ("model.source=./Dia-1.6B-0626" in text) is model
    assert (f"hf download {CODEC} config.json model.safetensors --local-dir ./dac_44khz" in text) is codec
    assert ("model.codec_source=./dac_44khz" in text) is codec
    assert "model=tiny-random" in text


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A subprocess environment with empty Hugging Face folders and no proxies."""
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS and not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_CACHE=str(tmp_path / "hf-cache"),
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", RAY_AUTH_MODE="disabled",
               HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """Offline mode and an empty tmp cache, in this process; returns the cache folder."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    spec = importlib.util.find_spec("huggingface_hub.constants")
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)  # the constants as an import now would compute them
    for name in dir(fresh):
        if name.isupper() and getattr(constants, name, None) != getattr(fresh, name):
            monkeypatch.setattr(constants, name, getattr(fresh, name))
    assert constants.HF_HUB_OFFLINE and constants.HF_HUB_CACHE == str(cache)
    return cache


def cache_files(cache: Path, repo: str, files: dict[str, str], ref: str = "main") -> Path:
    """Files in huggingface_hub's cache layout: models--org--name/{refs/<ref>, snapshots/<commit>/...}."""
    commit = "a1" * 20
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    for name, text in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_text(text)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    return snapshot


def run_check(env: dict[str, str], source: str = MODEL) -> subprocess.CompletedProcess:
    """check_model_sources in a fresh interpreter (its huggingface_hub reads ``env``)."""
    code = (
        "import sys\n"
        "from pipeline.config import ModelConfig\n"
        "from pipeline.errors import PipelineError\n"
        "from pipeline.model.hub_check import check_model_sources\n"
        "try:\n"
        f"    check_model_sources(ModelConfig(source={source!r}))\n"
        "except PipelineError as e:\n"
        "    print(e)\n"
        "    sys.exit(2)\n"
        "print('passed')\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


# --------------------------------------------------------------------------- the driver's check
def test_offline_mode_gives_one_message_with_both_downloads(hub_env):
    with pytest.raises(PipelineError) as info:
        check_model_sources(ModelConfig())
    text = str(info.value)
    assert_offline_advice(text)
    assert "HF_HUB_OFFLINE" in text and str(hub_env) in text
    assert text.index(f"hf download {MODEL}") < text.index(f"hf download {CODEC}")


def test_revision_goes_into_the_download_command(hub_env):
    with pytest.raises(PipelineError, match=rf"hf download {MODEL} --revision v2 --local-dir ./Dia-1.6B-0626"):
        check_model_sources(ModelConfig(revision="v2"))


def test_unreachable_endpoint_fails_with_the_same_message(tmp_path):
    with socket.socket() as closed:  # bound, never listening: connections to it are refused
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        out = run_check(clean_env(tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT=endpoint))
    assert out.returncode == 2, out.stderr[-3000:]
    assert_offline_advice(out.stdout)
    assert endpoint in out.stdout and "HF_HUB_OFFLINE" not in out.stdout


def test_reachable_endpoint_leaves_the_download_to_the_replicas(tmp_path):
    requests: list[str] = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802
            requests.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        out = run_check(clean_env(tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT=endpoint))
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode == 0 and "passed" in out.stdout, out.stdout + out.stderr[-3000:]
    assert requests == ["/"]  # one probe, no retries


def test_cached_sources_pass_offline(hub_env):
    cache_files(hub_env, MODEL, {"config.json": "{}"})
    assert {s.repo for s in missing_sources(ModelConfig())} == {MODEL, CODEC}  # config alone is not enough
    cache_files(hub_env, MODEL, {"model.safetensors": ""})
    with pytest.raises(PipelineError) as info:  # the model is there: only the codec is asked for
        check_model_sources(ModelConfig())
    assert_offline_advice(str(info.value), model=False)
    cache_files(hub_env, CODEC, {"config.json": "{}", "model.safetensors": ""})
    check_model_sources(ModelConfig())


def test_sharded_weights_need_every_shard_in_the_cache(hub_env):
    cache_files(hub_env, CODEC, {"config.json": "{}", "model.safetensors": ""})
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    cache_files(hub_env, MODEL, {"config.json": "{}", "model.safetensors.index.json": json.dumps(index),
                                 "model-00001-of-00002.safetensors": ""})
    assert [s.repo for s in missing_sources(ModelConfig())] == [MODEL]
    cache_files(hub_env, MODEL, {"model-00002-of-00002.safetensors": ""})
    check_model_sources(ModelConfig())


def test_a_revision_is_looked_up_under_its_own_ref(hub_env):
    cache_files(hub_env, CODEC, {"config.json": "{}", "model.safetensors": ""})
    cache_files(hub_env, MODEL, {"config.json": "{}", "model.safetensors": ""}, ref="v2")
    check_model_sources(ModelConfig(revision="v2"))
    with pytest.raises(PipelineError):  # main is not cached
        check_model_sources(ModelConfig())


def test_local_folders_and_tiny_random_are_not_checked(hub_env, tmp_path):
    check_model_sources(ModelConfig(source=TINY_RANDOM, codec_source=CODEC))
    assert hub_sources(ModelConfig(source=TINY_RANDOM)) == []

    folder = tmp_path / "Dia-1.6B-0626"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_text("")
    codec = tmp_path / "dac_44khz"
    codec.mkdir()
    check_model_sources(ModelConfig(source=str(folder), codec_source=str(codec)))
    check_model_sources(ModelConfig(source=str(folder / "model.safetensors"), codec_source=str(codec)))
    check_model_sources(ModelConfig(source=str(folder), codec_source=str(tmp_path / "weights_44khz.pth")))
    # a local model without a codec/ subfolder still needs the default codec from the Hub ...
    assert [(s.key, s.repo) for s in hub_sources(ModelConfig(source=str(folder)))] == [("model.codec_source", CODEC)]
    with pytest.raises(PipelineError) as info:
        check_model_sources(ModelConfig(source=str(folder)))
    assert_offline_advice(str(info.value), model=False)
    # ... one with its own codec (as tiny checkpoints have) does not
    (folder / "codec").mkdir()
    (folder / "codec" / "config.json").write_text("{}")
    check_model_sources(ModelConfig(source=str(folder)))
    # a path that is not here may exist on the worker nodes: the replicas report it
    assert hub_sources(ModelConfig(source=str(tmp_path / "elsewhere"))) == []


# --------------------------------------------------------------------------- replicas and dia_model
def test_replica_without_the_hub_gets_the_pipeline_advice(hub_env):
    from pipeline.model.loader import load_model

    with pytest.raises(PipelineError) as info:
        load_model(ModelConfig(), has_gpu=False)
    assert_offline_advice(str(info.value))
    assert "replica" in str(info.value)


def test_replica_missing_only_the_codec_is_told_about_the_codec(hub_env, tmp_path):
    """The codec's own load error (the model loaded from a local folder without codec/), re-worded
    by the builder load_model uses (loading even a tiny model here would build the CPU kernels)."""
    from dia_model import CodecLoadError
    from dia_model.audio.codec import DacCodec

    from pipeline.model.hub_check import replica_hub_error

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(CodecLoadError) as codec_error:
        DacCodec.from_pretrained(CODEC)
    worded = replica_hub_error(ModelConfig(source=str(folder)), codec_error.value)
    assert isinstance(worded, PipelineError)
    assert_offline_advice(str(worded), model=False)
    # a codec error that is not about a missing download stands as it is
    cache_files(hub_env, CODEC, {"config.json": "{}", "model.safetensors": ""})
    assert replica_hub_error(ModelConfig(source=str(folder)), codec_error.value) is None


def test_dia_model_messages_name_the_same_download_tool(hub_env):
    from dia_model import CodecLoadError, Dia, HubUnavailableError
    from dia_model.audio.codec import DacCodec

    with pytest.raises(HubUnavailableError) as model:
        Dia.from_pretrained(MODEL, load_codec=False)
    with pytest.raises(CodecLoadError) as codec:
        DacCodec.from_pretrained(CODEC)
    assert f"`hf download {MODEL} --local-dir ./Dia-1.6B-0626`" in str(model.value)
    assert f"`hf download {CODEC} config.json model.safetensors --local-dir ./dac_44khz`" in str(codec.value)
    assert "huggingface-cli" not in str(model.value) + str(codec.value)


# --------------------------------------------------------------------------- the command line
def test_cli_without_the_hub_exits_2_with_one_message(tmp_path):
    env = clean_env(tmp_path, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "pipeline", f"output.dir={tmp_path / 'job'}", "output.progress=false"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-3000:]
    assert_offline_advice(text)
    assert text.count("cannot load") == 1 and text.count("hf download") == 2
    assert "Traceback" not in text
