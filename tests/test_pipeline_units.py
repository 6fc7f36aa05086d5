"""Pipeline parts that need neither Ray nor a model: inputs, ids, rows, queue, metadata, config."""

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
from pipeline.storage import Storage
from pipeline.audio import FORMATS, encode
from pipeline.config import to_job_config
from pipeline.errors import InputError, PipelineError
from pipeline.planning.ids import MAX_STEM, StemAllocator, safe_stem
from pipeline.planning.inputs import check_schemas, resolve_inputs
from pipeline.records.schema import STATUS_ERROR, STATUS_OK, base_record, error_record
from pipeline.records.store import MetadataStore
from pipeline.planning.planner import build_plan
from pipeline.records.resume import check_fingerprint, fingerprint, select_rows
from pipeline.planning.rows import derive_seed, parse_number
from pipeline.planning.sweep import sweep_points
from pipeline.driver.workqueue import WorkQueue

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
        # integers given as strings are parsed exactly, not through float()
        ("seed", "9007199254740993", 9007199254740993),
        ("seed", "9223372036854775807", 2**63 - 1),  # the documented maximum
        ("seed", " 42 ", 42),
        ("top_k", "45.0", 45),
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
        ("seed", "3.5"),  # a float-looking seed is an error
        ("seed", "9223372036854775808"),  # one past the maximum
        ("seed", 2.0**60),  # a float beyond 2**53 cannot say which integer it meant
        ("seed", "1e999999"),
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


# -- metadata and resume ---------------------------------------------------------------------------
def test_metadata_parts_merge_last_wins_in_input_order(pipeline_cfg, pipeline_parquet, tmp_path):
    data = pipeline_parquet([{"id": f"r{i}", "text": f"[S1] {i}", "extra": i} for i in range(4)])
    plan = build_plan(_cfg(pipeline_cfg, data), 0, validate_script)
    job = tmp_path / "job"
    store = MetadataStore(Storage(str(job)), plan, flush_rows=2)
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
    keys = [r.key for r in rows]
    todo, done = select_rows(keys, "scripts", store.existing(), Storage(str(job)), retry_errors=False)
    assert [rows[p].id for p in todo] == ["r0", "r2"] and done == 2
    (job / rows[0].audio_path).parent.mkdir(parents=True)
    (job / rows[0].audio_path).write_bytes(b"x")
    todo, done = select_rows(keys, "scripts", store.existing(), Storage(str(job)), retry_errors=True)
    assert [rows[p].id for p in todo] == ["r1", "r2", "r3"] and done == 1


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


# -- issue 6: fault cases -------------------------------------------------------------------------
def test_string_seeds_keep_every_digit_in_the_plan(pipeline_cfg, pipeline_parquet):
    data = pipeline_parquet([{"id": "a", "text": "[S1] a", "seed": "9007199254740993"},
                             {"id": "b", "text": "[S1] b", "seed": "9007199254740992"},
                             {"id": "c", "text": "[S1] c", "seed": "3.5"}])
    rows = {r.id: r for r in build_plan(_cfg(pipeline_cfg, data), 0, validate_script).rows}
    assert rows["a"].seed == 9007199254740993 and rows["b"].seed == 9007199254740992
    assert rows["c"].problems == ["seed='3.5' is not an integer"]


def _invalid_utf8(values: list[bytes]) -> pa.Array:
    """A string array holding raw bytes (Parquet files in the wild can carry invalid UTF-8)."""
    offsets = np.cumsum([0, *(len(v) for v in values)]).astype(np.int32)
    return pa.Array.from_buffers(pa.string(), len(values), [None, pa.py_buffer(offsets.tobytes()),
                                                            pa.py_buffer(b"".join(values))])


def test_cells_that_cannot_be_decoded_cost_their_row_not_the_job(pipeline_cfg, tmp_path):
    table = pa.table({
        "id": _invalid_utf8([b"good", b"badtext", b"bad\xffid", b"badnote", b"badtranscript"]),
        "text": _invalid_utf8([b"[S1] fine", b"[S1] \xc3\x28", b"[S1] ok", b"[S1] ok", b"[S1] ok"]),
        "note": _invalid_utf8([b"n", b"n", b"n", b"\xfe", b"n"]),
        "prompt_transcript": _invalid_utf8([b"", b"", b"", b"", b"[S1] \x80"]),
    })
    path = tmp_path / "data" / "bad.parquet"
    path.parent.mkdir()
    pq.write_table(table, path)
    with pytest.raises(UnicodeDecodeError):  # what used to crash the job at plan time
        pq.read_table(path).column("text").to_pylist()
    plan = build_plan(_cfg(pipeline_cfg, path), 0, validate_script)
    rows = plan.rows
    assert len(rows) == 5 and rows[0].problems == [] and rows[0].text == "[S1] fine"
    assert rows[1].problems == ["column 'text' is not valid UTF-8 (bad byte at offset 5)"]
    assert rows[2].id == "bad-000002" and "column 'id' is not valid UTF-8" in rows[2].problems[0]
    assert rows[3].problems == ["column 'note' is not valid UTF-8 (bad byte at offset 0)"]
    assert "column 'prompt_transcript' is not valid UTF-8" in rows[4].problems[0]
    assert plan.carried["bad"].column("note").to_pylist() == ["n", "n", "n", None, "n"]  # stays readable


