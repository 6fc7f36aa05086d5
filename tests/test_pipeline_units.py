"""Pipeline parts that need neither Ray nor a model: inputs, ids, rows, queue, batching, metadata, config."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from hydra.errors import ConfigCompositionException

from dia_model import validate_script
from pipeline.audio import FORMATS, encode
from pipeline.batching import plan_batches
from pipeline.config import to_job_config
from pipeline.errors import InputError, PipelineError
from pipeline.ids import MAX_STEM, StemAllocator, safe_stem
from pipeline.inputs import check_schemas, resolve_inputs
from pipeline.metadata import STATUS_ERROR, STATUS_OK, MetadataStore, base_record, error_record
from pipeline.plan import build_plan
from pipeline.resume import check_fingerprint, fingerprint, select_rows
from pipeline.rows import derive_seed, parse_number
from pipeline.sweep import sweep_points
from pipeline.workqueue import WorkQueue

SAFE = re.compile(r"^[A-Za-z0-9_=+-][A-Za-z0-9._=+-]*$")


# -- ids ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        "../x",
        "/etc/y",
        "a\x00b",
        "..",
        ".",
        "",
        "x" * 500,
        "CON",
        "a/../../b",
        "über",
        "-rf",
        "nul.txt",
    ],
)
def test_unsafe_ids_become_safe_distinct_stems(raw):
    stem = safe_stem(raw)
    assert SAFE.match(stem), stem
    assert len(stem) <= MAX_STEM + 11
    assert "/" not in stem and "\x00" not in stem


def test_safe_ids_are_kept_and_different_unsafe_ids_stay_apart():
    assert safe_stem("row-001_a.b") == "row-001_a.b"
    assert safe_stem("a/b") != safe_stem("a_b")
    assert safe_stem("a/b") != safe_stem("a?b")


def test_allocator_never_hands_out_a_stem_twice_even_ignoring_case():
    alloc = StemAllocator()
    stems = [
        alloc.allocate(name, unique=f"{name}#{i}")
        for i, name in enumerate(["A", "a", "a", "a/b", "a_b"])
    ]
    assert len({s.lower() for s in stems}) == len(stems)
    assert stems[0] == "A"


# -- inputs ------------------------------------------------------------------------------------
def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_inputs_file_folder_glob_and_list(tmp_path):
    a = _write(tmp_path / "d" / "a.parquet", [{"text": "[S1] a"}])
    _write(tmp_path / "d" / "sub" / "a.parquet", [{"text": "[S1] b"}])
    _write(tmp_path / "d" / "_parts" / "x.parquet", [{"text": "[S1] c"}])
    (tmp_path / "d" / "notes.txt").write_text("not parquet")
    assert [s.path for s in resolve_inputs(str(a))] == [str(a)]
    folder = resolve_inputs(str(tmp_path / "d"))
    assert len(folder) == 2  # _parts is skipped, the .txt too
    assert len({s.name for s in folder}) == 2  # same file name in two folders: names still unique
    assert len(resolve_inputs(str(tmp_path / "d" / "*.parquet"))) == 1
    assert len(resolve_inputs(str(tmp_path / "d" / "**" / "*.parquet"))) == 2
    assert len(resolve_inputs([str(a), str(tmp_path / "d" / "sub")])) == 2
    assert len(resolve_inputs(f"file://{a}")) == 1


def test_missing_input_and_missing_text_column_fail_with_names(tmp_path):
    with pytest.raises(InputError, match="not found"):
        resolve_inputs(str(tmp_path / "nope.parquet"))
    p = _write(tmp_path / "x.parquet", [{"script": "[S1] hi", "id": "a"}])
    with pytest.raises(InputError, match=r"no text column 'text'.*script"):
        check_schemas(resolve_inputs(str(p)), "text")
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match="broken.parquet"):
        check_schemas(resolve_inputs(str(bad)), "text")
    n = _write(tmp_path / "num.parquet", [{"text": 3}])
    with pytest.raises(InputError, match="'text'"):
        check_schemas(resolve_inputs(str(n)), "text")


# -- rows and plan -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,value,expected",
    [
        ("cfg_scale", "2.5", 2.5),
        ("cfg_scale", None, None),
        ("cfg_scale", float("nan"), None),
        ("top_k", 45.0, 45),
        ("seed", 7, 7),
        ("max_new_frames", "", None),
    ],
)
def test_parse_number_accepts(name, value, expected):
    assert parse_number(name, value) == (expected, None)


@pytest.mark.parametrize(
    "name,value",
    [
        ("cfg_scale", "abc"),
        ("top_k", 4.5),
        ("top_p", 2.0),
        ("seed", -1),
        ("temperature", True),
        ("cfg_scale", float("inf")),
        ("max_new_frames", 0),
        ("cfg_scale", [1, 2]),
    ],
)
def test_parse_number_rejects(name, value):
    value_out, problem = parse_number(name, value)
    assert value_out is None and problem and name in problem


def _cfg(pipeline_cfg, data: Path, *overrides: str):
    return to_job_config(pipeline_cfg(f"data.input={data}", *overrides))


def test_plan_ids_seeds_overrides_and_carried_columns(pipeline_cfg, pipeline_parquet):
    data = pipeline_parquet(
        [
            {
                "id": "a",
                "text": "[S1] one",
                "cfg_scale": 2.0,
                "seed": None,
                "status": "x",
                "lang": "en",
            },
            {
                "id": None,
                "text": "[S1] two",
                "cfg_scale": None,
                "seed": 5,
                "status": "y",
                "lang": "de",
            },
            {
                "id": "dup",
                "text": "[S1] three",
                "cfg_scale": None,
                "seed": None,
                "status": "z",
                "lang": "fr",
            },
            {
                "id": "dup",
                "text": "[S1] four",
                "cfg_scale": None,
                "seed": None,
                "status": "w",
                "lang": "it",
            },
        ]
    )
    plan = build_plan(_cfg(pipeline_cfg, data), 0, validate_script)
    rows = plan.rows
    assert [r.cfg_scale for r in rows] == [2.0, 3.0, 3.0, 3.0]
    assert rows[0].seed == derive_seed(0, "a") and rows[1].seed == 5
    assert rows[1].id == "scripts-000001"  # stable id from shard and row index
    assert len({r.key for r in rows}) == 4 and len({r.audio_path for r in rows}) == 4
    assert rows[2].seed != rows[3].seed  # duplicate ids still get their own seeds
    carried = plan.carried["scripts"]
    assert carried.column_names == [
        "input_status",
        "lang",
    ]  # "status" clashes with the metadata's own
    again = build_plan(_cfg(pipeline_cfg, data), 0, validate_script)
    assert [(r.key, r.seed, r.audio_path) for r in again.rows] == [
        (r.key, r.seed, r.audio_path) for r in rows
    ]


def test_plan_collects_row_problems_without_failing(pipeline_cfg, pipeline_parquet):
    data = pipeline_parquet(
        [
            {
                "id": "ok",
                "text": "[S1] fine",
                "top_k": "40",
                "audio_prompt": None,
                "prompt_transcript": None,
            },
            {
                "id": "empty",
                "text": "",
                "top_k": None,
                "audio_prompt": None,
                "prompt_transcript": None,
            },
            {
                "id": "tag",
                "text": "[S3] who?",
                "top_k": None,
                "audio_prompt": None,
                "prompt_transcript": None,
            },
            {
                "id": "long",
                "text": "[S1] " + "a" * 2000,
                "top_k": None,
                "audio_prompt": None,
                "prompt_transcript": None,
            },
            {
                "id": "num",
                "text": "[S1] x",
                "top_k": "many",
                "audio_prompt": None,
                "prompt_transcript": None,
            },
            {
                "id": "null",
                "text": None,
                "top_k": None,
                "audio_prompt": "p.wav",
                "prompt_transcript": "[S1] hi",
            },
        ]
    )
    rows = build_plan(_cfg(pipeline_cfg, data), 0, validate_script).rows
    problems = {r.id: r.problems for r in rows}
    assert problems["ok"] == [] and [r.top_k for r in rows][0] == 40
    for bad in ("empty", "tag", "long", "num", "null"):
        assert problems[bad], bad
    assert "top_k" in problems["num"][0]
    assert rows[5].prompt_uri == f"{data.parent}/p.wav"  # relative to the shard's folder


def test_length_cap_row_beats_job_and_sweep_beats_row(pipeline_cfg, pipeline_parquet):
    data = pipeline_parquet(
        [
            {"text": "[S1] a", "max_new_frames": None, "max_seconds": 2.0},
            {"text": "[S1] b", "max_new_frames": 30, "max_seconds": 2.0},
            {"text": "[S1] c", "max_new_frames": None, "max_seconds": None},
        ]
    )
    rows = build_plan(
        _cfg(pipeline_cfg, data, "generation.max_new_frames=50"), 0, validate_script
    ).rows
    assert [(r.max_new_frames, r.max_seconds) for r in rows] == [
        (None, 2.0),
        (30, None),
        (50, None),
    ]
    rows = build_plan(
        _cfg(pipeline_cfg, data, "sweep.max_new_frames=[20]"), 0, validate_script
    ).rows
    assert [(r.max_new_frames, r.max_seconds) for r in rows] == [(20, None)] * 3


def test_sweep_expands_rows_with_tags(pipeline_cfg, pipeline_parquet):
    data = pipeline_parquet([{"id": "a", "text": "[S1] hi", "cfg_scale": 9.0}])
    cfg = _cfg(pipeline_cfg, data, "sweep.cfg_scale=[2,3]", "sweep.top_k=[10,20]")
    rows = build_plan(cfg, 0, validate_script).rows
    assert len(rows) == 4
    assert {(r.cfg_scale, r.top_k) for r in rows} == {(2.0, 10), (2.0, 20), (3.0, 10), (3.0, 20)}
    assert len({r.audio_path for r in rows}) == 4 and len({r.seed for r in rows}) == 1
    assert rows[0].sweep_point == "cfg_scale-2.0__top_k-10"
    with pytest.raises(PipelineError, match="sweep.top_p"):
        sweep_points(_cfg(pipeline_cfg, data, "sweep.top_p=[0.5,3]").sweep)


def test_limit_takes_rows_across_shards(pipeline_cfg, tmp_path):
    _write(tmp_path / "d" / "a.parquet", [{"text": f"[S1] a{i}"} for i in range(3)])
    _write(tmp_path / "d" / "b.parquet", [{"text": f"[S1] b{i}"} for i in range(3)])
    rows = build_plan(_cfg(pipeline_cfg, tmp_path / "d", "data.limit=4"), 0, validate_script).rows
    assert [r.text for r in rows] == ["[S1] a0", "[S1] a1", "[S1] a2", "[S1] b0"]


# -- work queue and batching -----------------------------------------------------------------------
def test_queue_isolates_rows_near_their_attempt_limit():
    q = WorkQueue([f"r{i}" for i in range(6)], unit_rows=3, max_attempts=3)
    unit = q.take(replica_idle=True)
    assert unit.keys == ["r0", "r1", "r2"] and not unit.exclusive
    assert q.failed(unit.keys) == []  # first death: back in one normal unit, at the front
    again = q.take(replica_idle=True)
    assert again.keys == ["r0", "r1", "r2"]
    assert q.failed(again.keys) == []  # second death: each row alone from now on
    assert q.has_exclusive
    assert q.take(replica_idle=False) is None  # a busy replica drains first
    lone = q.take(replica_idle=True)
    assert lone.exclusive and lone.keys == ["r0"]
    assert q.failed(lone.keys) == ["r0"]  # third death of r0: given up
    assert q.attempts["r1"] == 2 and len(q) == 2 + 3


def test_queue_with_one_attempt_gives_up_at_once():
    q = WorkQueue(["a", "b"], unit_rows=4, max_attempts=1)
    assert q.failed(q.take(True).keys) == ["a", "b"] and len(q) == 0


def test_batches_group_by_length_within_size_and_budget():
    lengths = [5, 100, 7, 98, 6, 99, 50]
    batches = plan_batches(lengths, lambda x: x, batch_size=3)
    assert batches == [[100, 99, 98], [50, 7, 6], [5]]
    budget = plan_batches(lengths, lambda x: x, batch_size=8, frame_budget=200)
    assert all(len(b) * max(b) <= 200 for b in budget if len(b) > 1)
    assert sorted(x for b in budget for x in b) == sorted(lengths)
    assert plan_batches([500], lambda x: x, batch_size=4, frame_budget=10) == [[500]]


# -- metadata and resume ---------------------------------------------------------------------------
def test_metadata_parts_merge_last_wins_in_input_order(pipeline_cfg, pipeline_parquet, tmp_path):
    data = pipeline_parquet([{"id": f"r{i}", "text": f"[S1] {i}", "extra": i} for i in range(4)])
    plan = build_plan(_cfg(pipeline_cfg, data), 0, validate_script)
    job = tmp_path / "job"
    store = MetadataStore(job, plan, flush_rows=2)
    model = {"source": "m", "revision": None}
    rows = plan.rows
    store.add(error_record(rows[3], "boom", model))
    store.add(
        {**base_record(rows[1], model), "status": STATUS_OK, "audio_path": rows[1].audio_path}
    )
    store.add(error_record(rows[1], "later", model))  # the same row again: the newest record wins
    store.flush()
    assert len(list((job / "metadata" / "_parts").rglob("*.parquet"))) == 2
    assert store.existing()["r1"].status == STATUS_ERROR
    store.consolidate()
    assert not list((job / "metadata" / "_parts").rglob("*.parquet"))
    table = pq.read_table(job / "metadata" / "scripts.parquet")
    assert table.column("id").to_pylist() == ["r1", "r3"]
    assert table.column("error").to_pylist() == ["later", "boom"]
    assert table.column("extra").to_pylist() == [1, 3]
    # resume: errors are done unless retried; an ok row whose audio file is gone is redone
    store.add(
        {**base_record(rows[0], model), "status": STATUS_OK, "audio_path": rows[0].audio_path}
    )
    store.flush()
    todo, done = select_rows(rows, store.existing(), job, retry_errors=False)
    assert [r.id for r in todo] == ["r0", "r2"] and done == 2
    (job / rows[0].audio_path).parent.mkdir(parents=True)
    (job / rows[0].audio_path).write_bytes(b"x")
    todo, done = select_rows(rows, store.existing(), job, retry_errors=True)
    assert [r.id for r in todo] == ["r1", "r2", "r3"] and done == 1


def test_changed_generation_settings_refuse_to_resume(pipeline_cfg, pipeline_parquet, tmp_path):
    data = pipeline_parquet([{"text": "[S1] a"}])
    before = fingerprint(_cfg(pipeline_cfg, data), 0)
    check_fingerprint(
        {"fingerprint": before},
        fingerprint(_cfg(pipeline_cfg, data, "cluster.replicas=3"), 0),
        tmp_path,
    )
    with pytest.raises(PipelineError, match="generation.cfg_scale"):
        check_fingerprint(
            {"fingerprint": before},
            fingerprint(_cfg(pipeline_cfg, data, "generation.cfg_scale=2"), 0),
            tmp_path,
        )


# -- config and audio ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override",
    [
        "generation.cfg_scal=2",
        "generation.top_k=many",
        "output.format=aac",
        "cluster.replica=2",
        "sweep.cfg=[1]",
    ],
)
def test_typo_or_wrong_type_in_an_override_is_an_error(pipeline_cfg, override):
    with pytest.raises(ConfigCompositionException):
        pipeline_cfg(override)


def test_example_config_points_at_the_bundled_parquet(pipeline_cfg):
    cfg = to_job_config(pipeline_cfg())
    table = pq.read_table(cfg.data.input)
    assert 15 <= table.num_rows <= 30
    texts = table.column("text").to_pylist()
    assert any("[S2]" in t for t in texts) and any("(laughs)" in t for t in texts)
    prompts = [p for p in table.column("audio_prompt").to_pylist() if p]
    assert prompts and all((Path(cfg.data.input).parent / p).is_file() for p in prompts)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_audio_encoding_round_trips_at_44k(fmt):
    wave = (0.1 * np.sin(np.linspace(0, 2000, 44100))).astype(np.float32)
    data, sr = sf.read(io.BytesIO(encode(wave, 44100, fmt)))
    assert sr == 44100 and data.ndim == 1 and abs(len(data) - len(wave)) <= 2048
