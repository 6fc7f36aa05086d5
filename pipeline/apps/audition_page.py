"""The audition UI's one page (placeholders filled by ``audition_server`` with ``htmlsafe.fill``).

Every value from the server enters as ``script_json`` inside the nonce'd script and reaches the page
through ``textContent`` or element properties, never as HTML. The token travels in the
``X-Audition-Token`` header of every API call; the address bar loses it once the page has loaded."""

NON_VERBALS = ["(laughs)", "(clears throat)", "(sighs)", "(gasps)", "(coughs)", "(singing)", "(sings)", "(mumbles)",
               "(beep)", "(groans)", "(sniffs)", "(claps)", "(screams)", "(inhales)", "(exhales)", "(applause)",
               "(burps)", "(humming)", "(sneezes)", "(chuckle)", "(whistles)"]

PAGE = r"""<!doctype html>
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
<label>candidates <input id="candidates" type="number" value="2" min="1" max="__MAX_CANDIDATES__"></label>
<label>seed <input id="seed" type="number" value="0" min="0"></label>
<label>cfg scale <input id="cfg_scale" type="number" value="3" step="0.1"></label>
<label>cfg grid <input id="cfg_grid" placeholder="e.g. 2 3 4" size="8"></label>
<label>temperature <input id="temperature" type="number" value="1.2" step="0.1"></label>
<label>top p <input id="top_p" type="number" value="0.95" step="0.01"></label>
<label>top k <input id="top_k" type="number" value="45"></label>
<label>max seconds <input id="max_seconds" type="number" step="0.5" placeholder="model"></label>
<label><input id="end_tag" type="checkbox" checked> end tag</label></fieldset>
<button id="generate">Generate</button> <button id="cancel" disabled>Cancel</button> <span id="status"></span>
<div class="takes" id="takes"></div>
<p><label>export name <input id="ename" value="audition" size="12"></label> <span id="export-out" class="small"></span></p>
<script nonce="__NONCE__">
"use strict";
const TOKEN = __TOKEN__, MODEL = __MODEL__;
history.replaceState(null, "", location.pathname);  // the token stays out of the address bar and history
const $ = id => document.getElementById(id);
$("model").textContent = MODEL + (MODEL === "tiny-random" ? " (random weights: its audio is noise)" : "");
$("nonverbals").textContent = __NONVERBALS__.join(" ");
let batch = null;
async function call(path, options = {}) {
  options.headers = Object.assign({"X-Audition-Token": TOKEN}, options.headers || {});
  const r = await fetch(path, options);
  let data; try { data = await r.json(); } catch (e) { data = {error: r.status + " " + r.statusText}; }
  return [r.ok, data];
}
const json = body => ({method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
function say(text, error) { $("status").textContent = text; $("status").className = error ? "err" : ""; }
async function voices(list) {
  if (!list) { const [ok, data] = await call("/api/voices"); if (!ok) return say(data.error, true); list = data; }
  for (const id of ["voice_s1", "voice_s2"]) { const sel = $(id), keep = sel.value; sel.replaceChildren(new Option("(none)", ""));
    for (const v of list) sel.appendChild(new Option(v, v)); sel.value = keep; }
}
$("vadd").onclick = async () => {
  const f = $("vfile").files[0]; if (!f) return say("choose a clip first", true);
  const q = new URLSearchParams({name: $("vname").value, transcript: $("vtext").value, filename: f.name});
  const [ok, data] = await call("/api/voice?" + q, {method: "POST", headers: {"Content-Type": "application/octet-stream"},
                                                  body: await f.arrayBuffer()});
  if (!ok) return say(data.error, true);
  await voices(data); say("voice added");
};
function form() { const f = {}; for (const k of ["text", "voice_s1", "voice_s2", "candidates", "seed", "cfg_scale", "cfg_grid",
  "temperature", "top_p", "top_k", "max_seconds"]) f[k] = $(k).value; f.end_tag = $("end_tag").checked; return f; }
$("generate").onclick = async () => {
  $("takes").replaceChildren(); say("generating...");
  const [ok, data] = await call("/api/generate", json(form()));
  if (!ok) return say(data.error, true);
  batch = data.batch; $("cancel").disabled = false; poll(batch);
};
$("cancel").onclick = async () => { if (!batch) return; const [ok, data] = await call("/api/cancel", json({batch}));
  if (!ok) say(data.error, true); };
const shown = new Set();
async function poll(mine) {
  if (mine !== batch) return;  // a newer batch took over
  const [ok, data] = await call("/api/takes?batch=" + encodeURIComponent(mine));
  if (!ok) { $("cancel").disabled = true; return say(data.error, true); }
  for (const t of data.takes) { if (shown.has(mine + t.n)) continue; shown.add(mine + t.n);
    const box = document.createElement("div"); box.className = "take"; box.dataset.take = t.n;
    box.appendChild(Object.assign(document.createElement("b"), {textContent: "take " + t.n}));
    const a = document.createElement("audio"); a.controls = true; a.preload = "metadata"; a.src = t.audio; box.appendChild(a);
    const m = t.metrics;
    box.appendChild(Object.assign(document.createElement("div"), {className: "small", textContent:
      `seed ${t.seed}, cfg ${t.cfg_scale}, ${t.seconds} s, ${m.speaking_rate_wps ?? "-"} words/s, ` +
      `longest pause ${m.max_inner_silence_s} s, ${m.loudness_lufs ?? "-"} LUFS` + (t.ended_by_eos ? "" : ", hit the length cap")}));
    const b = document.createElement("button"); b.textContent = "export as job"; b.className = "export";
    b.onclick = () => exportTake(mine, t.n); box.appendChild(b); $("takes").appendChild(box); }
  if (!data.done) { setTimeout(() => poll(mine), 300); return; }
  $("cancel").disabled = true;
  if (data.error) return say(data.error, true);
  say(data.takes.length + " take(s)" + (data.state === "cancelled" ? ", cancelled" : ""));
}
async function exportTake(mine, n) {
  const [ok, data] = await call("/api/export", json({batch: mine, take: n, name: $("ename").value}));
  if (!ok) { $("export-out").textContent = data.error; return; }
  $("export-out").replaceChildren(document.createTextNode("written " + data.file + " in the workdir; run: "),
    Object.assign(document.createElement("code"), {id: "export-command", textContent: data.command}));
}
voices();
</script></body></html>
"""
