"""One job from start to end: plan, resume, run on Ray, write audio + metadata + job.json, summarise."""
from __future__ import annotations

import json
import logging
import os
import platform
import secrets
import sys
import time
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from typing import Any, Optional

import numpy as np
import pyarrow.compute as pc

from .. import audio as audio_io
from ..config import EndTagMode, JobConfig, to_job_config, to_plain
from ..errors import PipelineError
from ..model.hub_check import check_model_sources
from ..planning.planner import JobContext, ShardPlanner
from ..planning.scan import JobPlan, index_shard, scan_plan
from ..planning.voices import VoiceClip, load_voices
from ..export import FORMATS as EXPORT_FORMATS, export_job
from ..quality.gates import check_settings as check_quality_settings, gates_on
from ..records.error_groups import group_errors
from ..records.report import build_report
from ..records.resume import JOB_JSON, check_fingerprint, clear_outputs, fingerprint, read_job_json, select_rows
from ..records.schema import STATUS_ERROR, STATUS_OK, error_record
from ..records.store import MetadataStore
from ..replica.actor import Replica
from ..replica.results import BatchResult, ReplicaSettings
from ..storage import Storage, is_uri
from .cluster import connect, plan_replicas
from .progress import Progress, format_summary
from .scheduler import Scheduler
from .workqueue import WorkQueue

log = logging.getLogger("pipeline")
# a CPU replica's slots when generation.batch_size is null: a CPU step costs what its rows cost, and
# free slots ride along until the job's last rows finish, so fewer than the engine's own default
CPU_REPLICA_SLOTS = 8
QUEUE_ROWS = 20_000  # rows the driver keeps queued; a shard is planned only when the queue runs below this
_PACKAGES = ("dia-datasets", "torch", "ray", "pyarrow", "soundfile", "transformers", "hydra-core", "omegaconf",
             "numpy", "huggingface_hub", "tqdm")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, Optional[str]]:
    """Versions of Python and the packages that shape the output."""
    out: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


def _peak_rss_mb() -> float:
    """The driver process's peak resident memory (Linux reports kB, macOS bytes)."""
    import resource  # deferred: Unix only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def output_location(spec: str) -> str:
    """output.dir as the Storage root: a URI as given, a local path made absolute."""
    return spec if is_uri(spec) else os.path.abspath(os.path.expanduser(spec))


