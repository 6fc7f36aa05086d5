"""The audition UI in headless Chromium: the page loads clean with its token, 2 candidates give 2
playable players, and the exported command runs, as printed, as a pipeline job."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from pipeline.apps.audition import Audition, serve
from pipeline.config import EXAMPLES_DIR, ModelConfig
from pipeline.model.loader import load_model
from pipeline.apps.say import voice_library


@pytest.fixture
def audition(pipeline_cache_dir, tmp_path):
    model = load_model(ModelConfig(source="tiny-random", cache_dir=str(pipeline_cache_dir)), has_gpu=False)
    app = Audition(model, "tiny-random", tmp_path / "audition", voice_library([]))
    server = serve(app, "127.0.0.1", 0)
    yield app, server.url
    server.shutdown()
    server.server_close()


def test_audition_generates_plays_and_exports_a_job(audition, browser, pipeline_parquet, pipeline_cache_dir, tmp_path):
    app, url = audition
    app.add_voice("ann", "This is a short reference clip.", "ann.flac", (EXAMPLES_DIR / "prompt.flac").read_bytes())
    with pytest.raises(ValueError, match="not a readable audio file"):
        app.add_voice("bad", "words", "bad.wav", b"RIFF not audio")
    assert list((app.workdir / "voices").iterdir()) == [app.workdir / "voices" / "ann.flac"]  # nothing half-written

    browser.get(url.split("?")[0])  # without the token: a page that says where to find it, nothing else
    assert "needs its token" in browser.find_element("tag name", "body").text
    browser.get_log("browser")  # (its 401 is logged as an error)
    browser.get(url)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    assert "token" not in browser.current_url  # out of the address bar and the history
    browser.refresh()  # the cookie carries the token from here on
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
    exported = app.workdir / "exports" / "audition.yaml"
    assert "voices:" in exported.read_text() and "cfg_scale: 3.0" in exported.read_text()
    shown = browser.find_element("id", "export-out").text
    assert app.voices["ann"].audio not in shown and "/voices/" not in shown  # clips' paths stay in the file

    # the command as printed, with the user's scripts put in, run from the folder the server ran in
    data = pipeline_parquet([{"id": "from-audition", "text": "[S1] The chosen settings, now in bulk.", "voice_s1": "ann"}])
    argv = [a if a != "data.input=<your scripts>" else f"data.input={data}"
            for a in shlex.split(command.replace("<your scripts>", "'<your scripts>'"))]
    assert argv[:3] == ["python", "-m", "pipeline"]
    job = tmp_path / "job"
    run = subprocess.run([sys.executable, *argv[1:], f"model.cache_dir={pipeline_cache_dir}", f"output.dir={job}",
                          "generation.max_new_frames=40", "output.progress=false", "output.report=false"],
                         cwd=os.getcwd(), capture_output=True, text=True, timeout=600,
                         env={**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    row = pq.read_table(next((job / "metadata").glob("*.parquet"))).to_pylist()[0]
    assert row["voice_s1"] == "ann" and row["prompt_frames"] > 0 and row["cfg_scale"] == 3.0
