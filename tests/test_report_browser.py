"""report.html in a real headless Chromium (Debian chromium + chromedriver, installed by .ci/run):
no console errors, players load their audio, sorting, filtering and the sweep grid work."""

from __future__ import annotations

import time

import pyarrow.parquet as pq

from pipeline import run_job
from pipeline.records.report import build_report


def visible_ids(browser) -> list[str]:
    return browser.execute_script("return [...document.querySelectorAll('#rows tbody tr')].map(r => r.dataset.id)")


def test_the_report_plays_sorts_filters_and_shows_the_sweep(ray_local, pipeline_cfg, pipeline_parquet, tmp_path,
                                                            browser):
    rows = [{"id": f"row{i}", "text": f"[S1] Report row {i}. [S2] Listen to it."} for i in range(4)]
    rows.append({"id": "broken", "text": "[S9] an unknown tag"})
    data = pipeline_parquet(rows)
    job = tmp_path / "job"
    run_job(pipeline_cfg(f"data.input={data}", "generation.max_new_frames=40", "generation.batch_size=4",
                         "sweep.cfg_scale=[2.0,3.0]", "output.report=false"))
    page = build_report(str(job))  # python -m pipeline.report does the same
    meta = [r for f in (job / "metadata").glob("*.parquet") for r in pq.read_table(f).to_pylist()]

    browser.get(f"file://{page}")
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    durations = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const players = [...document.querySelectorAll('#rows tbody tr')].filter(r => r.querySelector('audio'));
        Promise.all(players.map(r => { const a = r.querySelector('audio');
          return new Promise(ok => { if (a.readyState >= 1) ok([r.dataset.id, a.duration]);
            a.addEventListener('loadedmetadata', () => ok([r.dataset.id, a.duration]));
            a.addEventListener('error', () => ok([r.dataset.id, -1])); }); })).then(done);""")
    expected = {}
    for r in meta:
        if r["status"] != "error":
            expected.setdefault(r["id"], []).append(r["duration_s"])
    assert len(durations) == 8  # 4 rows x 2 sweep points, each with a player
    for row_id, seconds in durations:
        assert any(abs(seconds - d) < 0.02 for d in expected[row_id]), (row_id, seconds, expected[row_id])

    browser.find_element("css selector", "th[data-col=duration_s]").click()
    shown = browser.execute_script("return [...document.querySelectorAll('#rows tbody tr td[data-col=duration_s]')]"
                                   ".map(td => td.textContent)")
    numbers = [float(x) for x in shown if x]
    assert numbers == sorted(numbers) and len(numbers) == 8
    browser.find_element("css selector", "th[data-col=duration_s]").click()
    shown = browser.execute_script("return [...document.querySelectorAll('#rows tbody tr td[data-col=duration_s]')]"
                                   ".map(td => td.textContent)")
    assert [float(x) for x in shown if x] == sorted(numbers, reverse=True)

    box = browser.find_element("id", "filter")
    box.send_keys("row2")
    time.sleep(0.1)
    assert visible_ids(browser) == ["row2", "row2"]
    box.clear()
    browser.execute_script("const s = document.getElementById('status'); s.value = 'error';"
                           "s.dispatchEvent(new Event('change'))")
    assert visible_ids(browser) == ["broken", "broken"]

    points = browser.execute_script("return [...document.querySelectorAll('#sweep-grid th.point')].map(t => t.textContent)")
    assert sorted(points) == ["cfg_scale-2.0", "cfg_scale-3.0"]
    cells = browser.execute_script("return [...document.querySelectorAll('#sweep-grid tr')].slice(1)"
                                   ".map(tr => tr.querySelectorAll('button.play').length)")
    assert len(cells) == 5 and sorted(cells) == [0, 2, 2, 2, 2]
    browser.find_element("css selector", "#sweep-grid button.play").click()  # a play button becomes a player
    assert browser.execute_script("return document.querySelectorAll('#sweep-grid audio').length") == 1


HOSTILE = ["<!--<script>", "</script><script>document.title='pwned'</script>", "<img src=x onerror=alert(1)>",
           "a\u2028b\u2029c", "&lt;&amp;", "]]><![CDATA[", "<!-- x", "</SCRIPT >", "é 日本 🎙"]


def test_hostile_text_in_rows_shows_as_text_and_the_page_still_runs(tmp_path, browser):
    """A row's id, text or error holding markup that could end or hijack the data island's <script>."""
    import json

    import pyarrow as pa

    job = tmp_path / "hostile"
    (job / "metadata").mkdir(parents=True)
    n = len(HOSTILE)
    pq.write_table(pa.table({
        "id": [f"{h} #{i}" for i, h in enumerate(HOSTILE)], "text": [f"[S1] {h}" for h in HOSTILE],
        "status": ["error"] * n, "error": [f"bad {h}" for h in HOSTILE],
        "duration_s": [None] * n, "audio_path": [None] * n}), job / "metadata" / "part-0.parquet")
    (job / "job.json").write_text(json.dumps({"status": "done"}))
    page = build_report(str(job))
    html_text = open(page, encoding="utf-8").read()
    island = html_text.split('<script id="data" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert "<" not in island and ">" not in island and "\u2028" not in island

    browser.get(f"file://{page}")
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    assert browser.title != "pwned" and browser.find_element("id", "title").text.startswith("Job ")
    texts = browser.execute_script("return [...document.querySelectorAll('#rows tbody td.text')].map(td => td.textContent)")
    assert sorted(texts) == sorted(f"[S1] {h}" for h in HOSTILE)
    ids = browser.execute_script("return [...document.querySelectorAll('#rows tbody td[data-col=id]')].map(td => td.textContent)")
    assert sorted(ids) == sorted(f"{h} #{i}" for i, h in enumerate(HOSTILE))
    assert browser.execute_script("return document.querySelectorAll('#rows img').length") == 0