class Job:
    """One run of a job, fully built by ``prepare()`` (checks passed, plan scanned, store open,
    job.json says running): what its steps share. Only ``scheduler`` starts empty: ``generate()``
    starts Ray and the replicas only when some row is left to run."""

    def __init__(self, cfg: JobConfig, replica_cls: type, *, storage: Storage, started: float, cpu_started: float,
                 job_seed: int, fingerprint: dict[str, Any], runs: list[dict[str, Any]], plan: JobPlan,
                 voice_clips: dict[str, VoiceClip], store: MetadataStore) -> None:
        self.cfg = cfg
        self.replica_cls = replica_cls
        self.started = started
        self.cpu_started = cpu_started
        self.storage = storage
        self.job_dir = str(storage)
        self.job_seed = job_seed
        self.fingerprint = fingerprint
        self.runs = runs  # earlier runs, from job.json
        self.plan = plan
        self.voice_clips = voice_clips
        self.store = store
        self.context = JobContext.of(cfg, plan, job_seed, voice_clips)  # what replicas plan rows from
        self.model_info: dict[str, Any] = {"source": cfg.model.source, "revision": cfg.model.revision}
        self.progress = Progress(plan.total_rows, enabled=cfg.output.progress)
        self.queue = WorkQueue([], cfg.cluster.unit_rows, cfg.cluster.max_attempts)
        self.pending: dict[str, tuple[str, int]] = {}  # key -> (shard, position), rows not yet recorded
        self.planners: dict[str, ShardPlanner] = {}  # open shards whose rows the driver records itself
        self.open_rows: dict[str, int] = {}  # shard -> its rows not yet recorded (loaded shards only)
        self.next_shard = 0
        self.skipped = 0  # rows an earlier run already finished
        self.scheduler: Optional[Scheduler] = None  # set by generate() when some row is left to run

    # -- results ---------------------------------------------------------------------------
    def _planner(self, shard: str) -> ShardPlanner:
        """A driver-side planner for a shard, made only when the driver must write a row's record
        itself (a row given up after ``max_attempts``): rare, so the shard is read then, not before."""
        if shard not in self.planners:
            self.planners[shard] = self.context.planner(shard)
            self.plan.carried[shard] = self.planners[shard].carried
        return self.planners[shard]

    def _record_error(self, key: str, message: str, attempts: int = 0) -> None:
        if key not in self.pending:
            return
        shard, position = self.pending[key]
        self.store.add(error_record(self._planner(shard).row(position), message, self.model_info, attempts))
        self._recorded(key)
        self.progress.row(False)

    def _recorded(self, key: str) -> None:
        """A row's metadata record is queued: once all of its shard's rows are, the shard is merged
        and its keys leave the driver's memory."""
        shard = self.pending.pop(key)[0]
        self.open_rows[shard] -= 1
        if not self.open_rows[shard]:
            self._close_shard(shard)

    def _close_shard(self, shard: str) -> None:
        self.store.consolidate([shard])
        self.plan.release(shard)
        self.planners.pop(shard, None)
        self.open_rows.pop(shard, None)

    # -- rows, a shard at a time -----------------------------------------------------------------
    def _load_next_shard(self) -> bool:
        """Index the next shard: skip the rows earlier runs finished and queue the rest (longest
        first), by key only; the replicas plan the rows they get. False when every shard is loaded."""
        if self.next_shard >= len(self.plan.shards):
            return False
        shard = self.plan.shards[self.next_shard]
        self.next_shard += 1
        index, lengths = index_shard(self.cfg, self.plan, shard)
        todo, skipped = select_rows(index.keys, shard.name, self.store.existing([shard.name]), self.storage,
                                    self.cfg.retry_errors)
        self.skipped += skipped
        self.progress.skip(skipped)
        if not todo:
            self._close_shard(shard.name)
            return True
        self.open_rows[shard.name] = len(todo)
        keys = index.keys
        for position in todo:
            self.pending[keys[position]] = (shard.name, position)
        # longest first: similar lengths share units, and the long tail does not come last
        order = np.asarray(todo, np.int64)
        order = order[np.argsort(-lengths[order], kind="stable")]
        self.queue.extend([keys[position] for position in order.tolist()])
        return True

    def feed(self) -> bool:
        """Keep at least ``QUEUE_ROWS`` rows queued, loading shards as needed; True while shards are left."""
        while len(self.queue) < QUEUE_ROWS and self._load_next_shard():
            pass
        return self.next_shard < len(self.plan.shards)

    def locate(self, key: str) -> tuple[str, int]:
        return self.pending[key]

    def on_batch(self, result: BatchResult, replica_info: dict[str, Any]) -> None:
        """Record the rows a replica finished: it wrote their audio and built their metadata, which
        is appended as it came (the metadata row is the commit record). A write error that every row
        would hit stops the job."""
        if replica_info.get("model"):
            self.model_info = replica_info["model"]
        pending = self.pending
        if not all(key in pending for key in result.keys):  # recorded already (given up meanwhile)
            result = result.only(pending)
        for shard in result.tables:
            self.store.add_table(shard, result.table(shard))
        for key in result.keys:
            self._recorded(key)
        self.progress.rows(result.ok, result.failed, result.audio_s, result.audio_bytes)
        if result.refused:
            self.progress.rows(0, result.refused, generated=False)
        if result.fatal:
            raise PipelineError(f"cannot write audio to {self.job_dir}: {result.fatal[0][1]}. Free space or fix "
                                "permissions or credentials, then run the same command again to resume.")

    # -- steps -----------------------------------------------------------------------------
    def generate(self) -> None:
        """Shards are planned as the queue needs rows; rows with problems become errors at once, the
        rest run on Ray replicas."""
        cfg = self.cfg
        while not len(self.queue) and self._load_next_shard():
            pass  # Ray starts only when some row is left to do
        if not len(self.queue):
            return
        import ray

        connect(cfg.cluster)
        rplan = plan_replicas(cfg.cluster, ray.cluster_resources())
        log.info("starting %d replica(s) (%s each)", rplan.count,
                 f"{rplan.num_gpus} GPU" if rplan.use_gpu else f"{rplan.num_cpus} CPU")

        def settings(name: str) -> ReplicaSettings:
            return ReplicaSettings(name=name, model=cfg.model, has_gpu=rplan.use_gpu,
                                   torch_threads=rplan.torch_threads, audio_format=cfg.output.format.value,
                                   audio_subtype=cfg.output.subtype,
                                   slots=cfg.generation.batch_size or (None if rplan.use_gpu else CPU_REPLICA_SLOTS),
                                   output=self.storage.root, embed_audio=cfg.output.embed_audio,
                                   voices={n: (c.audio, c.transcript) for n, c in self.voice_clips.items()
                                           if c.audio is not None},
                                   chunk_seconds=cfg.generation.chunk_seconds,
                                   tail_seconds=cfg.generation.tail_seconds,
                                   end_tag=cfg.generation.end_tag == EndTagMode.auto,
                                   quality=cfg.quality if cfg.quality.metrics or gates_on(cfg.quality) or cfg.quality.align_model else None,
                                   job=self.context, prompt_timeout_s=cfg.data.prompt_timeout_s,
                                   prompt_max_bytes=int(cfg.data.prompt_max_mb * 2**20))

        self.scheduler = Scheduler(
            cfg=cfg.cluster, queue=self.queue, locate=self.locate, settings=settings, count=rplan.count,
            resources={"num_cpus": rplan.num_cpus, "num_gpus": rplan.num_gpus}, replica_cls=self.replica_cls,
            on_batch=self.on_batch, on_error=self._record_error, on_tick=self.progress.refresh, feed=self.feed,
        )
        self.scheduler.run()

    # -- job.json and summary --------------------------------------------------------------
    def summary(self, ended: float) -> dict[str, Any]:
        # only the columns the summary needs, counted in Arrow: a 10-million-row job stays cheap
        table = self.store.read_all(columns=["id", "status", "error", "duration_s"])
        counts: dict[str, int] = {}
        audio_total = 0.0
        errors: list[dict[str, Any]] = []
        if table.num_rows:
            for item in pc.value_counts(table.column("status")).to_pylist():
                counts[item["values"]] = item["counts"]
            audio_total = pc.sum(table.column("duration_s")).as_py() or 0.0
            failed = table.filter(pc.equal(table.column("status"), STATUS_ERROR))
            errors = group_errors(zip(failed.column("id").to_pylist(),
                                      (e or "" for e in failed.column("error").to_pylist())))
        p = self.progress
        wall = ended - self.started
        first_ready = self.scheduler.first_ready_at if self.scheduler else None
        steady = (ended - first_ready) if first_ready else None
        run = {
            "rows_done": p.ok + p.error, "ok": p.ok, "error": p.error, "skipped": self.skipped,
            "wall_s": round(wall, 3), "audio_s": round(p.audio_s, 3), "bytes_written": p.bytes,
            "driver_peak_rss_mb": round(_peak_rss_mb(), 1),
            "driver_cpu_s": round(time.process_time() - self.cpu_started, 3),
            # from the first replica ready to the end: what coordinating rows costs, without start-up
            "driver_steady_cpu_s": round(time.process_time() - self.scheduler.first_ready_cpu, 3)
            if self.scheduler and self.scheduler.first_ready_cpu is not None else None,
            # ... of which the scheduling loop's thread (the one that cannot use a second core; Ray's
            # own threads in this process can)
            "driver_steady_loop_cpu_s": round(time.thread_time() - self.scheduler.first_ready_thread_cpu, 3)
            if self.scheduler and self.scheduler.first_ready_thread_cpu is not None else None,
            "rows_per_s": round((p.ok + p.error) / wall, 4) if wall > 0 else 0.0,
            "audio_s_per_wall_s": round(p.audio_s / wall, 4) if wall > 0 else 0.0,  # "x real time"
            "wall_s_per_audio_s": round(wall / p.audio_s, 4) if p.audio_s > 0 else None,
            "startup_s": round(first_ready - self.started, 3) if first_ready else None,
            "steady_rows_per_s": round(p.ok / steady, 4) if steady else None,
            "steady_audio_s_per_wall_s": round(p.audio_s / steady, 4) if steady else None,
            "time_to_first_row_s": round(p.first_row_at - self.started, 3) if p.first_row_at else None,
            "first_row_at": p.first_row_at,
        }
        return {
            # rows: every row the job has a record of (a data.limit run may plan fewer); planned: this run's
            "job_dir": str(self.job_dir), "rows": max(table.num_rows, self.plan.total_rows),
            "planned": self.plan.total_rows, "status_counts": counts,
            "audio_s": round(audio_total, 3), "this_run": run, "errors": errors,
            "replicas": self.scheduler.replica_stats(ended) if self.scheduler else {},
        }

    def write_job_json(self, status: str, summary: Optional[dict[str, Any]] = None, error: str = "") -> None:
        run = {"started_at": datetime.fromtimestamp(self.started, timezone.utc).isoformat(timespec="seconds"),
               "ended_at": _now() if status != "running" else None, "status": status}
        if error:
            run["error"] = error
        if summary:
            run["summary"] = summary["this_run"]
        data = {
            "status": status, "config": to_plain(self.cfg), "job_seed": self.job_seed,
            "fingerprint": self.fingerprint, "versions": package_versions(),
            "started_at": (self.runs[0]["started_at"] if self.runs else run["started_at"]),
            "ended_at": run["ended_at"], "runs": [*self.runs, run], "summary": summary,
        }
        self.storage.put(JOB_JSON, (json.dumps(data, indent=2, default=str) + "\n").encode())


