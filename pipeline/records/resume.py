"""What an earlier run left in the job directory: rows to skip, settings to match, or a clean start."""
from __future__ import annotations

import json
from typing import Any, Optional

from ..config import TINY_RANDOM, JobConfig, to_plain
from ..errors import PipelineError
from ..storage import Storage
from .schema import STATUS_ERROR, STATUS_OK, STATUS_REJECTED
from .store import Existing

JOB_JSON = "job.json"
OUTPUT_ENTRIES = ("audio", "metadata", JOB_JSON)


def read_job_json(storage: Storage) -> dict[str, Any]:
    """The job.json an earlier run wrote, or {}."""
    try:
        data = storage.get(JOB_JSON)
        return json.loads(data) if data is not None else {}
    except (OSError, ValueError) as e:
        raise PipelineError(f"{storage.uri(JOB_JSON)} is unreadable ({e}); fix or delete it, or run with "
                            "overwrite=true") from e


def clear_outputs(storage: Storage) -> None:
    """Delete what the pipeline wrote (audio/, metadata/, job.json), nothing else."""
    for name in OUTPUT_ENTRIES:
        if name == JOB_JSON:
            storage.delete(name)
        else:
            storage.delete_tree(name)


def fingerprint(cfg: JobConfig, job_seed: int) -> dict[str, Any]:
    """The settings that change what a row's audio is; a resumed job must keep them."""
    plain = to_plain(cfg)
    gen = plain["generation"]
    model = plain["model"]
    out = {
        "model.source": model["source"], "model.revision": model["revision"],
        "model.codec_source": model["codec_source"],
        **{f"generation.{k}": gen[k] for k in ("cfg_scale", "temperature", "top_p", "top_k",
                                               "max_new_frames", "max_seconds", "long_form", "chunk_seconds",
                                               "tail_seconds", "end_tag")},
        # only the gates that are set: a gate added in a later version leaves older fingerprints alone
        # (the alignment model only times the turns: adding one later leaves the job resumable)
        "quality": {k: v for k, v in (plain.get("quality") or {}).items()
                    if k not in ("metrics", "align_model") and v not in (None, 0)},
        "voices": {name: [v["audio"], v["transcript"]] for name, v in sorted((plain.get("voices") or {}).items())},
        "job_seed": job_seed,
        **{f"sweep.{k}": v for k, v in plain["sweep"].items()},
        "output.format": plain["output"]["format"], "output.subtype": plain["output"]["subtype"],
    }
    if model["source"] == TINY_RANDOM:
        out["model.tiny_seed"] = model["tiny_seed"]
    return out


LEGACY: dict[str, Any] = {
    "generation.long_form": "auto",  # earlier versions refused what auto chunks: those rows were errors
    "generation.chunk_seconds": 20.0, "generation.tail_seconds": 6.0,
    "generation.end_tag": "off", "voices": {},
    "quality": {},
}


def check_fingerprint(previous: dict[str, Any], current: dict[str, Any], job_dir: Any) -> None:
    """Refuse to mix settings in one job directory."""
    before = previous.get("fingerprint")
    if not before:
        return
    # jobs started before a setting existed ran as its LEGACY value
    changed = [f"{k}: {before.get(k, LEGACY.get(k))!r} -> {v!r}" for k, v in current.items()
               if before.get(k, LEGACY.get(k)) != v]
    if changed:
        raise PipelineError(
            f"{job_dir} holds a job made with other settings ({'; '.join(changed)}). "
            "Run with overwrite=true to start over, or choose another output.dir."
        )


def select_rows(keys: list[str], shard: str, existing: dict[str, Existing], storage: Storage,
                retry_errors: bool) -> tuple[list[int], int]:
    """(positions of the shard's keys still to do, number already done). Done: status ok with its
    audio file present, or status error unless ``retry_errors``. The metadata row is the commit
    record: an audio object without one is made again (to the same name), never counted; the audio
    folder is listed once, not asked about row by row (one request per row would crawl on an object
    store)."""
    if not existing:
        return list(range(len(keys))), 0
    present: set[str] = set()
    if any(e.status == STATUS_OK for e in existing.values()):
        present.update(storage.files(f"audio/{shard}"))
    todo: list[int] = []
    for position, key in enumerate(keys):
        prev: Optional[Existing] = existing.get(key)
        if prev is None or not (
            (prev.status == STATUS_OK and prev.audio_path and prev.audio_path in present)
            or (prev.status in (STATUS_ERROR, STATUS_REJECTED) and not retry_errors)
        ):
            todo.append(position)
    return todo, len(keys) - len(todo)