def test_long_ids_with_a_sweep_give_names_that_fit_the_file_system(pipeline_cfg, pipeline_parquet, tmp_path):
    from pipeline.files import atomic_write_bytes

    long_id = "speaker-" + "x" * 300
    data = pipeline_parquet([{"id": long_id, "text": "[S1] a"}, {"id": long_id[:-1] + "y", "text": "[S1] b"}])
    cfg = _cfg(pipeline_cfg, data, "sweep.cfg_scale=[1.2345678901234567,2.5]", "sweep.temperature=[0.7512345678901234]",
               "sweep.top_p=[0.9123456789012345]", "sweep.top_k=[30]", "sweep.max_new_frames=[40]",
               "sweep.seed=[1234567890123456789]")
    rows = build_plan(cfg, 0, validate_script).rows
    names = [Path(r.audio_path).name for r in rows]
    assert len(set(names)) == 4 and all(len(n.encode()) <= 210 for n in names)
    for r in rows:  # the temporary name beside it fits too
        atomic_write_bytes(tmp_path / "job" / r.audio_path, b"x")
    assert len(list((tmp_path / "job").rglob("*.flac"))) == 4


def test_a_run_over_a_subset_keeps_the_other_rows_records(pipeline_cfg, pipeline_parquet, tmp_path):
    data = pipeline_parquet([{"id": f"r{i}", "text": f"[S1] {i}", "extra": i} for i in range(5)])
    job = tmp_path / "job"
    model = {"source": "m", "revision": None}
    full = build_plan(_cfg(pipeline_cfg, data), 0, validate_script)
    store = MetadataStore(Storage(str(job)), full)
    for r in full.rows:
        store.add({**base_record(r, model), "status": STATUS_OK, "audio_path": r.audio_path, "attempts": 0})
    store.consolidate()
    subset = build_plan(_cfg(pipeline_cfg, data, "data.limit=2"), 0, validate_script)  # e.g. data.limit=2
    store = MetadataStore(Storage(str(job)), subset)
    store.add(error_record(subset.rows[1], "redone", model))
    store.consolidate()
    table = pq.read_table(job / "metadata" / "scripts.parquet")
    assert table.column("id").to_pylist() == ["r0", "r1", "r2", "r3", "r4"]  # nothing dropped, input order
    assert table.column("status").to_pylist() == ["ok", "error", "ok", "ok", "ok"]
    assert table.column("extra").to_pylist() == [0, 1, 2, 3, 4]


def test_unknown_settings_are_errors_even_with_a_plus(pipeline_cfg):
    with pytest.raises(PipelineError, match=r"generation.cfg_scal \(did you mean generation.cfg_scale\?\)"):
        to_job_config(pipeline_cfg("+generation.cfg_scal=2"))
    with pytest.raises(PipelineError, match="unknown setting: foo"):
        to_job_config(pipeline_cfg("+foo=1"))
    to_job_config(pipeline_cfg("+cluster.runtime_env.env_vars.X=1"))  # a free-form mapping takes any key


def test_missing_input_is_one_line_that_says_what_to_set(pipeline_cfg):
    with pytest.raises(PipelineError, match=r"^data.input is not set: add data.input=") as e:
        to_job_config(pipeline_cfg("data=parquet"))
    assert "\n" not in str(e.value)


def test_default_job_folders_are_siblings_with_bounded_names():
    from pipeline.config import MAX_JOB_DIR_NAME, job_dir_name

    assert job_dir_name("example", "tiny-random", "") == "example-tiny-random"
    assert job_dir_name("example", "tiny-random", "generation.cfg_scale=2") == \
        "example-tiny-random__generation.cfg_scale=2"
    assert "/" not in job_dir_name("d", "m", "voices.a=clips/a.wav")
    long = job_dir_name("d", "m", ",".join(f"sweep.seed=[{i}]" for i in range(100)))
    assert len(long.encode()) <= MAX_JOB_DIR_NAME and long != job_dir_name("d", "m", "sweep.seed=[1]")