def prepare(cfg: JobConfig, replica_cls: type) -> Job:
    """Check config and inputs, handle overwrite/resume, scan the inputs (no row is planned yet) and
    open the metadata store: the run, ready to generate."""
    started, cpu_started = time.time(), time.process_time()
    storage = Storage(output_location(cfg.output.dir))
    try:
        audio_io.check_format(cfg.output.format.value, cfg.output.subtype)
    except ValueError as e:
        raise PipelineError(f"output.subtype: {e}") from e
    check_model_sources(cfg.model, cfg.quality)  # before any folder is made or replica started
    from ..model.script_checks import check_long_form_settings  # deferred: dia_model loads torch

    problem = (check_long_form_settings(cfg.generation) or check_quality_settings(cfg.quality)
               or check_exports(cfg.output.export))
    if problem:
        raise PipelineError(problem)
    storage.check_writable()  # credentials, bucket, permissions: before any model loads
    if cfg.overwrite:
        clear_outputs(storage)
    previous = read_job_json(storage)
    if cfg.generation.seed is not None:
        job_seed = int(cfg.generation.seed)
    else:
        job_seed = int(previous.get("job_seed") or secrets.randbits(31))
    prints = fingerprint(cfg, job_seed)
    check_fingerprint(previous, prints, str(storage))
    runs = [
        {**r, "status": "aborted", "error": "the driver stopped before the run finished"}
        if r.get("status") == "running" else r
        for r in previous.get("runs", [])
    ]
    plan = scan_plan(cfg)
    voice_clips = load_voices(cfg.voices, int(cfg.data.prompt_max_mb * 2**20))
    storage.remove_temporaries("audio")
    storage.remove_temporaries("metadata")
    store = MetadataStore(storage, plan, embed_audio=cfg.output.embed_audio,
                          flush_rows=cfg.output.flush_rows, flush_seconds=cfg.output.flush_seconds)
    job = Job(cfg, replica_cls, storage=storage, started=started, cpu_started=cpu_started, job_seed=job_seed,
              fingerprint=prints, runs=runs, plan=plan, voice_clips=voice_clips, store=store)
    job.write_job_json("running")
    return job


