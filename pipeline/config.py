"""Structured job configuration: dataclasses that Hydra validates.

Every group in ``configs/`` (model, generation, data, output, cluster) merges into one of these
dataclasses, so an override that names an unknown key or has the wrong type is an error.
"""
from __future__ import annotations

import dataclasses
import difflib
import enum
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError, InterpolationResolutionError, MissingMandatoryValue, ValidationError

from .errors import PipelineError

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
TINY_RANDOM = "tiny-random"


class AudioFormat(enum.Enum):
    """Audio container written under ``audio/``."""

    flac = "flac"
    wav = "wav"
    ogg = "ogg"
    mp3 = "mp3"


@dataclass
class ModelConfig:
    """Which checkpoint each replica loads, and how."""

    name: str = "dia-1.6b"  # short label, used in default output folder names
    source: str = "nari-labs/Dia-1.6B-0626"  # Hub repo id, local folder, or "tiny-random"
    revision: Optional[str] = None
    device: Optional[str] = None  # cpu | cuda | mps; None: cuda when the replica has a GPU
    dtype: Optional[str] = None  # float32 | bfloat16 | float16; None: bfloat16 on cuda, else float32
    codec_source: Optional[str] = None
    compile: bool = False
    cache_dir: Optional[str] = None  # where tiny-random checkpoints are built; None: ~/.cache/dia-pipeline
    tiny_seed: int = 0  # seed of the tiny random checkpoint (model.source=tiny-random)


@dataclass
class GenerationConfig:
    """Job-wide generation defaults; per-row columns of the same name override them."""

    cfg_scale: float = 3.0
    temperature: float = 1.2
    top_p: float = 0.95
    top_k: int = 45
    max_new_frames: Optional[int] = None  # None: as many as the model allows
    max_seconds: Optional[float] = None  # alternative to max_new_frames, in seconds of audio
    seed: Optional[int] = 0  # job seed: rows without a seed column get one derived from it and their id
    # rows each replica decodes side by side (its engine's slots; a finished row's slot takes the next
    # row at once); None: as many as fit in the GPU's free memory (at most 256), 8 on a CPU replica
    batch_size: Optional[int] = None


@dataclass
class DataConfig:
    """Where the scripts come from and which columns hold what."""

    name: str = "job"  # short label, used in default output folder names
    input: Any = MISSING  # Parquet file, folder, glob or URI (s3://, gs://), or a list of them
    text_column: str = "text"
    id_column: str = "id"
    limit: Optional[int] = None  # only the first N rows (after concatenating shards in order)
    prompt_timeout_s: float = 60.0  # an audio_prompt file not read by then becomes that row's error
    prompt_max_mb: float = 64.0  # larger audio_prompt files are refused (a 10 s clip is ~1 MB)


@dataclass
class OutputConfig:
    """What the job writes and where."""

    dir: str = MISSING  # the job directory; running again with the same dir resumes
    format: AudioFormat = AudioFormat.flac
    subtype: Optional[str] = None  # soundfile subtype, e.g. PCM_24; None: the format's default
    embed_audio: bool = False  # also store {bytes, path} in the metadata (a datasets Audio column)
    flush_rows: int = 256  # write a metadata part after this many finished rows ...
    flush_seconds: float = 10.0  # ... or after this many seconds, whichever comes first
    progress: bool = True  # live progress bar on the driver


@dataclass
class ClusterConfig:
    """Ray connection, replica placement and fault handling."""

    address: Optional[str] = None  # None: RAY_ADDRESS or a local in-process Ray; "auto"; "ray://host:10001"
    num_cpus: Optional[int] = None  # CPUs of a locally started Ray (None: all)
    namespace: Optional[str] = None
    runtime_env: Dict[str, Any] = field(default_factory=dict)
    replicas: Optional[int] = None  # None: one per GPU in the cluster, or 1 without GPUs
    use_gpu: Optional[bool] = None  # None: when the cluster has GPUs
    gpus_per_replica: float = 1.0
    cpus_per_replica: float = 1.0
    torch_threads: Optional[int] = None  # CPU replicas: torch threads (None: cpus_per_replica, at least 1)
    unit_rows: int = 16  # rows per unit of work handed to a replica
    units_in_flight: int = 2  # units a replica holds at once (the next one is ready while one decodes)
    max_attempts: int = 3  # a row whose replica died this many times is marked error
    max_restarts: int = -1  # Ray restarts of a dead replica actor (-1: unlimited)
    # units that raise in a live replica, in a row, after which it is given up (deaths do not count:
    # a dead replica is restarted by Ray up to max_restarts times)
    max_replica_failures: int = 10
    start_timeout_s: float = 900.0  # fail when no replica is ready for this long


@dataclass
class SweepConfig:
    """In-job grid: every row is generated once per point of the product of the non-empty lists."""

    cfg_scale: List[float] = field(default_factory=list)
    temperature: List[float] = field(default_factory=list)
    top_p: List[float] = field(default_factory=list)
    top_k: List[int] = field(default_factory=list)
    max_new_frames: List[int] = field(default_factory=list)
    seed: List[int] = field(default_factory=list)