def test_errors_are_grouped_by_reason_with_example_ids():
    from pipeline.records.error_groups import format_errors, group_errors

    groups = group_errors([("a", "audio_prompt file not found: /data/a.wav"), ("b", "text is empty"),
                           ("c", "audio_prompt file not found: /data/c.wav"),
                           ("d", "max_new_frames=5000 is too large: at most 3056 after a 0-frame prompt")])
    assert [(g["reason"], g["count"], g["ids"]) for g in groups] == [
        ("audio_prompt file not found: <path>", 2, ["a", "c"]), ("text is empty", 1, ["b"]),
        ("max_new_frames=N is too large: at most N after a N-frame prompt", 1, ["d"])]
    text = "\n".join(format_errors(groups))
    assert "errors: 4 rows, by reason:" in text and "e.g. audio_prompt file not found: /data/a.wav" in text


def test_summary_of_a_run_that_did_nothing_has_no_none():
    from pipeline.driver.progress import format_summary

    run = {"rows_done": 0, "ok": 0, "error": 0, "skipped": 20, "wall_s": 3.0, "rows_per_s": 0.0,
           "audio_s_per_wall_s": 0.0, "wall_s_per_audio_s": None, "time_to_first_row_s": None}
    text = format_summary({"job_dir": "/j", "rows": 20, "status_counts": {"ok": 20}, "audio_s": 5.0,
                           "this_run": run, "replicas": {}, "errors": []})
    assert "None" not in text and "20 already done" in text and "real-time factor" not in text


def test_prompt_files_that_are_not_regular_too_large_or_endless_are_refused(tmp_path, monkeypatch):
    import os
    import time

    from pipeline.planning.prompts import PromptReader, read_prompt

    fifo = tmp_path / "voice.wav"
    os.mkfifo(fifo)  # opening it would block forever: it must be refused without opening
    data, problem = read_prompt(str(fifo))
    assert data is None and "not a regular file" in problem
    assert "not a regular file" in read_prompt("/dev/zero")[1]
    big = tmp_path / "big.wav"
    sf.write(big, np.zeros(44100, np.float32), 44100)
    assert "too large" in read_prompt(str(big), max_bytes=1000)[1]
    assert read_prompt(str(big))[1] is None
    # a read that never finishes becomes the row's error at the deadline, without blocking the caller:
    # an S3 endpoint on loopback that accepts connections and never answers
    import socket
    import threading

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    silent = socket.create_server(("127.0.0.1", 0))
    held = []

    def hold_connections() -> None:
        try:
            while True:
                held.append(silent.accept())
        except OSError:  # closed at the end of the test
            pass

    threading.Thread(target=hold_connections, daemon=True).start()
    uri = f"s3://bucket/voice.wav?endpoint_override=127.0.0.1:{silent.getsockname()[1]}&scheme=http"
    reader = PromptReader(timeout_s=0.5)
    start = time.monotonic()
    entry = reader.get(uri)  # the read runs in its own thread; the caller waits only until the deadline
    assert time.monotonic() - start < 5
    assert entry[0] is None and "took longer than 0.5 s" in entry[1]
    start = time.monotonic()
    assert reader.get(uri) == entry and time.monotonic() - start < 0.1  # said once, then remembered
    silent.close()


def test_storage_never_writes_outside_its_root(tmp_path):
    root = tmp_path / "job"
    (root / "audio").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "audio" / "link").symlink_to(tmp_path / "elsewhere")
    store = Storage(str(root))
    store.put("audio/a/b.flac", b"x")
    assert (root / "audio" / "a" / "b.flac").read_bytes() == b"x" and store.files("audio") == ["audio/a/b.flac"]
    for bad in ("../x.flac", "/etc/x", "audio/../../x", "audio/link/x.flac"):
        with pytest.raises(ValueError, match="outside"):
            store.put(bad, b"x")
    assert not list((tmp_path / "elsewhere").iterdir()) and not (tmp_path / "x.flac").exists()