def run_job(cfg: Any, *, replica_cls: type = Replica) -> dict[str, Any]:
    """Run (or resume) one job; return its summary (also printed and saved in job.json).

    ``cfg``: a JobConfig or a Hydra/OmegaConf config with the same fields. ``replica_cls``: the
    actor class (a subclass of Replica, e.g. for fault-injection tests).
    """
    job = prepare(to_job_config(cfg), replica_cls)
    status, error = "failed", ""
    try:
        job.generate()
        while job.feed():  # shards not reached (every row was done): still merged
            pass
        job.store.consolidate()
        status = "completed"
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted"
        raise
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        job.progress.close()
        job.store.flush()
        summary = job.summary(time.time()) if status == "completed" else None
        job.write_job_json(status, summary, error)
    if job.cfg.output.report:
        try:
            log.info("report: %s", build_report(str(job.storage)))
        except Exception as e:  # the job is done and recorded; a report can be rebuilt later
            log.warning("report.html was not written (%s: %s); rebuild it with python -m pipeline.report %s",
                        type(e).__name__, e, job.storage)
    if job.cfg.output.export and summary is not None:
        summary["exports"] = run_exports(job)
    report(format_summary(summary))
    return summary


def check_exports(formats: Any) -> Optional[str]:
    """What is wrong with output.export (None: fine), said before any model loads."""
    unknown = [f for f in formats or [] if f not in EXPORT_FORMATS]
    if unknown:
        return f"output.export: unknown format {unknown[0]!r}; choose from {', '.join(EXPORT_FORMATS)}"
    return None


