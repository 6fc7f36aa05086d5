"""The audition server attacked as a hostile page, a rebinding name and a careless client would:
real sockets on 127.0.0.1, the tiny random model, every loop bounded in count and time."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.client import HTTPConnection
from pathlib import Path
from typing import Any, Optional

import pytest

from pipeline.apps.audition import Audition, Limits, main
from pipeline.apps.audition_server import TOKEN_HEADER, AuditionServer, ServerError, serve
from pipeline.config import EXAMPLES_DIR, ModelConfig
from pipeline.model.loader import load_model

CLIP = (EXAMPLES_DIR / "prompt.flac").read_bytes()


class Gated:
    """The real tiny model, whose stream() waits for a gate first: lets a test hold the worker busy."""

    def __init__(self, model: Any) -> None:
        self.model, self.gate = model, threading.Event()
        self.gate.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def stream(self, *args: Any, **kwargs: Any):
        assert self.gate.wait(60)
        yield from self.model.stream(*args, **kwargs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, pipeline_cache_dir):
    return load_model(ModelConfig(source="tiny-random", cache_dir=str(pipeline_cache_dir)), has_gpu=False)


@pytest.fixture
def server(tiny, tmp_path):
    made = []

    def start(limits: Optional[Limits] = None, **kwargs: Any):
        model = Gated(tiny)
        app = Audition(model, "tiny-random", tmp_path / "audition", {}, limits=limits or Limits(),
                       max_script_seconds=kwargs.pop("max_script_seconds", 1800.0))
        srv = serve(app, server=AuditionServer("127.0.0.1", 0, **kwargs))
        made.append(srv)
        return srv

    yield start
    for srv in made:
        srv.app.close()
        srv.app.model.gate.set()
        srv.shutdown()
        srv.server_close()


def request(srv: AuditionServer, method: str, path: str, body: Any = None, *, token: Optional[str] = "auto",
            headers: Optional[dict[str, str]] = None) -> tuple[int, Any, dict[str, str]]:
    conn = HTTPConnection("127.0.0.1", srv.server_port, timeout=30)
    h = {"Host": f"127.0.0.1:{srv.server_port}"}
    if token == "auto":
        token = srv.token
    if token:
        h[TOKEN_HEADER] = token
    if isinstance(body, (dict, list)) or body is None and method == "POST":
        body = json.dumps(body if body is not None else {}).encode()
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    try:
        data = json.loads(raw)
    except ValueError:
        data = raw
    return r.status, data, dict(r.getheaders())


def raw_request(srv: AuditionServer, data: bytes, *, wait_s: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", srv.server_port), timeout=wait_s) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def wait_done(srv: AuditionServer, batch: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, data, _ = request(srv, "GET", f"/api/takes?batch={batch}")
        assert status == 200, data
        if data["done"]:
            return data
        time.sleep(0.1)
    raise AssertionError(f"batch {batch} not done in {timeout} s")


GENERATE = {"text": "[S1] Hello there. [S2] Hi!", "candidates": 1, "max_seconds": 0.2}


# 1. CSRF ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers, token", [
    ({"Origin": "http://evil.example", "Content-Type": "text/plain"}, None),  # a form or no-cors fetch
    ({"Origin": "http://evil.example"}, "auto"),  # even with the token (it cannot have it, but still)
    ({"Sec-Fetch-Site": "cross-site"}, "auto"),
    ({}, None),  # a same-origin request without the token
    ({}, "wrong-token"),
])
def test_state_changing_requests_from_elsewhere_are_refused(server, headers, token):
    srv = server()
    for path, body in [("/api/generate", GENERATE), ("/api/voice?name=evil&transcript=hi&filename=a.flac", CLIP)]:
        status, data, _ = request(srv, "POST", path, body, token=token, headers=headers)
        assert status == 403, (path, status, data)
        assert isinstance(data, dict) and data["error"]
    assert srv.app.batches == {} and list((srv.app.workdir / "voices").iterdir()) == []


def test_options_gets_no_cors_answer(server):
    srv = server()
    status, _, headers = request(srv, "OPTIONS", "/api/generate", token=None,
                                 headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert status in (403, 405) and not any(k.lower().startswith("access-control") for k in headers)


# 2. DNS rebinding --------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:{port}", "127.0.0.1:1", "localhost.evil:{port}",
                                  "127.0.0.1.nip.io:{port}", ""])
def test_a_foreign_host_header_is_refused_everywhere(server, host):
    srv = server()
    for method, path in [("GET", f"/?token={srv.token}"), ("GET", "/api/voices"), ("GET", "/takes/x.wav"),
                         ("POST", "/api/generate")]:
        status, data, _ = request(srv, method, path, GENERATE if method == "POST" else None,
                                  headers={"Host": host.format(port=srv.server_port)})
        assert status == 403, (host, path, status)
        assert srv.token not in json.dumps(data) if isinstance(data, dict) else srv.token.encode() not in data


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}"])
def test_loopback_names_are_served(server, host):
    srv = server()
    status, data, _ = request(srv, "GET", "/api/voices", headers={"Host": host.format(port=srv.server_port)})
    assert status == 200 and data == []


def test_the_page_needs_the_token_then_keeps_it_in_a_strict_cookie(server):
    srv = server()
    status, body, _ = request(srv, "GET", "/", token=None)
    assert status == 401 and srv.token.encode() not in body
    status, body, headers = request(srv, "GET", f"/?token={srv.token}", token=None)
    assert status == 200 and b"X-Audition-Token" in body
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"] and headers["X-Frame-Options"] == "DENY"
    status, _, _ = request(srv, "GET", "/", token=None, headers={"Cookie": cookie.split(";")[0]})
    assert status == 200
    status, _, _ = request(srv, "GET", "/api/voices", token=None, headers={"Cookie": cookie.split(";")[0]})
    assert status == 403  # the cookie alone is ambient authority: the API wants the header


# 3 and 5. bodies ---------------------------------------------------------------------------------
@pytest.mark.parametrize("length, status", [("-1", 400), ("abc", 400), (" 1e3", 400), ("99999999999", 413),
                                            (None, 411)])
def test_a_dishonest_content_length_is_refused_before_reading(server, length, status):
    srv = server()
    head = (f"POST /api/voice?name=big&transcript=hi&filename=a.flac HTTP/1.1\r\nHost: 127.0.0.1:{srv.server_port}\r\n"
            f"{TOKEN_HEADER}: {srv.token}\r\nContent-Type: application/octet-stream\r\n")
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    started = time.monotonic()
    # no body follows, as from a client that would stream 256 MB slowly: the answer does not wait for it
    with socket.create_connection(("127.0.0.1", srv.server_port), timeout=10) as s:
        s.sendall((head + "\r\n").encode())
        reply = s.recv(65536)
    assert reply.startswith(f"HTTP/1.0 {status}".encode()), reply[:200]
    assert time.monotonic() - started < 5
    assert list((srv.app.workdir / "voices").iterdir()) == []


def test_chunked_bodies_are_refused(server):
    srv = server()
    reply = raw_request(srv, (f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1:{srv.server_port}\r\n{TOKEN_HEADER}: "
                              f"{srv.token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                              "2\r\n{}\r\n0\r\n\r\n").encode())
    assert reply.startswith(b"HTTP/1.0 411")


@pytest.mark.parametrize("path, body", [
    ("/api/generate", b"[]"), ("/api/generate", b"null"), ("/api/generate", b'"str"'), ("/api/generate", b"{nope"),
    ("/api/generate", b"[" * 100000 + b"]" * 100000), ("/api/generate", b"\xff\xfe"),
    ("/api/generate", b'{"text": 5}'), ("/api/generate", b'{"text": "[S1] Hi.", "candidates": [1]}'),
    ("/api/generate", b'{"text": "[S1] Hi.", "top_k": 1e400}'), ("/api/generate", b'{"text": "[S1] Hi.", "seed": NaN}'),
    ("/api/generate", b'{"text": "[S1] Hi.", "end_tag": "yes"}'), ("/api/generate", b'{"text": "[S1] Hi.", "voice_s1": {}}'),
    ("/api/export", b'{"take": [1]}'), ("/api/export", b'{"take": true, "batch": "x"}'),
    ("/api/export", b'{"take": 1, "batch": 7}'), ("/api/cancel", b'{"batch": null}'),
])
def test_malformed_bodies_get_a_one_line_400(server, path, body):
    srv = server()
    status, data, _ = request(srv, "POST", path, body, headers={"Content-Type": "application/json"})
    assert status == 400, (body[:40], status, data)
    assert isinstance(data, dict) and "\n" not in data["error"] and "Traceback" not in data["error"]
    assert request(srv, "GET", "/api/voices")[0] == 200  # still serving


def test_json_endpoints_want_json(server):
    srv = server()
    status, data, _ = request(srv, "POST", "/api/generate", json.dumps(GENERATE).encode(),
                              headers={"Content-Type": "text/plain"})
    assert status == 415 and srv.app.batches == {}


# 4. bounds ---------------------------------------------------------------------------------------
def test_the_queue_is_bounded_and_batches_cancel(server):
    srv = server(Limits(queued_batches=2))
    srv.app.model.gate.clear()  # the first batch holds the worker
    first = request(srv, "POST", "/api/generate", GENERATE)[1]["batch"]
    deadline = time.monotonic() + 10
    while srv.app.batches[first].state.value != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    queued = [request(srv, "POST", "/api/generate", GENERATE) for _ in range(4)]
    assert [q[0] for q in queued] == [200, 200, 429, 429], queued
    assert "waiting" in queued[2][1]["error"]
    waiting = queued[1][1]["batch"]
    status, data, _ = request(srv, "POST", "/api/cancel", {"batch": waiting})
    assert status == 200 and data["state"] == "cancelled" and data["done"]
    srv.app.model.gate.set()
    assert wait_done(srv, first)["takes"]
    assert wait_done(srv, queued[0][1]["batch"])["takes"]
    assert srv.app.batch(waiting)["takes"] == []  # never ran
    status, data, _ = request(srv, "POST", "/api/cancel", {"batch": "nope"})
    assert status == 404


def test_many_generates_at_once_are_refused_not_piled_up(server):
    srv = server(Limits(queued_batches=2))
    srv.app.model.gate.clear()
    results: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        status = request(srv, "POST", "/api/generate", GENERATE)[0]
        with lock:
            results.append(status)

    threads = [threading.Thread(target=one) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 40 and set(results) <= {200, 429, 503}
    assert 1 <= results.count(200) <= 3  # one running (maybe) and two waiting, at most
    assert len(srv.app.batches) == results.count(200)


def test_old_takes_are_deleted_past_the_limit(server):
    srv = server(Limits(kept_batches=2))
    batches = []
    for seed in range(4):
        batch = request(srv, "POST", "/api/generate", {**GENERATE, "seed": seed})[1]["batch"]
        wait_done(srv, batch)
        batches.append(batch)
    takes = sorted(p.name for p in (srv.app.workdir / "takes").iterdir())
    assert len(takes) == 2 and all(t.split("-")[0] in batches[2:] for t in takes)
    assert request(srv, "GET", f"/api/takes?batch={batches[0]}")[0] == 404


def test_scripts_are_capped_as_a_job_row_is(server):
    srv = server(Limits(script_bytes=4096), max_script_seconds=30.0)
    status, data, _ = request(srv, "POST", "/api/generate", {"text": "[S1] " + "word " * 2000})
    assert status == 400 and "KB" in data["error"]
    status, data, _ = request(srv, "POST", "/api/generate", {"text": "[S1] " + "Words and more words. " * 40})
    assert status == 400 and "max_script_seconds" in data["error"]
    assert srv.app.batches == {}


def test_voices_are_bounded_in_number_and_bytes(server):
    srv = server(Limits(voices=1, voices_bytes=len(CLIP) + 100))
    ok = request(srv, "POST", "/api/voice?name=one&transcript=hello&filename=a.flac", CLIP)
    assert ok[0] == 200 and ok[1] == ["one"]
    again = request(srv, "POST", "/api/voice?name=one&transcript=hello+again&filename=a.flac", CLIP)
    assert again[0] == 200  # replacing one's own voice is fine
    status, data, _ = request(srv, "POST", "/api/voice?name=two&transcript=hello&filename=a.flac", CLIP)
    assert status == 429 and "voices at most" in data["error"]
    srv2 = server(Limits(voices=8, voices_bytes=len(CLIP) + 100))
    assert request(srv2, "POST", "/api/voice?name=one&transcript=hello&filename=a.flac", CLIP)[0] == 200
    status, data, _ = request(srv2, "POST", "/api/voice?name=three&transcript=hello&filename=a.flac", CLIP)
    assert status == 429 and "MB at most" in data["error"]


def test_half_sent_requests_time_out_and_connections_are_capped(server):
    srv = server(max_connections=4, socket_timeout_s=1.0)
    before = threading.active_count()
    stalled = [socket.create_connection(("127.0.0.1", srv.server_port), timeout=10) for _ in range(4)]
    try:
        for s in stalled:
            s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
        time.sleep(0.3)
        assert threading.active_count() <= before + 4
        extra = raw_request(srv, f"GET /api/voices HTTP/1.1\r\nHost: 127.0.0.1:{srv.server_port}\r\n\r\n".encode())
        assert extra.startswith(b"HTTP/1.0 503")
        for s in stalled:  # the server hangs up on each within its socket timeout
            s.settimeout(5)
            assert s.recv(100) == b""
    finally:
        for s in stalled:
            s.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and request(srv, "GET", "/api/voices")[0] != 200:
        time.sleep(0.1)
    assert request(srv, "GET", "/api/voices")[0] == 200
    assert threading.active_count() <= before + 1


# 6 and 7. names and what errors say ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["trail%0A", "trail%0D", "a%00b", "../x", "a/b", "x" * 41, "1abc", ""])
def test_bad_voice_names_are_refused_and_make_no_file(server, name):
    srv = server()
    status, data, _ = request(srv, "POST", f"/api/voice?name={name}&transcript=hi&filename=a.flac", CLIP)
    assert status == 400 and "voice name" in data["error"]
    assert list((srv.app.workdir / "voices").iterdir()) == []


def test_errors_name_no_path_and_no_object(server, tmp_path):
    srv = server()
    status, data, _ = request(srv, "POST", "/api/voice?name=bad&transcript=hi&filename=a.wav", b"RIFF not audio")
    assert status == 400 and "not a readable audio file" in data["error"]
    assert str(tmp_path) not in data["error"] and "0x" not in data["error"] and "<" not in data["error"]
    request(srv, "POST", "/api/voice?name=ann&transcript=hello&filename=a.flac", CLIP)
    batch = request(srv, "POST", "/api/generate", {**GENERATE, "voice_s1": "ann"})[1]["batch"]
    wait_done(srv, batch)
    status, data, _ = request(srv, "POST", "/api/export", {"batch": batch, "take": 1, "name": "mine"})
    assert status == 200, data
    assert str(tmp_path / "audition" / "voices") not in json.dumps(data)
    for name in ("trail\n", "config"):
        status, data, _ = request(srv, "POST", "/api/export", {"batch": batch, "take": 1, "name": name})
        assert status == 400
    status, data, _ = request(srv, "GET", "/takes/..%2F..%2Fetc%2Fpasswd")
    assert status in (403, 404)


def test_takes_need_the_token(server):
    srv = server()
    batch = request(srv, "POST", "/api/generate", GENERATE)[1]["batch"]
    take = wait_done(srv, batch)["takes"][0]["audio"]
    assert request(srv, "GET", f"/{take}", token=None)[0] == 403
    status, body, headers = request(srv, "GET", f"/{take}")
    assert status == 200 and body[:4] == b"RIFF" and headers["Content-Type"] == "audio/wav"


# 8. addresses --------------------------------------------------------------------------------------
def test_ipv6_loopback_serves():
    try:
        srv = AuditionServer("::1", 0)
    except ServerError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    try:
        assert srv.address_family == socket.AF_INET6 and srv.loopback
        assert srv.url.startswith(f"http://[::1]:{srv.server_port}/?token=")
        assert srv.host_ok(f"[::1]:{srv.server_port}") and not srv.host_ok("evil.example")
    finally:
        srv.server_close()


def test_a_network_server_accepts_ip_literals_and_named_hosts_only():
    srv = AuditionServer("0.0.0.0", 0, allowed_hosts=["gpu-box.lan"])
    try:
        port = srv.server_port
        assert srv.host_ok(f"192.0.2.7:{port}") and srv.host_ok(f"gpu-box.lan:{port}") and srv.host_ok(f"[::1]:{port}")
        assert not srv.host_ok(f"attacker.example:{port}") and not srv.host_ok(f"192.0.2.7:{port + 1}")
        assert not srv.loopback
    finally:
        srv.server_close()


def test_a_bad_host_fails_before_the_model_loads(capsys, tmp_path):
    code = main(["--host", "no-such-host.invalid", "--model", "/no/such/model", "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 2 and "--host no-such-host.invalid" in err and "loading" not in err
    assert not Path(tmp_path / "w").exists()
