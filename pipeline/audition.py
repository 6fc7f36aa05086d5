"""The audition UI: try a script with a few voices, settings and seeds, listen, pick, export as a job.

    python -m pipeline.audition --model tiny-random            # http://127.0.0.1:7860
    dia-audition --model nari-labs/Dia-1.6B-0626 --voices configs/voices/mine.yaml

Why not Gradio: this is one page and four JSON endpoints on the standard library's HTTP server, so
it adds no dependency to a package that already pins Ray, torch and transformers (Gradio brings
FastAPI, uvicorn, pandas and more), it works offline with no console errors (Gradio's default theme
fetches web fonts), and it is tested with the same headless Chromium as report.html.

The model loads once. Candidates go through ``Dia.stream()`` in one batch, so the first finished
take is served first; the page asks for finished takes every 300 ms. Takes, uploaded voices and
exports live under ``--workdir`` (default ``runs/audition``) and nowhere else. It binds to
127.0.0.1; ``--host 0.0.0.0`` serves every network this machine is on, with no login: anyone who can
reach the port can generate audio and upload files.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, urlparse

from .voices import VoiceBook

NON_VERBALS = ["(laughs)", "(clears throat)", "(sighs)", "(gasps)", "(coughs)", "(singing)", "(sings)", "(mumbles)",
               "(beep)", "(groans)", "(sniffs)", "(claps)", "(screams)", "(inhales)", "(exhales)", "(applause)",
               "(burps)", "(humming)", "(sneezes)", "(chuckle)", "(whistles)"]
MAX_CANDIDATES = 8
MAX_UPLOAD = 32 << 20
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")


class Audition:
    """The model, the voice library and the takes: everything the HTTP handler calls."""

    def __init__(self, model: Any, model_source: str, workdir: Path, voices: dict[str, Any]) -> None:
        self.model = model
        self.model_source = model_source
        self.workdir = workdir
        (workdir / "takes").mkdir(parents=True, exist_ok=True)
        (workdir / "voices").mkdir(parents=True, exist_ok=True)
        (workdir / "exports").mkdir(parents=True, exist_ok=True)
        self.voices = dict(voices)  # name -> VoiceConfig (for export)
        self.book = VoiceBook(lambda clip: model.encode_audio([clip])[0],
                              {n: (v.audio, v.transcript) for n, v in voices.items()})
        self.batches: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.engine = threading.Lock()  # one batch at a time on the model

    # -- voices ---------------------------------------------------------------------------------
    def add_voice(self, name: str, transcript: str, filename: str, data: bytes) -> None:
        from .config import VoiceConfig
        from .prompts import read_prompt

        if not _NAME.match(name):
            raise ValueError("a voice name is a letter, then up to 39 letters, digits, _ or -")
        if not transcript.strip():
            raise ValueError("give the clip's transcript: Dia needs the words of a voice prompt")
        suffix = Path(filename).suffix.lower() or ".wav"
        if suffix not in (".wav", ".flac", ".mp3", ".ogg"):
            raise ValueError("upload a .wav, .flac, .mp3 or .ogg clip")
        path = self.workdir / "voices" / f"{name}{suffix}"
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        _, problem = read_prompt(str(tmp))
        if problem:
            tmp.unlink()
            raise ValueError(problem.replace("audio_prompt", "the clip", 1))
        tmp.replace(path)
        with self.lock:
            self.voices[name] = VoiceConfig(audio=str(path.resolve()), transcript=transcript.strip())
        self.book.add(name, str(path.resolve()), transcript.strip())

    # -- takes ----------------------------------------------------------------------------------
    def start(self, form: dict[str, Any]) -> str:
        """Check the form, then generate its candidates in the background; returns the batch id."""
        settings = _settings(form)
        text = str(form.get("text") or "").strip()
        from dia_model import validate_script

        problems = validate_script(text, 1 << 20)
        if problems:
            raise ValueError("; ".join(problems))
        batch = uuid.uuid4().hex[:12]
        with self.lock:
            self.batches[batch] = {"takes": [], "done": False, "error": None, "form": {**settings, "text": text}}
        threading.Thread(target=self._run, args=(batch, text, settings), daemon=True).start()
        return batch

    def _run(self, batch: str, text: str, s: dict[str, Any]) -> None:
        from dia_model import Request

        from . import audio as audio_io
        from .metrics import row_metrics
        from .scripts import over_window

        state = self.batches[batch]
        try:
            with self.engine:
                voices = (s["voice_s1"], s["voice_s2"])
                prompt, transcript = self.book.prompt(voices) if any(voices) else (None, None)
                long_form = over_window(text, end_tag=s["end_tag"])
                max_new = None if s["max_seconds"] is None else max(1, int(s["max_seconds"] * self.model.frame_rate))
                grid = s["cfg_scales"] or [s["cfg_scale"]]
                requests = [Request(id=k, text=text, cfg_scale=grid[k % len(grid)], temperature=s["temperature"],
                                    top_p=s["top_p"], top_k=s["top_k"], max_new_frames=max_new,
                                    seed=s["seed"] + k, audio_prompt=prompt, prompt_transcript=transcript,
                                    long_form=long_form, end_tag=s["end_tag"])
                            for k in range(s["candidates"])]
                for res in self.model.stream(requests, slots=len(requests)):  # first finished, first served
                    if res.error:
                        raise ValueError(res.error)
                    name = f"{batch}-{res.id + 1}.wav"
                    (self.workdir / "takes" / name).write_bytes(audio_io.encode(res.audio, self.model.sample_rate, "wav"))
                    metrics = row_metrics(res.audio, self.model.sample_rate, text)
                    take = {"n": res.id + 1, "audio": f"takes/{name}", "seed": res.seed,
                            "cfg_scale": requests[res.id].cfg_scale, "seconds": round(res.duration_s, 3),
                            "ended_by_eos": res.ended_by_eos,
                            "metrics": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in metrics.items()}}
                    with self.lock:
                        state["takes"].append(take)
        except Exception as e:
            state["error"] = " ".join(f"{e}".split()) or type(e).__name__
        finally:
            state["done"] = True

    def export(self, batch: str, take: int, name: str) -> dict[str, Any]:
        """The chosen take's settings as Hydra overrides and a config file the pipeline runs as is."""
        if not _NAME.match(name):
            raise ValueError("an export name is a letter, then up to 39 letters, digits, _ or -")
        state = self.batches.get(batch)
        chosen = next((t for t in (state or {}).get("takes", []) if t["n"] == take), None)
        if chosen is None:
            raise ValueError("no such take: generate, then export one of its takes")
        s = state["form"]
        overrides = [f"model.source={self.model_source}", f"generation.cfg_scale={chosen['cfg_scale']}",
                     f"generation.temperature={s['temperature']}", f"generation.top_p={s['top_p']}",
                     f"generation.top_k={s['top_k']}", f"generation.end_tag={'auto' if s['end_tag'] else 'off'}"]
        if s["max_seconds"] is not None:
            overrides.append(f"generation.max_seconds={s['max_seconds']}")
        columns = {}
        for role in ("s1", "s2"):
            voice = s[f"voice_{role}"]
            if voice:
                v = self.voices[voice]
                overrides += [f"voices.{voice}.audio={v.audio}", f"voices.{voice}.transcript={json.dumps(v.transcript)}"]
                columns[f"voice_{role}"] = voice
        lines = ["# exported by the audition UI: the settings of take {} ({})".format(take, chosen["audio"]),
                 "# run: python -m pipeline data=parquet data.input=<your scripts> $(grep -v '^#' " +
                 f"{self.workdir / 'exports' / (name + '.overrides')})"]
        lines.append(f"# seeds: each row gets its own, derived from generation.seed and its id; a row with a seed "
                     f"column of {chosen['seed']} and this script makes this very take")
        if columns:
            lines.append("# rows pick the voices with the columns: " + ", ".join(f"{k}={v}" for k, v in columns.items()))
        path = self.workdir / "exports" / f"{name}.overrides"
        path.write_text("\n".join(lines + overrides) + "\n")
        return {"path": str(path.resolve()), "overrides": overrides, "columns": columns,
                "command": "python -m pipeline data=parquet data.input=<your scripts> " +
                           " ".join(_shell(o) for o in overrides)}