def run_exports(job: Any) -> dict[str, Any]:
    """The exports output.export asks for, into <export_dir>/<format>. The job is finished and recorded
    whatever happens here: a failed export is logged and can be run again with python -m pipeline.export."""
    root = (job.cfg.output.export_dir or job.storage.uri("exports")).rstrip("/")
    done: dict[str, Any] = {}
    for fmt in job.cfg.output.export:
        try:
            s = export_job(str(job.storage), fmt, f"{root}/{fmt}")
            done[fmt] = {"out": s.out, "rows": s.rows, "files": len(s.files)}
            log.info("export %s: %d rows in %s", fmt, s.rows, s.out)
        except Exception as e:
            done[fmt] = {"error": f"{type(e).__name__}: {e}"}
            log.warning("export %s failed (%s: %s); run it again with python -m pipeline.export %s --format %s "
                        "--out %s/%s", fmt, type(e).__name__, e, job.storage, fmt, root, fmt)
    return done


def report(text: str) -> None:
    """Show the end-of-run text: through logging when it is set up (the Hydra CLI: console and
    pipeline.log), else on stdout."""
    if logging.getLogger().handlers:
        log.info("%s", text)
    else:
        print(text, flush=True)


def exit_code(summary: dict[str, Any]) -> int:
    """The CLI's exit status for a finished job: 3 when rows were there to make and none is ok."""
    counts = summary.get("status_counts", {})
    if summary.get("rows", 0) and not counts.get(STATUS_OK, 0):
        return 3
    run = summary.get("this_run", {})
    return 3 if run.get("rows_done", 0) and not run.get("ok", 0) else 0
