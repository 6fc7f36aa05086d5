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


class LongFormMode(enum.Enum):
    """When a row's script is generated in chunks that carry the voices over (dia_model.longform)."""

    auto = "auto"  # only scripts over one window (~35 s of speech or 1,024 bytes), which off refuses
    on = "on"  # every script, in chunks of at most chunk_seconds
    off = "off"  # never: a script over the window is that row's error


class EndTagMode(enum.Enum):
    """The seed's remedy for a cut-off last word: end the script with the second-to-last speaker's tag."""

    auto = "auto"  # append it where the script has two or more turns and does not already end with a tag
    off = "off"


@dataclass
class VoiceConfig:
    """A named voice: a clip of one speaker (5-10 s works best) and what is said in it."""

    audio: str = MISSING  # a local path (relative to where the job starts) or a URI (s3://...)
    transcript: str = MISSING  # the clip's words, without a speaker tag (the row's role adds it)


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
    long_form: LongFormMode = LongFormMode.auto
    chunk_seconds: float = 20.0  # long form: expected speech per chunk at most (the seed's guideline: 5-20 s)
    tail_seconds: float = 6.0  # long form: the end of each chunk that prompts the next (0: no carry-over)
    max_script_seconds: float = 1800.0  # longer scripts (expected speech) are that row's error
    end_tag: EndTagMode = EndTagMode.auto


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
    flush_rows: int = 4096  # write a metadata part after this many finished rows ...
    flush_seconds: float = 10.0  # ... or after this many seconds, whichever comes first
    progress: bool = True  # live progress bar on the driver
    report: bool = True  # write report.html at the end (python -m pipeline.report <job> rebuilds it)
    # exports written when the job ends (python -m pipeline.export does the same at any time), each
    # to <export_dir>/<format>: webdataset, lhotse, lhotse-shar, nemo, hf
    export: List[str] = field(default_factory=list)
    export_dir: Optional[str] = None  # default: <output.dir>/exports


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
class QualityConfig:
    """Per-row metrics and the gates a row must pass (null: that gate is off); see pipeline/quality.py."""

    metrics: bool = True  # compute the signal metrics of every row (duration, speaking rate, silences, ...)
    speaking_rate: Optional[List[float]] = None  # [low, high] words per second of audio
    max_silence_s: Optional[float] = None  # longest silence inside the row
    max_edge_silence_s: Optional[float] = None  # leading or trailing silence
    max_clipping: Optional[float] = None  # share of samples at full scale
    loudness_lufs: Optional[List[float]] = None  # [low, high] ITU-R BS.1770 integrated loudness
    duration_s: Optional[List[float]] = None  # [low, high] seconds of audio
    # model-based metrics (a local folder or a Hub id; null: not measured), see pipeline/judges.py
    asr_model: Optional[str] = None  # e.g. openai/whisper-large-v3-turbo: asr_text, cer, wer
    speaker_model: Optional[str] = None  # e.g. microsoft/wavlm-base-plus-sv: speaker_sim to the row's prompt
    # a transformers CTC model (e.g. facebook/wav2vec2-base-960h): each row's turns get start/end times
    # by forced alignment of its script (metadata column turns; pipeline/quality/align.py)
    align_model: Optional[str] = None
    max_cer: Optional[float] = None  # needs asr_model
    max_wer: Optional[float] = None  # needs asr_model
    min_speaker_sim: Optional[float] = None  # needs speaker_model; rows without a prompt are not judged
    retries: int = 0  # a row failing a gate is generated again up to this many times (new derived seeds)


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
    quality: QualityConfig = field(default_factory=QualityConfig)
    # named voices for the voice / voice_s1 / voice_s2 columns (configs/voices/*.yaml or voices.NAME.audio=...)
    # (values are checked into VoiceConfig by to_job_config: a typed dict would need Hydra's "+" per voice)
    voices: Dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False  # delete earlier results in output.dir and start over
    retry_errors: bool = False  # on resume, generate rows again that ended with status=error


def _example_path(name: str = "") -> str:
    return str(EXAMPLES_DIR / name) if name else str(EXAMPLES_DIR)


def register() -> None:
    """Register the schema with Hydra's ConfigStore and the ``${pipeline_examples:...}`` and
    ``${pipeline_job_name:...}`` resolvers."""
    schema = OmegaConf.structured(JobConfig)
    # voices is open: ``voices.alice.audio=...`` names a new voice without Hydra's ``+``
    OmegaConf.set_struct(schema.voices, False)
    ConfigStore.instance().store(name="pipeline_schema", node=schema)
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
        job: JobConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except MissingMandatoryValue as e:
        key = e.full_key or "a required setting"
        hint = _MISSING_HINTS.get(key, "")
        raise PipelineError(f"{key} is not set{hint}") from None
    except (ValidationError, ConfigKeyError, InterpolationResolutionError) as e:
        raise PipelineError(f"{e.full_key or 'config'}: {str(e).splitlines()[0]}") from None
    job.voices = check_voices(job.voices)
    return job


def check_voices(voices: Any) -> dict[str, VoiceConfig]:
    """``voices`` as name -> VoiceConfig, or a PipelineError saying which entry to fix and how."""
    out: dict[str, VoiceConfig] = {}
    fields = [f.name for f in dataclasses.fields(VoiceConfig)]
    for name, entry in (voices or {}).items():
        if isinstance(entry, VoiceConfig):
            entry = dataclasses.asdict(entry)
        example = f"voices.{name}.audio=clips/{name}.wav voices.{name}.transcript=\"...\""
        if not isinstance(entry, dict):
            raise PipelineError(f"voices.{name} must have audio and transcript, e.g. {example}")
        unknown = sorted(set(entry) - set(fields))
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), fields, n=1)
            hint = f" (did you mean voices.{name}.{close[0]}?)" if close else f" (known: {', '.join(fields)})"
            raise PipelineError(f"unknown setting voices.{name}.{unknown[0]}{hint}")
        for key in fields:
            value = entry.get(key)
            if not isinstance(value, str) or not value.strip():
                raise PipelineError(f"voices.{name}.{key} is not set: a voice needs both, e.g. {example}")
        out[str(name)] = VoiceConfig(audio=entry["audio"], transcript=entry["transcript"])
    return out


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