def _shell(override: str) -> str:
    return override if re.fullmatch(r"[\w.=/:+-]+", override) else "'" + override.replace("'", "'\\''") + "'"


def _number(form: dict[str, Any], key: str, default: float, lo: float, hi: float, integer: bool = False) -> Any:
    raw = form.get(key)
    if raw in (None, ""):
        return default
    try:
        value = int(raw) if integer else float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be {'an integer' if integer else 'a number'}, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{key} must be in [{lo}, {hi}], got {value}")
    return value


def _settings(form: dict[str, Any]) -> dict[str, Any]:
    grid = [g for g in str(form.get("cfg_grid") or "").replace(",", " ").split() if g]
    try:
        cfg_scales = [float(g) for g in grid]
    except ValueError:
        raise ValueError(f"cfg grid must be numbers, e.g. 2 3 4; got {form.get('cfg_grid')!r}") from None
    return {
        "cfg_scale": _number(form, "cfg_scale", 3.0, 0.0, 100.0), "cfg_scales": cfg_scales,
        "temperature": _number(form, "temperature", 1.2, 0.0, 100.0), "top_p": _number(form, "top_p", 0.95, 1e-6, 1.0),
        "top_k": _number(form, "top_k", 45, 1, 1024, integer=True),
        "seed": _number(form, "seed", 0, 0, 2**31, integer=True),
        "candidates": _number(form, "candidates", 2, 1, MAX_CANDIDATES, integer=True),
        "max_seconds": None if form.get("max_seconds") in (None, "") else _number(form, "max_seconds", 0, 0.1, 35.0),
        "voice_s1": form.get("voice_s1") or None, "voice_s2": form.get("voice_s2") or None,
        "end_tag": bool(form.get("end_tag", True)),
    }


