"""Long dialogues, named voices and the end tag through the real pipeline (local Ray, Parquet, tiny Dia)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipeline import run_job
from pipeline.config import EXAMPLES_DIR, ModelConfig
from pipeline.replica.actor import Replica
from pipeline.replica.results import ReplicaSettings

SHORT = ["generation.batch_size=4", "cluster.unit_rows=2", "generation.tail_seconds=0.2"]


def long_script(turns: int = 22) -> str:
    """~2,600 bytes: about three minutes of expected speech."""
    return " ".join(f"[S{1 + i % 2}] Turn {i}: " + " ".join(f"here is sentence {j} of it." for j in range(4))
                    for i in range(turns))


def meta(job: Path) -> dict[str, dict]:
    rows = [r for f in sorted((job / "metadata").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return {r["id"]: r for r in rows}


@pytest.fixture
def voice_clips(tmp_path: Path) -> dict[str, Path]:
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(EXAMPLES_DIR / "prompt.flac", clips / "alice.flac")
    data, sr = sf.read(EXAMPLES_DIR / "prompt.flac")
    sf.write(clips / "bob.wav", data[: len(data) // 2] * 0.5, sr)
    (clips / "broken.wav").write_bytes(b"RIFF....not audio at all")
    return {"alice": clips / "alice.flac", "bob": clips / "bob.wav", "broken": clips / "broken.wav"}


def voice_overrides(clips: dict[str, Path]) -> list[str]:
    return [item for name, path in clips.items()
            for item in (f"voices.{name}.audio={path}", f"voices.{name}.transcript='I am {name}, speaking slowly.'")]


def test_long_rows_voices_and_end_tag_in_one_job(ray_local, pipeline_cfg, pipeline_parquet, voice_clips, tmp_path):
    base = {"voice": None, "voice_s1": None, "voice_s2": None}
    rows = [
        {**base, "id": "long", "text": long_script()},
        {**base, "id": "short", "text": "[S1] A short line. [S2] And a reply."},
        {**base, "id": "single", "text": "[S1] Just one turn here."},
        {**base, "id": "empty-turn", "text": long_script() + " [S1]  [S2] The end."},
        {**base, "id": "no-sentence-end", "text": "[S1] Hi. [S2] " + "and then " * 200},
        {**base, "id": "pair", "text": "[S1] We both have names. [S2] Yes we do.", "voice_s1": "alice",
         "voice_s2": "bob"},
        {**base, "id": "alice", "text": "[S1] Only Alice talks here.", "voice": "alice"},
        {**base, "id": "unknown", "text": "[S1] Who am I?", "voice_s1": "carol"},
        {**base, "id": "broken", "text": "[S1] My clip is broken.", "voice": "broken"},
        {**base, "id": "long-pair", "text": long_script(8), "voice_s1": "alice", "voice_s2": "bob"},
    ]
    data = pipeline_parquet(rows)
    job = tmp_path / "job"
    summary = run_job(pipeline_cfg(f"data.input={data}", "cluster.replicas=2", *SHORT, *voice_overrides(voice_clips)))
    m = meta(job)
    assert summary["status_counts"] == {"ok": 6, "error": 4}, {k: v["error"] for k, v in m.items()}

    long = m["long"]
    assert long["status"] == "ok" and long["long_form"] and long["chunks"] >= 9
    assert sum(long["chunk_frames"]) == long["frames"] and long["end_tag_applied"]
    audio, sr = sf.read(job / long["audio_path"])
    assert len(audio) == long["frames"] * 512 and sr == 44100
    short = m["short"]
    assert short["status"] == "ok" and not short["long_form"] and short["chunks"] is None
    assert short["end_tag_applied"] and not m["single"]["end_tag_applied"]

    assert "is empty" in m["empty-turn"]["error"]
    assert "no sentence end" in m["no-sentence-end"]["error"]
    assert m["pair"]["status"] == "ok" and (m["pair"]["voice_s1"], m["pair"]["voice_s2"]) == ("alice", "bob")
    assert m["alice"]["voice_s1"] == "alice" and m["alice"]["voice_s2"] is None
    assert m["pair"]["prompt_frames"] > m["alice"]["prompt_frames"] > 0  # both clips, one after the other
    assert "voice 'carol' is not configured" in m["unknown"]["error"]
    assert "voice 'broken'" in m["broken"]["error"] and "not a readable audio file" in m["broken"]["error"]
    assert m["long-pair"]["status"] == "ok" and m["long-pair"]["chunks"] >= 2
    assert m["long-pair"]["prompt_frames"] == m["pair"]["prompt_frames"]  # chunk 0 starts from the voices


def test_long_form_off_and_the_length_cap_are_row_errors_at_planning(pipeline_cfg, pipeline_parquet):
    """Both are decided while planning, before any replica: no Ray needed."""
    from pipeline.config import to_job_config
    from pipeline.planning.planner import build_plan
    from pipeline.model.script_checks import script_checker

    data = pipeline_parquet([{"id": "long", "text": long_script()}, {"id": "ok", "text": "[S1] Fine. [S2] Good."}])

    def planned(*overrides: str) -> dict:
        cfg = to_job_config(pipeline_cfg(f"data.input={data}", *overrides))
        return {r.id: r for r in build_plan(cfg, 0, script_checker(cfg.generation)).rows}

    auto = planned()
    assert auto["long"].long_form and not auto["long"].problems and not auto["ok"].long_form
    off = planned("generation.long_form=off")
    assert "over the model's limit" in off["long"].problems[0] and "generation.long_form=auto" in off["long"].problems[0]
    capped = planned("generation.max_script_seconds=60")
    assert "over generation.max_script_seconds=60" in capped["long"].problems[0] and not capped["ok"].problems
    assert planned("generation.long_form=on")["ok"].long_form


def test_changing_long_form_settings_on_resume_is_refused(pipeline_cfg, pipeline_parquet, tmp_path):
    from pipeline.errors import PipelineError

    data = pipeline_parquet([{"id": "x", "text": "[S9] a bad tag"}])  # nothing to generate: no Ray needed
    run_job(pipeline_cfg(f"data.input={data}", *SHORT))
    with pytest.raises(PipelineError, match="generation.end_tag: 'auto' -> 'off'"):
        run_job(pipeline_cfg(f"data.input={data}", "generation.end_tag=off", *SHORT))


def test_the_same_voice_gives_the_same_prompt_codes_on_two_replicas(ray_local, pipeline_cache_dir, voice_clips):
    import ray

    model = to_job_config_model(pipeline_cache_dir)
    voices = {"alice": (voice_clips["alice"].read_bytes(), "I am alice."), "bob": (voice_clips["bob"].read_bytes(), "I am bob.")}
    actor = ray.remote(Replica)
    replicas = [actor.options(num_cpus=1).remote(ReplicaSettings(name=f"r{i}", model=model, has_gpu=False,
                                                                 torch_threads=1, audio_format="flac",
                                                                 audio_subtype=None, slots=1, voices=voices))
                for i in range(2)]
    try:
        got = ray.get([r.voice_prompt.remote(("alice", "bob")) for r in replicas])
        pids = ray.get([r.describe.remote() for r in replicas])
    finally:
        for r in replicas:
            ray.kill(r)
    (codes_a, text_a), (codes_b, text_b) = got
    assert pids[0]["pid"] != pids[1]["pid"]  # two processes, each encoding the clips itself
    assert np.array_equal(codes_a, codes_b) and codes_a.shape[1] == 9
    assert text_a == text_b == "[S1] I am alice. [S2] I am bob."


def to_job_config_model(cache_dir: Path) -> ModelConfig:
    return ModelConfig(name="tiny-random", source="tiny-random", cache_dir=str(cache_dir))


def test_a_voice_clip_over_ten_seconds_is_read_with_a_warning(tmp_path, caplog):
    from pipeline.config import VoiceConfig
    from pipeline.planning.voices import load_voices

    sf.write(tmp_path / "long.wav", np.zeros(44100 * 12, dtype=np.float32), 44100)
    sf.write(tmp_path / "ok.wav", np.zeros(44100 * 6, dtype=np.float32), 44100)
    with caplog.at_level("WARNING"):
        clips = load_voices({"long": VoiceConfig(str(tmp_path / "long.wav"), "Twelve seconds."),
                             "ok": VoiceConfig(str(tmp_path / "ok.wav"), "[S2] Six seconds."),
                             "gone": VoiceConfig(str(tmp_path / "missing.wav"), "Nothing.")}, 1 << 26)
    assert clips["long"].audio is not None and round(clips["long"].seconds) == 12
    assert "voice 'long'" in caplog.text and "5-10 s" in caplog.text and "voice 'ok'" not in caplog.text
    assert clips["ok"].transcript == "Six seconds."  # a leading tag is dropped: the row's role adds one
    assert clips["gone"].audio is None and "voice 'gone': clip file not found" in clips["gone"].problem
