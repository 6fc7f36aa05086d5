"""Fail fast, on the driver, when a Hub model or codec is needed but the Hub cannot be reached.

Without this check every replica would try the Hub itself (tens of seconds of retries while the
progress bar sits at zero), fail on the model, and only on a second try fail on the codec, with
advice meant for users of ``Dia.from_pretrained``. Here the driver looks in the local Hugging Face
cache first (no network), then, only if something is missing, asks the Hub endpoint once with a
short timeout, and gives one message that lists every download and the overrides to pass.

The same message builder words the error of a replica that still cannot download (a worker node
without Hub access): see :func:`replica_hub_error`.
"""
from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..config import TINY_RANDOM, ModelConfig
from ..errors import PipelineError

PROBE_TIMEOUT_S = 4.0  # one request to the Hub endpoint, no retries
_OFFLINE_REASON = "HF_HUB_OFFLINE is set, so huggingface_hub does not contact the Hub"
_LOCAL_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


@dataclass(frozen=True)
class HubSource:
    """A Hub repository the job needs, and how to fetch it by hand."""

    key: str  # the config key that points at it: model.source or model.codec_source
    repo: str
    revision: Optional[str]
    files: tuple[str, ...]  # what to download; empty: the whole repository

    @property
    def label(self) -> str:
        what = {"model.source": "model", "model.codec_source": "codec", "quality.asr_model": "ASR model",
                "quality.speaker_model": "speaker model", "quality.align_model": "alignment model"}.get(self.key, self.key)
        return f"the {what} {self.repo}" + (f" (revision {self.revision})" if self.revision else "")

    @property
    def folder(self) -> str:
        from dia_model import default_local_dir

        return default_local_dir(self.repo)

    @property
    def command(self) -> str:
        from dia_model import download_command

        return download_command(self.repo, self.revision, self.files, self.folder)


# --------------------------------------------------------------------------- what the job needs
def _is_local(source: str) -> bool:
    return Path(source).expanduser().exists()


def hub_sources(cfg: ModelConfig) -> list[HubSource]:
    """The Hub repositories loading ``cfg`` on a replica fetches (none for local folders or tiny-random).

    Mirrors ``Dia.from_pretrained``: the model is a Hub repo when ``model.source`` is not an existing
    path and looks like ``org/name``; the codec is ``model.codec_source``, else the model folder's
    ``codec/`` subfolder when it has one, else ``dia_model.CODEC_REPO``. A model source that
    is neither (a folder only the worker nodes have, or a typo) is left to the replicas: whether
    that folder brings its own codec cannot be told from here.
    """
    if cfg.source in (TINY_RANDOM, "null-model"):  # built locally with its own codec; the benchmarks' null model
        return []
    from dia_model import CODEC_CONFIG_FILE, CODEC_REPO, CODEC_WEIGHTS_FILE, looks_like_repo_id

    out: list[HubSource] = []
    if _is_local(cfg.source):
        path = Path(cfg.source).expanduser()
        folder = path if path.is_dir() else path.parent
        own_codec = (folder / "codec" / CODEC_CONFIG_FILE).is_file()
    elif looks_like_repo_id(cfg.source):
        own_codec = False
        out.append(HubSource("model.source", cfg.source, cfg.revision, ()))
    else:  # not a path here (perhaps one on the worker nodes), nor a repo id: the replicas report it
        return []
    codec = cfg.codec_source
    if codec is None and own_codec:
        return out
    codec = codec or CODEC_REPO
    if not _is_local(codec) and not codec.endswith(_LOCAL_WEIGHT_SUFFIXES) and looks_like_repo_id(codec):
        out.append(HubSource("model.codec_source", codec, None, (CODEC_CONFIG_FILE, CODEC_WEIGHTS_FILE)))
    return out


def _cached(repo: str, filename: str, revision: Optional[str]) -> Optional[Path]:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, revision=revision)
    return Path(found) if isinstance(found, str) else None  # None, or the "known missing" marker