def test_the_driver_index_and_a_replica_planning_a_slice_agree_with_the_whole_plan(pipeline_cfg, tmp_path):
    """The driver keeps only keys (``index_shard``); a replica plans the positions it is sent
    (``JobContext.planner``). Both must name every row as planning the whole shard does: same keys
    (duplicate ids, sweep points), same RowSpecs, same file names, and the longest script first."""
    from pipeline.planning.planner import JobContext
    from pipeline.planning.scan import index_shard, scan_plan
    from pipeline.model.script_checks import script_checker

    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"id": ["a", "dup", "A", "b"], "text": ["[S1] hi.", "[S1] " + "x" * 40, "[S1] yo.", None],
                             "seed": [1, None, 3, 4]}), data / "p0.parquet")
    pq.write_table(pa.table({"id": ["dup", "c"], "text": ["[S1] one.", "[S1] two."]}), data / "p1.parquet")
    cfg = _cfg(pipeline_cfg, data, "sweep.cfg_scale=[2.0,3.0]")
    whole = build_plan(cfg, 7, script_checker(cfg.generation))
    scanned = scan_plan(cfg)
    context = JobContext.of(cfg, scanned, 7, {})
    for shard in scanned.shards:
        index, lengths = index_shard(cfg, scanned, shard)
        expected = whole.loaded[shard.name]
        assert index.keys == [r.key for r in expected]
        points = len(index.points)  # row i at sweep point p is position i * points + p
        assert [(p // points, index.points[p % points]) for p in range(len(expected))] == [
            (r.row_index, r.sweep_point) for r in expected]
        planner = context.planner(shard.name)
        for position in reversed(range(len(expected))):  # any order, any subset
            assert planner.row(position) == expected[position]
        if shard.name == "p0":
            assert int(np.argmax(lengths)) == 2 and lengths[-1] == 0  # "dup" at point 0; a null text is 0
    assert {k for k in whole.by_key() if k.startswith("dup")} == {
        "dup@p0:1|cfg_scale-2.0", "dup@p0:1|cfg_scale-3.0", "dup@p1:0|cfg_scale-2.0", "dup@p1:0|cfg_scale-3.0"}
    paths = [r.audio_path for r in whole.rows]
    assert len({p.lower() for p in paths}) == len(paths)  # "a" and "A" never share a file


def test_a_call_to_a_replica_takes_queued_units_up_to_its_slots_and_never_a_lone_retry():
    from pipeline.driver.scheduler import call_rows

    queue = WorkQueue([f"k{i}" for i in range(40)], unit_rows=16, max_attempts=2)
    first = queue.take(replica_idle=True, rows=10)
    assert first.keys == [f"k{i}" for i in range(10)] and len(queue) == 30
    assert queue.take(replica_idle=False).keys == [f"k{i}" for i in range(10, 16)]  # the split unit's rest
    assert queue.failed(["k3"]) == [] and queue.has_exclusive  # k3 is now retried alone
    assert queue.take(replica_idle=False, rows=100) is None  # a busy replica gets nothing while it waits
    assert queue.take(replica_idle=True, rows=100).keys == ["k3"]
    assert call_rows(slots=128, unit_rows=16) == 128 and call_rows(slots=8, unit_rows=16) == 16


def test_dia_and_the_null_model_meet_the_model_protocol():
    """Replicas and apps use a model only through ``SpeechModel``: Dia and the null model both have all of it."""
    from dia_model import Dia
    from pipeline.model.null_model import NullModel
    from pipeline.model.protocol import SpeechModel

    null = NullModel()
    assert isinstance(null, SpeechModel)
    for name in ("sample_rate", "frame_rate", "max_frames", "max_new_frames_limit", "encode_audio", "decode_audio",
                 "stream", "generate"):
        assert callable(getattr(Dia, name)) or isinstance(getattr(Dia, name), property), name
    [res] = null.generate("[S1] Hi.", seed=7, max_new_frames=10)
    assert res.seed == 7 and res.frames == 8 and len(null.decode_audio([res.codes])[0]) == len(res.audio)


def test_a_delivery_cut_to_fewer_rows_still_counts_refused_rows_as_refused():
    """BatchResult counts come from one tally per row, so ``only`` (rows the driver already gave up
    on are dropped) keeps a row refused while planning out of the generated failures."""
    from pipeline.records.schema import records_table
    from pipeline.replica.results import FAILED, OK, REFUSED, BatchResult, RowTally, ipc_bytes

    records = [{"key": k, "id": k, "shard": "s", "row_index": i, "status": s}
               for i, (k, s) in enumerate([("a", "ok"), ("b", "error"), ("c", "error")])]
    tallies = [RowTally("a", OK, 1.5, 100), RowTally("b", FAILED, 0.0, 0), RowTally("c", REFUSED, 0.0, 0)]
    full = BatchResult({"s": ipc_bytes(records_table(records, None))}, tallies, {"name": "r0"})
    assert (full.ok, full.failed, full.refused, full.audio_s, full.audio_bytes) == (1, 1, 1, 1.5, 100)
    cut = full.only({"a", "c"})
    assert (cut.keys, cut.ok, cut.failed, cut.refused, cut.audio_bytes) == (["a", "c"], 1, 0, 1, 100)
    assert cut.table("s").column("key").to_pylist() == ["a", "c"]
