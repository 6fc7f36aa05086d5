"""The audition UI in headless Chromium: the page loads clean, 2 candidates give 2 playable players,
and the exported settings run as a pipeline job."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline import run_job
from pipeline.audition import Audition, serve
from pipeline.config import EXAMPLES_DIR, ModelConfig
from pipeline.model_loader import load_model
from pipeline.say import voice_library


@pytest.fixture
def audition(pipeline_cache_dir, tmp_path):
    model = load_model(ModelConfig(source="tiny-random", cache_dir=str(pipeline_cache_dir)), has_gpu=False)
    app = Audition(model, "tiny-random", tmp_path / "audition", voice_library([]))
    server = serve(app, "127.0.0.1", 0)
    yield app, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_audition_generates_plays_and_exports_a_job(audition, browser, pipeline_cfg, pipeline_parquet, tmp_path):
    app, url = audition
    app.add_voice("ann", "This is a short reference clip.", "ann.flac", (EXAMPLES_DIR / "prompt.flac").read_bytes())
    with pytest.raises(ValueError, match="not a readable audio file"):
        app.add_voice("bad", "words", "bad.wav", b"RIFF not audio")
    assert list((app.workdir / "voices").iterdir()) == [app.workdir / "voices" / "ann.flac"]  # nothing half-written

    browser.get(url)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    assert "noise" in browser.find_element("id", "model").text
    browser.execute_script("""
        document.getElementById('voice_s1').value = 'ann';
        document.getElementById('candidates').value = '2';
        document.getElementById('seed').value = '5';
        document.getElementById('max_seconds').value = '1';""")
    browser.find_element("id", "generate").click()
    durations: list = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        durations = browser.execute_script(
            "return [...document.querySelectorAll('.take audio')].map(a => a.readyState >= 1 ? a.duration : null)")
        if len(durations) == 2 and all(d for d in durations):
            break
        time.sleep(0.3)
    assert len(durations) == 2 and all(0 < d <= 1.1 for d in durations), (durations, browser.find_element("id", "status").text)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []

    browser.find_element("css selector", ".take[data-take='1'] button.export").click()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not browser.find_elements("id", "export-command"):
        time.sleep(0.1)
    command = browser.find_element("id", "export-command").text
    assert "voices.ann.audio=" in command and "generation.cfg_scale=3.0" in command
    exported = app.workdir / "exports" / "audition.overrides"
    overrides = [line for line in exported.read_text().splitlines() if line and not line.startswith("#")]

    data = pipeline_parquet([{"id": "from-audition", "text": "[S1] The chosen settings, now in bulk.", "voice_s1": "ann"}])
    summary = run_job(pipeline_cfg(f"data.input={data}", "generation.max_new_frames=40",
                                   *[o for o in overrides if not o.startswith("model.")]))
    assert summary["status_counts"] == {"ok": 1}
    row = pq.read_table(next((tmp_path / "job" / "metadata").glob("*.parquet"))).to_pylist()[0]
    assert row["voice_s1"] == "ann" and row["prompt_frames"] > 0 and row["cfg_scale"] == 3.0