@dataclass
class JobConfig:
    """One synthesis job."""

    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    overwrite: bool = False  # delete earlier results in output.dir and start over
    retry_errors: bool = False  # on resume, generate rows again that ended with status=error


def _example_path(name: str = "") -> str:
    return str(EXAMPLES_DIR / name) if name else str(EXAMPLES_DIR)


def register() -> None:
    """Register the schema with Hydra's ConfigStore and the ``${pipeline_examples:...}`` and
    ``${pipeline_job_name:...}`` resolvers."""
    ConfigStore.instance().store(name="pipeline_schema", node=JobConfig)
    if not OmegaConf.has_resolver("pipeline_examples"):
        OmegaConf.register_new_resolver("pipeline_examples", _example_path)
    if not OmegaConf.has_resolver("pipeline_job_name"):
        OmegaConf.register_new_resolver("pipeline_job_name", job_dir_name)
    if not OmegaConf.has_resolver("pipeline_log_dir"):
        OmegaConf.register_new_resolver("pipeline_log_dir", log_dir)


def unknown_keys(cfg: Any, schema: type = JobConfig, prefix: str = "") -> list[str]:
    """Dotted keys in ``cfg`` that the schema does not define, each with a hint.

    Hydra's ``+key=value`` adds a key even to a structured config, and merging into the schema
    silently drops it, so a typo like ``+generation.cfg_scal=2`` would run with the default.
    """
    known = {f.name: f for f in dataclasses.fields(schema)}
    problems = []
    for key in cfg.keys() if hasattr(cfg, "keys") else []:
        name = f"{prefix}{key}"
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known: {', '.join(sorted(known))})"
            problems.append(f"{name}{hint}")
            continue
        sub = known[key].default_factory if known[key].default_factory is not dataclasses.MISSING else None
        value = OmegaConf.select(cfg, str(key), throw_on_missing=False) if OmegaConf.is_config(cfg) else cfg[key]
        if isinstance(sub, type) and dataclasses.is_dataclass(sub) and OmegaConf.is_dict(value):
            problems += unknown_keys(value, sub, f"{name}.")
    return problems


def to_job_config(cfg: Any) -> JobConfig:
    """Turn a Hydra/OmegaConf config (or a JobConfig) into a validated JobConfig.

    Every problem is a PipelineError with one line saying what to set or fix: an unknown key
    (however it was spelt, ``+`` included), a missing required value, a value of the wrong type.
    """
    if isinstance(cfg, JobConfig):
        return cfg
    bad = unknown_keys(cfg)
    if bad:
        raise PipelineError(f"unknown setting{'s' if len(bad) > 1 else ''}: {'; '.join(bad)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(JobConfig), cfg)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except MissingMandatoryValue as e:
        key = e.full_key or "a required setting"
        hint = _MISSING_HINTS.get(key, "")
        raise PipelineError(f"{key} is not set{hint}") from None
    except (ValidationError, ConfigKeyError, InterpolationResolutionError) as e:
        raise PipelineError(f"{e.full_key or 'config'}: {str(e).splitlines()[0]}") from None


_MISSING_HINTS = {
    "data.input": ": add data.input=<Parquet file, folder, glob or URI> (e.g. data.input=scripts.parquet)",
    "output.dir": ": add output.dir=<job folder>",
    "cluster.address": ": add cluster.address=ray://<head host>:10001",
}


def job_dir_name(data_name: str, model_name: str, overrides: str) -> str:
    """The default job folder name: ``<data>-<model>``, plus ``__<overrides>`` when any were given.

    Jobs with and without overrides are siblings (never one inside another), a ``/`` in an override
    value cannot make sub-folders, and a long override list is cut and hashed to stay a valid name.
    """
    base = f"{data_name}-{model_name}"
    if not overrides:
        return base
    tail = overrides.replace("/", "_").replace("\\", "_")
    name = f"{base}__{tail}"
    if len(name.encode()) > MAX_JOB_DIR_NAME:
        digest = hashlib.sha256(tail.encode()).hexdigest()[:10]
        keep = name.encode()[: MAX_JOB_DIR_NAME - 11].decode(errors="ignore")
        name = f"{keep}-{digest}"
    return name


MAX_JOB_DIR_NAME = 160


def log_dir(output_dir: str) -> str:
    """Where Hydra keeps the run's log and .hydra/: the job folder itself, or for an object-store
    job (``s3://bucket/prefix``) a local ``runs/_logs/<scheme>-<bucket>-<prefix>`` folder."""
    if "://" not in output_dir or output_dir.startswith("file://"):
        return output_dir.removeprefix("file://")
    scheme, _, rest = output_dir.partition("://")
    name = f"{scheme}-{rest.strip('/')}".replace("/", "-")
    if len(name.encode()) > MAX_JOB_DIR_NAME:
        name = name.encode()[: MAX_JOB_DIR_NAME - 11].decode(errors="ignore") + "-" + \
            hashlib.sha256(rest.encode()).hexdigest()[:10]
    return f"runs/_logs/{name}"


def to_plain(cfg: JobConfig) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (enums as names)."""
    plain = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
    return plain  # type: ignore[return-value]


register()
