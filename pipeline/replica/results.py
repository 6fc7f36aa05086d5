"""What crosses between the driver and a replica: the replica's settings, one row's outcome, and a
delivery of finished rows with its counts (computed once, from one tally per row)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

import pyarrow as pa
import pyarrow.compute as pc

from ..config import ModelConfig, QualityConfig

OK, FAILED, REFUSED = "ok", "failed", "refused"  # how the driver counts a recorded row


@dataclass
class ReplicaSettings:
    """What a replica needs besides its rows."""

    name: str
    model: ModelConfig
    has_gpu: bool
    torch_threads: Optional[int]
    audio_format: str
    audio_subtype: Optional[str]
    slots: Optional[int]  # rows decoded side by side (None: the engine sizes it)
    output: str = ""  # the job's output location; "" = send audio bytes to the driver instead
    embed_audio: bool = False  # also send the bytes back (the metadata embeds them)
    voices: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # name -> (clip file bytes, transcript)
    chunk_seconds: float = 20.0  # long-form rows: see GenerationConfig
    tail_seconds: float = 6.0
    end_tag: bool = False  # append the second-to-last speaker's tag (the seed's cut-off remedy)
    quality: Optional[QualityConfig] = None  # metrics and gates (None: neither)
    job: Any = None  # planning.planner.JobContext: how to plan any row of the job (None: outside a job)
    prompt_timeout_s: float = 60.0  # data.prompt_timeout_s
    prompt_max_bytes: int = 64 << 20  # data.prompt_max_mb


@dataclass
class RowResult:
    """The outcome of one row."""

    key: str
    ok: bool
    error: Optional[str] = None
    audio: Optional[bytes] = None  # the audio file's bytes, only when the driver needs them
    audio_path: Optional[str] = None  # where the replica wrote it (relative to the output location)
    audio_bytes: Optional[int] = None
    sample_rate: Optional[int] = None
    duration_s: Optional[float] = None
    frames: Optional[int] = None
    ended_by_eos: Optional[bool] = None
    seed: Optional[int] = None
    max_new_frames: Optional[int] = None
    prompt_frames: Optional[int] = None
    fatal: bool = False  # a write error every other row would hit too: the driver stops the job
    generation_s: Optional[float] = None  # from taking a slot to its codes and waveform
    write_s: Optional[float] = None  # encoding and writing its file
    chunks: Optional[int] = None  # long form: how many chunks the script ran in
    chunk_frames: Optional[list[int]] = None  # ... and the new frames of each
    end_tag_applied: Optional[bool] = None
    rejected: bool = False  # audio came out but its best attempt failed a quality gate (error says which)
    metrics: Optional[dict[str, Any]] = None  # quality.metrics.row_metrics of the kept attempt
    quality_seeds: Optional[list[int]] = None  # the seed of every attempt, in order
    turns: Optional[list[dict[str, Any]]] = None  # the kept attempt's turns, timed (quality.align_model)
    align_problem: Optional[str] = None  # why its turns could not be timed
    refused: bool = False  # a problem found while planning the row: it never reached the engine

    @property
    def kind(self) -> str:
        """How the driver counts the row: OK (status ok), REFUSED (never generated) or FAILED."""
        if self.ok and not self.rejected:
            return OK
        return REFUSED if self.refused else FAILED


class RowTally(NamedTuple):
    """One recorded row as the driver's counts see it."""

    key: str
    kind: str  # OK, FAILED (status error or rejected, from an attempt) or REFUSED (found while planning)
    audio_s: float  # of its written file (0 when none)
    audio_bytes: int


def describe_error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip()


def ipc_bytes(table: pa.Table) -> bytes:
    """A table as an Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


@dataclass
class BatchResult:
    """Rows delivered together, as finished metadata: a table per shard (the driver only appends
    them), a tally per row (the counts below are computed from it, once), where they ran and the
    replica's busy time since its last delivery. ``fatal``: (key, error) of rows whose audio could
    not be written for a reason every row would meet; they have no record and are redone on resume."""

    tables: dict[str, bytes]  # shard -> its metadata rows, an Arrow IPC stream (``table``)
    rows: list[RowTally]  # the rows recorded in ``tables``
    replica: dict[str, Any]  # name, node, host, pid, device
    fatal: list[tuple[str, str]] = field(default_factory=list)
    generation_s: float = 0.0
    decode_s: float = 0.0
    slots: int = 0
    keys: list[str] = field(init=False)
    ok: int = field(init=False)  # status ok
    failed: int = field(init=False)  # status error or rejected, from a replica's attempt
    refused: int = field(init=False)  # status error found while planning (never generated)
    audio_s: float = field(init=False)  # audio of the rows whose file was written
    audio_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.keys = [r.key for r in self.rows]
        kinds = [r.kind for r in self.rows]
        self.ok, self.failed, self.refused = kinds.count(OK), kinds.count(FAILED), kinds.count(REFUSED)
        self.audio_s = sum(r.audio_s for r in self.rows)
        self.audio_bytes = sum(r.audio_bytes for r in self.rows)

    def table(self, shard: str) -> pa.Table:
        """A shard's metadata rows as a pyarrow Table. They travel as Arrow IPC bytes, which the
        driver reads ~7x faster than a pickled Table (Ray would rebuild every column)."""
        return pa.ipc.open_stream(self.tables[shard]).read_all()

    def only(self, keep: Any) -> "BatchResult":
        """This delivery with only the rows whose key is in ``keep`` (tables filtered, counts from their tallies)."""
        rows = [r for r in self.rows if r.key in keep]
        wanted = pa.array([r.key for r in rows], pa.string())
        tables = {}
        for shard in self.tables:
            table = self.table(shard)
            tables[shard] = ipc_bytes(table.filter(pc.is_in(table.column("key"), value_set=wanted)))
        return BatchResult(tables, rows, self.replica, fatal=[f for f in self.fatal if f[0] in keep],
                           generation_s=self.generation_s, decode_s=self.decode_s, slots=self.slots)
