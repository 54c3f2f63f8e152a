#!/usr/bin/env python3
"""parts — a "part comparer" service, an example solution for wakegate.

It mirrors a part-comparison demo whose model is slow to load: by default it
sleeps --startup-delay seconds (3.0) "loading the model" before it binds its
port, which makes it a good showcase for the gateway holding requests while a
cold app wakes up.  Comparison is the Jaccard index of the two descriptions'
word-token sets.  Python 3.11 standard library only.

Command line
------------
  --port N              port to bind (falls back to env PORT, then 8080)
  --host HOST           address to bind (default 127.0.0.1)
  --startup-delay SECS  float; "model loading" time before binding (default 3.0)

API
---
  GET  /            HTML page describing the API, with a compare form
  GET  /healthz     200 "ok"
  GET  /api/parts   {"count": 5, "parts": [{"id", "name", "category",
                                            "description"}, ...]}
  POST /compare     {"a": "part description", "b": "..."}
                    -> {"score": jaccard (rounded to 6 digits),
                        "shared": [sorted shared tokens]}

Tokens are lowercased runs of word characters.  Errors are JSON
{"error": "..."}: 400 for bad JSON or a missing/non-string field, 404 for an
unknown path, 405 for a wrong method on a known path, 413 for a request body
over 1 MiB.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MAX_BODY = 1024 * 1024          # 1 MiB request-body limit
TOKEN_RE = re.compile(r"\w+")   # word tokens (Unicode-aware)

# A small, made-up catalogue served by GET /api/parts.
CATALOGUE = [
    {"id": "P-1001", "name": "Hex bolt M6x30", "category": "fasteners",
     "description": "M6 hex bolt, 30 mm, stainless steel A2"},
    {"id": "P-1002", "name": "Hex nut M6", "category": "fasteners",
     "description": "M6 hex nut, stainless steel A2"},
    {"id": "P-1003", "name": "Ball bearing 608ZZ", "category": "bearings",
     "description": "608ZZ ball bearing, 8 mm bore, 22 mm outer, steel shields"},
    {"id": "P-1004", "name": "GT2 timing belt", "category": "transmission",
     "description": "GT2 timing belt, 6 mm wide, 400 mm closed loop, rubber"},
    {"id": "P-1005", "name": "Corner bracket 40", "category": "structural",
     "description": "L-shaped corner bracket, 40 x 40 mm, anodised aluminium"},
]


# --------------------------------------------------------------------------
# The "model": Jaccard similarity of token sets
# --------------------------------------------------------------------------

def tokens(text: str) -> set[str]:
    return set(TOKEN_RE.findall(text.lower()))


def compare(a: str, b: str) -> dict:
    """Jaccard index |A∩B| / |A∪B| (0.0 when both are empty) + shared tokens."""
    ta, tb = tokens(a), tokens(b)
    shared = ta & tb
    union = ta | tb
    score = len(shared) / len(union) if union else 0.0
    return {"score": round(score, 6), "shared": sorted(shared)}


# --------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------

class HTTPError(Exception):
    """An error answered as JSON {"error": message}."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close  # the body was not consumed: close the connection


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "parts-example/1.0"

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
        "/api/parts": ("GET", "parts"),
        "/compare": ("POST", "compare"),
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

    # ---- endpoints ------------------------------------------------------

    def route_page(self) -> None:
        host = self.headers.get("Host") or "127.0.0.1:8080"
        page = PAGE.replace("{BASE}", html.escape(f"http://{host}"))
        self.send(200, page.encode("utf-8"), "text/html; charset=utf-8")

    def route_healthz(self) -> None:
        self.send(200, b"ok", "text/plain; charset=utf-8")

    def route_parts(self) -> None:
        self.send_json(200, {"count": len(CATALOGUE), "parts": CATALOGUE})

    def route_compare(self) -> None:
        a, b = self.read_json_fields("a", "b")
        self.send_json(200, compare(a, b))


# --------------------------------------------------------------------------
# The HTML page ({BASE} is replaced by http://<Host header>)
# --------------------------------------------------------------------------

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>parts — part comparer</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto;
         padding: 0 1rem; color: #222; line-height: 1.5; }
  h1 { margin-bottom: 0.2rem; }
  .sub { color: #666; margin-top: 0; }
  pre { background: #f4f4f4; padding: 0.7rem; overflow-x: auto; border-radius: 4px; }
  code { font-size: 0.9em; }
  input { width: 100%; box-sizing: border-box; font: inherit; margin-bottom: 0.4rem; }
  button { padding: 0.4rem 1.2rem; font: inherit; }
  #result { font-weight: bold; margin-left: 1rem; }
</style>
</head>
<body>
<h1>parts — part comparer</h1>
<p class="sub">Compares two part descriptions by the overlap (Jaccard index)
of their word tokens. The "model" takes a few seconds to load, so the first
request after a cold start waits for it.</p>

<h2>Try it</h2>
<form id="cmp">
  <label>Part A<br><input id="a" value="M6 hex bolt, 30 mm, stainless steel A2"></label>
  <label>Part B<br><input id="b" value="M6 hex nut, stainless steel A2"></label>
  <button type="submit">Compare</button><span id="result"></span>
</form>

<h2>REST API</h2>
<p><code>POST /compare</code> with <code>{"a": "...", "b": "..."}</code>
returns <code>{"score": jaccard, "shared": [shared tokens]}</code>.</p>
<pre>curl -s {BASE}/compare -H 'Content-Type: application/json' \\
     -d '{"a": "M6 hex bolt, stainless", "b": "M6 hex nut, stainless"}'</pre>
<p><code>GET /api/parts</code> returns the sample catalogue.</p>
<pre>curl -s {BASE}/api/parts</pre>
<p><code>GET /healthz</code> returns <code>ok</code>. Errors are JSON
<code>{"error": "..."}</code> (400 bad input, 404 unknown path,
413 body over 1 MiB).</p>

<script>
document.getElementById("cmp").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = document.getElementById("result");
  out.textContent = "…";
  try {
    const resp = await fetch("compare", {   // relative: works behind a prefix
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({a: document.getElementById("a").value,
                            b: document.getElementById("b").value}),
    });
    const data = await resp.json();
    out.textContent = resp.ok
      ? "score = " + data.score + " (shared: " + data.shared.join(", ") + ")"
      : "error: " + data.error;
  } catch (err) {
    out.textContent = "request failed: " + err;
  }
});
</script>
</body>
</html>
"""


# --------------------------------------------------------------------------
# Server and startup
# --------------------------------------------------------------------------

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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="parts comparer example")
    p.add_argument("--port", type=int,
                   default=int(os.environ.get("PORT") or 8080))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--startup-delay", type=float, default=3.0)
    args = p.parse_args(argv)

    # SIGTERM: exit cleanly, whether still loading or already serving.
    def on_term(signum, frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, on_term)

    try:
        if args.startup_delay > 0:
            print(f"parts: loading the model ({args.startup_delay:g}s)...",
                  file=sys.stderr, flush=True)
            time.sleep(args.startup_delay)
        server = Server((args.host, args.port), Handler)
        host, port = server.server_address[:2]
        print(f"parts listening on {host}:{port}", file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        finally:
            server.server_close()
    except (SystemExit, KeyboardInterrupt):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
