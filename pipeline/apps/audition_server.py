"""The audition UI's HTTP side: who may call it, what one request may hold, how many at once.

A UI on localhost is reachable by more than its own page. What each guard stops:

- **Another web page the user has open** (CSRF): it can send requests, but cannot read our page, so
  it cannot know the per-start token. Every API call must carry the token in the ``X-Audition-Token``
  header (a custom header also makes the browser ask first, and we never answer CORS), and a request
  whose ``Origin`` or ``Sec-Fetch-Site`` says another site sent it is refused.
- **DNS rebinding** (a hostile name that resolves to 127.0.0.1, making it "same origin"): the browser
  then sends that name in ``Host``. Only loopback names, the address served on and ``--allow-host``
  names are answered (and, when serving every network, IP addresses, which cannot be rebound).
- **Whoever can reach the port** (another user of the machine, or the network with ``--host
  0.0.0.0``): the page itself needs the token, which only the address printed at start carries
  (``/?token=...``; it is then kept in a SameSite=Strict cookie, so a reload works and the players can
  load their takes).
- **Exhaustion**: bodies need an honest ``Content-Length`` under a cap, sockets time out, connections
  are capped (503 past it), and the application bounds its queue, takes and voices (429).

Errors are one-line JSON ``{"error": ...}`` with a 4xx status; nothing here puts a path or an
object's repr in a reply.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import secrets
import socket
import socketserver
import threading
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable, Optional
from urllib.parse import parse_qs, urlsplit

from .audition_page import NON_VERBALS, PAGE
from ..htmlsafe import fill, script_json

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Audition-Token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARDS = ("0.0.0.0", "::", "")
_LENGTH = re.compile(r"[0-9]{1,15}")


class ServerError(Exception):
    """The server cannot start (an address that does not resolve, a port in use)."""


class Busy(Exception):
    """A limit is reached: the request was fine, but not now or not this big (429 by default)."""

    def __init__(self, message: str, status: int = 429) -> None:
        super().__init__(message)
        self.status = status


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AuditionServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer bound before the model loads, with the guards above."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, host: str = "127.0.0.1", port: int = 7860, *, allowed_hosts: Iterable[str] = (),
                 max_connections: int = 32, socket_timeout_s: float = 20.0) -> None:
        try:
            family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        except (socket.gaierror, UnicodeError) as e:
            raise ServerError(f"--host {host}: not an address this machine can serve on "
                              f"({getattr(e, 'strerror', None) or e})") from None
        self.address_family = family
        try:
            super().__init__((host, port), _Handler)
        except OSError as e:
            raise ServerError(f"cannot serve on {host} port {port}: {e.strerror or e}") from None
        self.app: Any = None
        self.token = secrets.token_urlsafe(24)
        self.cookie_name = f"dia_audition_{self.server_port}"  # cookies ignore ports: one per server
        self.wildcard = host in _WILDCARDS
        self.loopback = host == "localhost" or _is_loopback(host)
        self.allowed = {n.lower() for n in LOOPBACK_NAMES} | {n.lower().rstrip(".") for n in allowed_hosts}
        if not self.wildcard:
            self.allowed.add(host.lower())
        self.socket_timeout_s = socket_timeout_s
        self._connections = threading.BoundedSemaphore(max_connections)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would look up the FQDN (DNS) for nothing
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    @property
    def url(self) -> str:
        """The address to open, token included."""
        host = self.server_name
        if self.wildcard:
            host = "::1" if self.address_family == socket.AF_INET6 else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.server_port}/?token={self.token}"

    def host_ok(self, value: Optional[str]) -> bool:
        """Whether a Host header names this server (see the module's note on DNS rebinding)."""
        if not value:
            return False
        value = value.strip().lower()
        port: Optional[str] = None
        if value.startswith("["):
            end = value.find("]")
            if end < 0 or (value[end + 1:] and not value[end + 1:].startswith(":")):
                return False
            name, port = value[1:end], (value[end + 2:] if value[end + 1:] else None)
        elif value.count(":") == 1:
            name, port = value.split(":")
        else:
            name = value
        if port is not None and port != str(self.server_port):
            return False
        name = name.rstrip(".")
        if name in self.allowed:
            return True
        if self.wildcard:
            try:
                ipaddress.ip_address(name)
                return True
            except ValueError:
                return False
        return False

    def token_ok(self, value: Optional[str]) -> bool:
        return bool(value) and hmac.compare_digest(value.encode(), self.token.encode())

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._connections.acquire(blocking=False):
            body = b'{"error": "too many connections: try again shortly"}'
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._connections.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    server: AuditionServer
    server_version = "dia-audition"
    sys_version = ""

    def setup(self) -> None:
        self.timeout = self.server.socket_timeout_s  # a half-sent request frees its thread after this
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (quiet; errors are logged below)
        pass

    # -- replies ------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, kind: str, headers: Optional[dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    # -- methods ------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def _refuse_method(self) -> None:
        self.close_connection = True
        self._json({"error": f"{self.command} is not supported here"}, 405)

    do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method  # noqa: N815  (no CORS, ever)

    def _handle(self) -> None:
        self.close_connection = True  # one request per connection: nothing idles on a thread
        try:
            url = urlsplit(self.path)
            self._guard(url.path)
            self._route(url.path, url.query)
        except HttpError as e:
            self._json({"error": str(e)}, e.status)
        except Busy as e:
            self._json({"error": str(e)}, e.status)
        except ValueError as e:
            self._json({"error": " ".join(str(e).split())}, 400)
        except KeyError as e:
            self._json({"error": str(e.args[0]) if e.args else "not found"}, 404)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stalled: nothing to answer
        except Exception as e:  # a bug: say so in one line, keep serving
            log.error("audition: %s %s failed: %s: %s", self.command, self.path[:200], type(e).__name__, e)
            try:
                self._json({"error": "internal error (the server's log says more)"}, 500)
            except OSError:
                pass

    def _guard(self, path: str) -> None:
        """Host, then who sent it (Origin / Sec-Fetch-Site), before any body is read."""
        server = self.server
        if not server.host_ok(self.headers.get("Host")):
            raise HttpError(403, "this server answers only to its own address (Host header refused)")
        origin = self.headers.get("Origin")
        if origin is not None and origin.lower() != f"http://{self.headers.get('Host', '').strip().lower()}":
            raise HttpError(403, "request from another origin refused")
        site = (self.headers.get("Sec-Fetch-Site") or "").lower()
        navigation = path == "/" and self.command == "GET" and self.headers.get("Sec-Fetch-Mode") == "navigate"
        if site not in ("", "same-origin", "none") and not navigation:
            raise HttpError(403, "request from another site refused")
        if server.app is None:
            raise Busy("still starting: try again in a moment", status=503)

    def _cookie_token(self) -> Optional[str]:
        try:
            jar = SimpleCookie(self.headers.get("Cookie") or "")
        except CookieError:
            return None
        morsel = jar.get(self.server.cookie_name)
        return morsel.value if morsel else None

    def _require_header_token(self) -> None:
        if not self.server.token_ok(self.headers.get(TOKEN_HEADER)):
            raise HttpError(403, f"missing or wrong {TOKEN_HEADER} header: reload the page from the address "
                                 "dia-audition printed (the token changes each time it starts)")

    # -- bodies -------------------------------------------------------------------------------
    def _body(self, cap: int) -> bytes:
        """Exactly Content-Length bytes, which must be given, honest and at most ``cap``."""
        if self.headers.get("Transfer-Encoding"):
            raise HttpError(411, "send a Content-Length; chunked bodies are not accepted")
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise HttpError(411, "a POST needs a Content-Length header")
        if not _LENGTH.fullmatch(raw.strip()):
            raise HttpError(400, "Content-Length must be a whole number of bytes")
        length = int(raw.strip())
        if length > cap:
            raise HttpError(413, f"request body over {_size(cap)}")
        body = self.rfile.read(length)
        if len(body) != length:
            raise HttpError(400, "the body ended before Content-Length bytes")
        return body

    def _json_body(self) -> dict[str, Any]:
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise HttpError(415, "send the body as Content-Type: application/json")
        body = self._body(self.server.app.limits.json_bytes)
        try:
            data = json.loads(body) if body else {}
        except (ValueError, RecursionError):
            raise HttpError(400, "the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HttpError(400, "the body must be a JSON object, e.g. {\"text\": \"[S1] Hi.\"}")
        return data

    # -- routes -------------------------------------------------------------------------------
    def _route(self, path: str, query: str) -> None:
        app = self.server.app
        try:
            q = parse_qs(query, max_num_fields=8)
        except ValueError:
            raise HttpError(400, "too many query parameters") from None

        def arg(name: str, default: str = "") -> str:
            return q.get(name, [default])[0]

        if self.command == "GET" and path == "/":
            return self._page(arg("token"))
        if self.command == "GET" and path.startswith("/takes/"):
            if not (self.server.token_ok(self.headers.get(TOKEN_HEADER)) or self.server.token_ok(self._cookie_token())):
                raise HttpError(403, "a take needs the page's token")
            return self._send(200, app.take_file(path.removeprefix("/takes/")).read_bytes(), "audio/wav")
        if not path.startswith("/api/"):
            raise KeyError("not found")
        self._require_header_token()
        if self.command == "GET" and path == "/api/voices":
            return self._json(app.voice_names())
        if self.command == "GET" and path == "/api/takes":
            return self._json(app.batch(arg("batch")))
        if self.command == "POST" and path == "/api/generate":
            return self._json({"batch": app.start(self._json_body())})
        if self.command == "POST" and path == "/api/cancel":
            return self._json(app.cancel(_text(self._json_body(), "batch")))
        if self.command == "POST" and path == "/api/export":
            form = self._json_body()
            take = form.get("take")
            if isinstance(take, bool) or not isinstance(take, int):
                raise ValueError("take must be a take's number, e.g. 1")
            return self._json(app.export(_text(form, "batch"), take, _text(form, "name", "audition")))
        if self.command == "POST" and path == "/api/voice":
            body = self._body(app.limits.upload_bytes)
            return self._json(app.add_voice(arg("name"), arg("transcript"), arg("filename", "clip.wav"), body))
        raise KeyError("not found")

    def _page(self, query_token: str) -> None:
        server, app = self.server, self.server.app
        from_query = server.token_ok(query_token)
        if not (from_query or server.token_ok(self._cookie_token())):
            return self._send(401, _NEEDS_TOKEN, "text/html; charset=utf-8")
        nonce = secrets.token_urlsafe(16)
        page = fill(PAGE, NONCE=nonce, TOKEN=script_json(server.token), MODEL=script_json(app.model_source),
                    NONVERBALS=script_json(NON_VERBALS), MAX_CANDIDATES=str(app.limits.candidates))
        headers = {"Content-Security-Policy": f"default-src 'none'; script-src 'nonce-{nonce}'; "
                   "style-src 'unsafe-inline'; connect-src 'self'; media-src 'self'; img-src 'self' data:; "
                   "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"}
        if from_query:
            headers["Set-Cookie"] = f"{server.cookie_name}={server.token}; Path=/; HttpOnly; SameSite=Strict"
        self._send(200, page.encode(), "text/html; charset=utf-8", headers)


def _text(form: dict[str, Any], key: str, default: Optional[str] = None) -> str:
    value = form.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


def _size(n: int) -> str:
    return f"{n >> 20} MB" if n >= 1 << 20 else f"{n >> 10} KB"


_NEEDS_TOKEN = (b"<!doctype html><meta charset=utf-8><title>Dia audition</title><p>This page needs its token: "
                b"open the address that <code>dia-audition</code> printed when it started (it ends in "
                b"<code>?token=...</code>).</p>")


def serve(app: Any, host: str = "127.0.0.1", port: int = 0, *, server: Optional[AuditionServer] = None,
          allowed_hosts: Iterable[str] = ()) -> AuditionServer:
    """Serve ``app`` in a daemon thread (on ``server`` if given, bound already); returns the server."""
    server = server or AuditionServer(host, port, allowed_hosts=allowed_hosts)
    server.app = app
    threading.Thread(target=server.serve_forever, name="audition-http", daemon=True).start()
    return server