def make_handler(app: Audition) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "dia-audition"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, data: Any, status: int = 200) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            if url.path == "/":
                page = _PAGE.replace("__NONVERBALS__", json.dumps(NON_VERBALS)).replace(
                    "__MODEL__", json.dumps(app.model_source))
                return self._send(200, page.encode(), "text/html; charset=utf-8")
            if url.path == "/api/voices":
                return self._json(sorted(app.voices))
            if url.path == "/api/takes":
                batch = parse_qs(url.query).get("batch", [""])[0]
                state = app.batches.get(batch)
                if state is None:
                    return self._json({"error": "no such batch"}, 404)
                with app.lock:
                    return self._json({"takes": list(state["takes"]), "done": state["done"], "error": state["error"]})
            if url.path.startswith("/takes/"):
                name = url.path.removeprefix("/takes/")
                path = app.workdir / "takes" / name
                if "/" in name or ".." in name or not path.is_file():
                    return self._send(404, b"not found", "text/plain")
                return self._send(200, path.read_bytes(), "audio/wav")
            self._send(404, b"not found", "text/plain")

        def do_POST(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_UPLOAD:
                return self._json({"error": f"request over {MAX_UPLOAD >> 20} MB"}, 413)
            body = self.rfile.read(length)
            try:
                if url.path == "/api/generate":
                    return self._json({"batch": app.start(json.loads(body or b"{}"))})
                if url.path == "/api/export":
                    form = json.loads(body or b"{}")
                    return self._json(app.export(str(form.get("batch")), int(form.get("take") or 0),
                                                 str(form.get("name") or "audition")))
                if url.path == "/api/voice":
                    q = parse_qs(url.query)
                    app.add_voice(q.get("name", [""])[0], q.get("transcript", [""])[0],
                                  q.get("filename", ["clip.wav"])[0], body)
                    return self._json(sorted(app.voices))
            except (ValueError, KeyError, json.JSONDecodeError) as e:
                return self._json({"error": str(e)}, HTTPStatus.BAD_REQUEST)
            self._send(404, b"not found", "text/plain")

    return Handler


def serve(app: Audition, host: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(app))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


_PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Dia audition</title><link rel="icon" href="data:,">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:72em}
textarea{width:100%;height:7em;font:14px monospace}label{margin-right:1em;white-space:nowrap}
input[type=number]{width:5em}fieldset{margin:.8em 0;border:1px solid #ccc}
.takes{display:flex;flex-wrap:wrap;gap:1em}.take{border:1px solid #ccc;padding:.6em;border-radius:6px;min-width:15em}
.take audio{width:100%}.err{color:#a31515}.small{font-size:12px;color:#555}code{background:#f3f3f3;padding:0 .3em}
</style></head><body>
<h1>Dia audition</h1>
<p class="small">Model: <span id="model"></span>. Speaker tags <code>[S1]</code> and <code>[S2]</code> alternate turns; non-verbals:
<span id="nonverbals"></span>. About 5-20 s of speech per script sounds best.</p>
<textarea id="text">[S1] Welcome to the show. [S2] Thanks, glad to be here! (laughs)</textarea>
<fieldset><legend>Voices</legend>
<label>[S1] <select id="voice_s1"></select></label><label>[S2] <select id="voice_s2"></select></label>
<span class="small">add one:</span> <input id="vname" placeholder="name" size="8"> <input id="vtext" placeholder="what the clip says" size="28">
<input id="vfile" type="file" accept=".wav,.flac,.mp3,.ogg"> <button id="vadd">add voice</button></fieldset>
<fieldset><legend>Settings</legend>
<label>candidates <input id="candidates" type="number" value="2" min="1" max="8"></label>
<label>seed <input id="seed" type="number" value="0" min="0"></label>
<label>cfg scale <input id="cfg_scale" type="number" value="3" step="0.1"></label>
<label>cfg grid <input id="cfg_grid" placeholder="e.g. 2 3 4" size="8"></label>
<label>temperature <input id="temperature" type="number" value="1.2" step="0.1"></label>
<label>top p <input id="top_p" type="number" value="0.95" step="0.01"></label>
<label>top k <input id="top_k" type="number" value="45"></label>
<label>max seconds <input id="max_seconds" type="number" step="0.5" placeholder="model"></label>
<label><input id="end_tag" type="checkbox" checked> end tag</label></fieldset>
<button id="generate">Generate</button> <span id="status"></span>
<div class="takes" id="takes"></div>
<p><label>export name <input id="ename" value="audition" size="12"></label> <span id="export-out" class="small"></span></p>
<script>
"use strict";
const $ = id => document.getElementById(id);
$("model").textContent = __MODEL__ + (__MODEL__ === "tiny-random" ? " (random weights: its audio is noise)" : "");
$("nonverbals").textContent = __NONVERBALS__.join(" ");
let batch = null;
async function voices(list) {
  list = list || await (await fetch("/api/voices")).json();
  for (const id of ["voice_s1", "voice_s2"]) { const sel = $(id), keep = sel.value; sel.replaceChildren(new Option("(none)", ""));
    for (const v of list) sel.appendChild(new Option(v, v)); sel.value = keep; }
}
$("vadd").onclick = async () => {
  const f = $("vfile").files[0]; if (!f) { $("status").textContent = "choose a clip first"; return; }
  const q = new URLSearchParams({name: $("vname").value, transcript: $("vtext").value, filename: f.name});
  const r = await fetch("/api/voice?" + q, {method: "POST", body: await f.arrayBuffer()});
  const data = await r.json(); if (!r.ok) { $("status").textContent = data.error; $("status").className = "err"; return; }
  await voices(data); $("status").textContent = "voice added";
};
function form() { const f = {}; for (const k of ["text", "voice_s1", "voice_s2", "candidates", "seed", "cfg_scale", "cfg_grid",
  "temperature", "top_p", "top_k", "max_seconds"]) f[k] = $(k).value; f.end_tag = $("end_tag").checked; return f; }
$("generate").onclick = async () => {
  $("takes").replaceChildren(); $("status").className = ""; $("status").textContent = "generating...";
  const r = await fetch("/api/generate", {method: "POST", body: JSON.stringify(form())});
  const data = await r.json();
  if (!r.ok) { $("status").textContent = data.error; $("status").className = "err"; return; }
  batch = data.batch; poll();
};
const shown = new Set();
async function poll() {
  const data = await (await fetch("/api/takes?batch=" + batch)).json();
  for (const t of data.takes) { if (shown.has(batch + t.n)) continue; shown.add(batch + t.n);
    const box = document.createElement("div"); box.className = "take"; box.dataset.take = t.n;
    box.appendChild(Object.assign(document.createElement("b"), {textContent: "take " + t.n}));
    const a = document.createElement("audio"); a.controls = true; a.preload = "metadata"; a.src = t.audio; box.appendChild(a);
    const m = t.metrics;
    box.appendChild(Object.assign(document.createElement("div"), {className: "small", textContent:
      `seed ${t.seed}, cfg ${t.cfg_scale}, ${t.seconds} s, ${m.speaking_rate_wps ?? "-"} words/s, ` +
      `longest pause ${m.max_inner_silence_s} s, ${m.loudness_lufs ?? "-"} LUFS` + (t.ended_by_eos ? "" : ", hit the length cap")}));
    const b = document.createElement("button"); b.textContent = "export as job"; b.className = "export";
    b.onclick = () => exportTake(t.n); box.appendChild(b); $("takes").appendChild(box); }
  if (data.error) { $("status").textContent = data.error; $("status").className = "err"; return; }
  if (!data.done) { setTimeout(poll, 300); return; }
  $("status").textContent = data.takes.length + " take(s)";
}
async function exportTake(n) {
  const r = await fetch("/api/export", {method: "POST", body: JSON.stringify({batch, take: n, name: $("ename").value})});
  const data = await r.json();
  if (!r.ok) { $("export-out").textContent = data.error; return; }
  $("export-out").replaceChildren(document.createTextNode("written " + data.path + ": "),
    Object.assign(document.createElement("code"), {id: "export-command", textContent: data.command}));
}
voices();
</script></body></html>
"""


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="dia-audition", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nari-labs/Dia-1.6B-0626", help="Hub id, local folder or tiny-random")
    ap.add_argument("--codec", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--voices", action="append", default=[], help="voices YAML file(s); default: configs/voices/*.yaml")
    ap.add_argument("--workdir", default="runs/audition", help="takes, uploaded voices and exports go here")
    ap.add_argument("--host", default="127.0.0.1", help="127.0.0.1: this machine only. 0.0.0.0 serves every "
                    "network this machine is on, with no login")
    ap.add_argument("--port", type=int, default=7860)
    args = ap.parse_args(argv)
    from .config import ModelConfig
    from .errors import PipelineError
    from .model_loader import load_model
    from .say import UsageError, _has_gpu, voice_library

    try:
        library = voice_library(args.voices)
        print(f"loading {args.model} ...", file=sys.stderr)
        model = load_model(ModelConfig(source=args.model, codec_source=args.codec, device=args.device,
                                       dtype=args.dtype, cache_dir=args.cache_dir), has_gpu=_has_gpu())
    except (UsageError, PipelineError) as e:
        print(f"dia-audition: error: {e}", file=sys.stderr)
        return 2
    app = Audition(model, args.model, Path(args.workdir).resolve(), library)
    server = serve(app, args.host, args.port)
    where = "this machine only" if args.host in ("127.0.0.1", "localhost", "::1") else \
        f"every network {args.host} reaches, with no login: anyone who can reach the port can generate and upload"
    print(f"audition UI on http://{args.host}:{server.server_address[1]}/ ({where}); Ctrl-C stops it", file=sys.stderr)
    if args.model == "tiny-random":
        print("model tiny-random is random weights: its audio is noise", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
