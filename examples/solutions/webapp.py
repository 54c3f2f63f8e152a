#!/usr/bin/env python3
"""webapp — the small HTTP/JSON scaffolding both example solutions share.

Python 3.11 standard library only. A solution subclasses `JSONHandler`, sets
`server_version`, `ROUTES` ({path: (method, name)}, each name served by its
`route_<name>` method) and `PAGE` (the HTML at `/`, where `{BASE}` becomes
http://<Host>), and calls `run(...)` from its `main`. `/` and `/healthz` are
served here.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MAX_BODY = 1024 * 1024          # 1 MiB request-body limit

class HTTPError(Exception):
    """An error answered as JSON {"error": message}."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close  # the body was not consumed: close the connection


class JSONHandler(BaseHTTPRequestHandler):
    """Routing, JSON bodies and errors; subclasses add ROUTES and route_*."""

    protocol_version = "HTTP/1.1"
    server_version = "webapp/1.0"
    PAGE = "<!doctype html><title>solution</title>"
    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass  # no per-request logging

    # ---- responses ------------------------------------------------------

    def send(self, status: int, body: bytes, ctype: str,
             headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, obj, headers: dict | None = None) -> None:
        body = (json.dumps(obj) + "\n").encode("utf-8")
        self.send(status, body, "application/json", headers)

    # ---- request body ---------------------------------------------------

    def handle_expect_100(self) -> bool:
        """Only invite the body (100 Continue) if it is within the limit;
        otherwise the handler answers 413 before the client sends it."""
        try:
            too_big = int(self.headers.get("Content-Length", "0")) > MAX_BODY
        except ValueError:
            too_big = False
        return True if too_big else super().handle_expect_100()

    def read_body(self, limit: int = MAX_BODY) -> bytes:
        """Read the whole body (Content-Length or chunked), at most `limit`."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self.read_chunked(limit)
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if length < 0:
                raise ValueError
        except ValueError:
            raise HTTPError(400, "invalid Content-Length", close=True)
        if length > limit:
            raise HTTPError(413, f"request body over {limit} bytes", close=True)
        data = self.rfile.read(length)
        if len(data) < length:
            raise ConnectionError("client went away mid-body")
        return data

    def read_chunked(self, limit: int) -> bytes:
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise ConnectionError("client went away mid-body")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HTTPError(400, "invalid chunked encoding", close=True)
            if size == 0:
                while self.rfile.readline(1024).strip():  # skip trailers
                    pass
                return b"".join(parts)
            total += size
            if total > limit:
                raise HTTPError(413, f"request body over {limit} bytes",
                                close=True)
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise ConnectionError("client went away mid-body")
            parts.append(chunk)
            self.rfile.readline(1024)  # CRLF after the chunk data

    def read_json_fields(self, *names: str) -> list[str]:
        """Parse a JSON object body and return the named string fields."""
        body = self.read_body()
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise HTTPError(400, "request body must be valid JSON")
        if not isinstance(data, dict):
            raise HTTPError(400, "request body must be a JSON object")
        values = []
        for name in names:
            if name not in data:
                raise HTTPError(400, f"missing field '{name}'")
            if not isinstance(data[name], str):
                raise HTTPError(400, f"field '{name}' must be a string")
            values.append(data[name])
        return values

    # ---- routing --------------------------------------------------------

    ROUTES = {
        "/": ("GET", "page"),
        "/healthz": ("GET", "healthz"),
    }

    def do_GET(self):
        path = urlsplit(self.path).path
        allowed: tuple[str, ...] = ()
        try:
            route = self.ROUTES.get(path)
            if route is None:
                self.read_body()  # keep the connection in sync
                raise HTTPError(404, f"no such endpoint: {path}")
            method, name = route
            allowed = (method, "HEAD") if method == "GET" else (method,)
            if self.command not in allowed:
                self.read_body()
                raise HTTPError(405, f"use {method} for {path}")
            if self.command != "POST":
                self.read_body()  # GET/HEAD bodies are ignored, but drained
            getattr(self, "route_" + name)()
        except HTTPError as e:
            headers = {}
            if e.status == 405:
                headers["Allow"] = ", ".join(allowed)
            if e.close:
                headers["Connection"] = "close"
            self.send_json(e.status, {"error": e.message}, headers)
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    # ---- endpoints every solution has -------------------------------------

    def route_page(self) -> None:
        host = self.headers.get("Host") or "127.0.0.1:8080"
        page = self.PAGE.replace("{BASE}", html.escape(f"http://{host}"))
        self.send(200, page.encode("utf-8"), "text/html; charset=utf-8")

    def route_healthz(self) -> None:
        self.send(200, b"ok", "text/plain; charset=utf-8")


class Server(ThreadingHTTPServer):
    """Threaded server: daemon threads, no join on close, quiet disconnects."""

    daemon_threads = True
    # A wake-up releases every held request at once: keep a deep accept queue
    # (socketserver's default is 5, which turns a burst into SYN retries).
    request_queue_size = 1024
    block_on_close = False

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the peer went away: not worth a traceback
        super().handle_error(request, client_address)


def run(name: str, handler: type[JSONHandler], description: str,
        startup_delay: float = 0.0, argv=None) -> int:
    """Parses --port/--host/--startup-delay, sleeps the delay (the "model
    load"), then serves until SIGTERM."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--port", type=int,
                   default=int(os.environ.get("PORT") or 8080))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--startup-delay", type=float, default=startup_delay)
    args = p.parse_args(argv)

    # SIGTERM: exit cleanly, whether still loading or already serving.
    def on_term(signum, frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, on_term)

    try:
        if args.startup_delay > 0:
            print(f"{name}: loading the model ({args.startup_delay:g}s)...",
                  file=sys.stderr, flush=True)
            time.sleep(args.startup_delay)
        server = Server((args.host, args.port), handler)
        host, port = server.server_address[:2]
        print(f"{name} listening on {host}:{port}", file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        finally:
            server.server_close()
    except (SystemExit, KeyboardInterrupt):
        pass
    return 0