def is_cached(src: HubSource) -> bool:
    """Whether the local Hugging Face cache already holds what loading ``src`` offline needs."""
    if src.files:  # the codec: exactly these files
        return all(_cached(src.repo, name, src.revision) for name in src.files)
    from dia_model import CHECKPOINT_CONFIG_FILE, CHECKPOINT_WEIGHT_FILES

    if _cached(src.repo, CHECKPOINT_CONFIG_FILE, src.revision) is None:
        return False
    for name in CHECKPOINT_WEIGHT_FILES:  # the first cached weight file is the one an offline load takes
        first = _cached(src.repo, name, src.revision)
        if first is None:
            continue
        if not name.endswith(".index.json"):
            return True
        try:
            shards = sorted(set(json.loads(first.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            return False
        return all(_cached(src.repo, shard, src.revision) for shard in shards)
    return False


def missing_sources(cfg: ModelConfig) -> list[HubSource]:
    """The Hub sources of ``cfg`` that are not in the local cache (no network is used)."""
    return [src for src in hub_sources(cfg) if not is_cached(src)]


# --------------------------------------------------------------------------- the Hub
def _one_line(prefix: str, exc: BaseException, limit: int = 160) -> str:
    lines = str(exc).strip().splitlines()
    return prefix + (f" ({lines[0][:limit]})" if lines else "")


def hub_unreachable_reason(timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """None when the Hub endpoint answers; else one line saying why not.

    Offline mode (``HF_HUB_OFFLINE``) answers at once. Otherwise one HEAD request goes to
    huggingface_hub's endpoint (``HF_ENDPOINT``) through its configured HTTP client (proxies,
    certificates), with no retries; the whole probe, name lookup included, is bounded by
    ``timeout`` (+1 s). Any HTTP answer below 500 counts as reachable; a 5xx (the Hub, or a proxy
    that cannot reach it) does not.
    """
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return _OFFLINE_REASON
    url = constants.ENDPOINT.rstrip("/") + "/"
    result: dict[str, Optional[str]] = {}

    def probe() -> None:
        try:
            from huggingface_hub.utils import get_session

            response = get_session().head(url, timeout=timeout, follow_redirects=False)
            status = response.status_code
            result["reason"] = f"{url} answered HTTP {status}" if status >= 500 else None
        except Exception as e:  # DNS, refused, TLS, proxy, timeout: all mean "not reachable from here"
            result["reason"] = _one_line(f"{url}: {type(e).__name__}", e)

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if "reason" not in result:
        return f"{url} did not answer within {timeout:.0f} s"
    return result["reason"]


# --------------------------------------------------------------------------- the message
def offline_message(missing: list[HubSource], reason: str, *, headline: Optional[str] = None) -> str:
    """One message for a pipeline user: what is missing, why, the downloads and the overrides."""
    from huggingface_hub import constants

    names = " and ".join(s.label for s in missing)
    headline = headline or (
        f"cannot load {names}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
        "and the Hub cannot be reached from this machine."
    )
    lines = [
        headline,
        f"Why: {reason.rstrip('.')}.",
        "On a machine with Hub access, download " + ("them:" if len(missing) > 1 else "it:"),
        *(f"  {s.command}" for s in missing),
        "copy " + ("those folders" if len(missing) > 1 else "that folder") + " here and add to the command:",
        "  " + " ".join(f"{s.key}={s.folder}" for s in missing),
        f"To try the pipeline without the Hub, use model={TINY_RANDOM} (a tiny random model: its audio is noise).",
    ]
    return "\n".join(lines)


def judge_sources(quality: Any) -> list[HubSource]:
    """The quality judges' Hub repositories that are not in the local cache (local folders are not)."""
    from dia_model import looks_like_repo_id

    out = []
    for key in ("asr_model", "speaker_model", "align_model"):
        source = getattr(quality, key, None)
        if not source or _is_local(source) or not looks_like_repo_id(source):
            continue
        src = HubSource(f"quality.{key}", source, None, ())
        if not is_cached(src):  # config and weights, as for the model
            out.append(src)
    return out


def check_model_sources(cfg: ModelConfig, quality: Any = None) -> None:
    """Raise PipelineError (one message, both downloads) when a Hub source is neither cached nor reachable.

    Does nothing when every source is local or cached, or when the Hub answers (the replicas
    download then). Called on the driver before any replica starts.
    """
    missing = missing_sources(cfg) + (judge_sources(quality) if quality is not None else [])
    if not missing:
        return
    reason = hub_unreachable_reason()
    if reason is not None:
        raise PipelineError(offline_message(missing, reason))


def replica_hub_error(cfg: ModelConfig, exc: BaseException) -> Optional[PipelineError]:
    """The pipeline-worded error for a replica whose model or codec could not be fetched, or None
    when ``exc`` is not about a missing Hub download (then the original error stands).

    ``exc`` is dia_model's HubUnavailableError (the model) or the codec's CodecLoadError.
    """
    from dia_model import HubUnavailableError

    if isinstance(exc, HubUnavailableError):  # the model, and the codec if this node lacks it too
        missing = [s for s in hub_sources(cfg) if s.key == "model.source" or not is_cached(s)]
    else:  # the codec: only when its files are really missing (not e.g. a damaged download)
        missing = [s for s in missing_sources(cfg) if s.key == "model.codec_source"]
    if not missing:
        return None
    from huggingface_hub import constants

    if constants.is_offline_mode():
        reason = _OFFLINE_REASON
    else:
        cause = exc.__cause__ or exc
        reason = _one_line(type(cause).__name__, cause)
    names = " and ".join(s.label for s in missing)
    headline = (
        f"a replica on {socket.gethostname()} cannot load {names}: not in that node's Hugging Face "
        "cache and the download failed."
    )
    return PipelineError(offline_message(missing, reason, headline=headline))
