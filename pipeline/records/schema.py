"""What one metadata row is: its columns and statuses, and the builders that fill a row's record
(before generation, as an error, from a replica's result) and turn records into an Arrow table.
Where the records are kept (parts, merging) is ``records.store``."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

import pyarrow as pa

if TYPE_CHECKING:
    from ..planning.rows import RowSpec

STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_REJECTED = "rejected"  # audio came out, but its best attempt failed a quality gate

OWN_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("key", pa.string()),
    ("shard", pa.string()),
    ("row_index", pa.int64()),
    ("sweep_point", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("attempts", pa.int32()),
    ("audio_path", pa.string()),
    ("sample_rate", pa.int32()),
    ("duration_s", pa.float64()),
    ("frames", pa.int64()),
    ("ended_by_eos", pa.bool_()),
    ("seed", pa.int64()),
    ("cfg_scale", pa.float64()),
    ("temperature", pa.float64()),
    ("top_p", pa.float64()),
    ("top_k", pa.int64()),
    ("max_new_frames", pa.int64()),
    ("max_seconds", pa.float64()),
    ("audio_prompt", pa.string()),
    ("prompt_transcript", pa.string()),
    ("prompt_frames", pa.int64()),
    ("voice_s1", pa.string()),
    ("voice_s2", pa.string()),
    ("long_form", pa.bool_()),
    ("chunks", pa.int32()),
    ("chunk_frames", pa.list_(pa.int64())),
    ("end_tag_applied", pa.bool_()),
    ("speaking_rate_wps", pa.float64()),
    ("leading_silence_s", pa.float64()),
    ("trailing_silence_s", pa.float64()),
    ("max_inner_silence_s", pa.float64()),
    ("clipping_ratio", pa.float64()),
    ("loudness_lufs", pa.float64()),
    ("asr_text", pa.string()),
    ("cer", pa.float64()),
    ("wer", pa.float64()),
    ("speaker_sim", pa.float64()),
    # per speaker turn, with times when quality.align_model aligned the row (null: not aligned)
    ("turns", pa.list_(pa.struct([("speaker", pa.string()), ("text", pa.string()), ("start_s", pa.float64()),
                                  ("end_s", pa.float64())]))),
    ("align_problem", pa.string()),  # why this row could not be aligned
    ("quality_attempts", pa.int32()),
    ("quality_seeds", pa.list_(pa.int64())),
    ("text", pa.string()),
    ("model_source", pa.string()),
    ("model_revision", pa.string()),
    ("model_schema", pa.string()),
    ("model_dtype", pa.string()),
    ("audio_bytes", pa.int64()),
    ("replica", pa.string()),
    ("node", pa.string()),
    ("device", pa.string()),
    ("batch_rows", pa.int32()),
    ("generation_s", pa.float64()),
    ("decode_s", pa.float64()),
    ("finished_at", pa.timestamp("ms", tz="UTC")),
])
AUDIO_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
OWN_COLUMNS = frozenset(OWN_SCHEMA.names) | {"audio"}
# Lets Hugging Face datasets read the embedded column as an Audio feature.
HF_METADATA = {b"huggingface": json.dumps({"info": {"features": {"audio": {"_type": "Audio"}}}}).encode()}


def base_record(row: "RowSpec", model: dict[str, Any]) -> dict[str, Any]:
    """The metadata fields known before generation (settings, text, model)."""
    return {
        "id": row.id, "key": row.key, "shard": row.shard, "row_index": row.row_index,
        "sweep_point": row.sweep_point, "seed": row.seed, "cfg_scale": row.cfg_scale,
        "temperature": row.temperature, "top_p": row.top_p, "top_k": row.top_k,
        "max_new_frames": row.max_new_frames, "max_seconds": row.max_seconds,
        "audio_prompt": row.audio_prompt, "prompt_transcript": row.prompt_transcript, "text": row.text,
        "voice_s1": row.voices[0] if row.voices else None, "voice_s2": row.voices[1] if row.voices else None,
        "long_form": row.long_form,
        "model_source": model.get("source"), "model_revision": model.get("revision"),
        "model_schema": model.get("schema"), "model_dtype": model.get("dtype"),
    }


def error_record(row: "RowSpec", message: str, model: dict[str, Any], attempts: int = 0,
                 **extra: Any) -> dict[str, Any]:
    """A status=error row."""
    rec = base_record(row, model)
    rec.update(status=STATUS_ERROR, error=message, attempts=attempts, finished_at=datetime.now(timezone.utc))
    rec.update(extra)
    return rec


def outcome_record(row: "RowSpec", r: Any, model: dict[str, Any], replica: dict[str, Any], attempts: int,
                   batch_rows: int) -> dict[str, Any]:
    """The metadata row of a row a replica finished (``r``: its ``replica.RowResult``). A row whose
    audio came out is written before this record exists: the record is the commit."""
    record = base_record(row, model)
    record.update(
        status=STATUS_REJECTED if r.rejected else STATUS_OK if r.ok else STATUS_ERROR, error=r.error,
        attempts=attempts, sample_rate=r.sample_rate, duration_s=r.duration_s, frames=r.frames,
        ended_by_eos=r.ended_by_eos, seed=r.seed if r.seed is not None else row.seed, prompt_frames=r.prompt_frames,
        max_new_frames=r.max_new_frames if r.max_new_frames is not None else row.max_new_frames,
        replica=replica.get("name"), node=replica.get("node"), device=replica.get("device"), batch_rows=batch_rows,
        generation_s=r.generation_s, decode_s=r.write_s, chunks=r.chunks, chunk_frames=r.chunk_frames,
        end_tag_applied=r.end_tag_applied, quality_seeds=r.quality_seeds,
        turns=r.turns, align_problem=r.align_problem,
        quality_attempts=len(r.quality_seeds) if r.quality_seeds else None,
        **{k: v for k, v in (r.metrics or {}).items() if k != "duration_s"},  # that one is there
        finished_at=datetime.now(timezone.utc), audio_bytes=r.audio_bytes if r.ok else None,
    )
    if r.ok:
        record["audio_path"] = r.audio_path or row.audio_path
    return record


def records_table(records: list[dict[str, Any]], carried: Optional[pa.Table],
                  audio: Optional[list[Optional[bytes]]] = None) -> pa.Table:
    """Metadata rows as a table: our columns, then the shard's carried-through input columns (taken
    by ``row_index``), then with ``audio`` the embedded audio column."""
    table = pa.Table.from_pylist(records, schema=OWN_SCHEMA)
    if carried is not None and carried.num_columns:
        picked = carried.take(pa.array([r["row_index"] for r in records], pa.int64()))
        for name, column in zip(picked.column_names, picked.columns):
            table = table.append_column(name, column)
    if audio is not None:
        cells = [None if b is None else {"bytes": b, "path": os.path.basename(r.get("audio_path") or "")}
                 for r, b in zip(records, audio)]
        table = table.append_column(pa.field("audio", AUDIO_TYPE), pa.array(cells, AUDIO_TYPE))
    return table
