#!/usr/bin/env python3
"""nlp — a tiny text-embedding service, an example solution for wakegate.

It mirrors an NLP embedding demo without any ML dependency: the "model" is a
deterministic hashed bag-of-words (plus character trigrams) projected into 64
signed buckets and L2-normalised, so the same text always gives the same
vector.  The gateway starts it as a local process on demand (scale-from-zero).
Python 3.11 standard library only.

Command line
------------
  --port N              port to bind (falls back to env PORT, then 8080)
  --host HOST           address to bind (default 127.0.0.1)
  --startup-delay SECS  float; sleep this long before binding (default 0)

API
---
  GET  /             HTML page describing the API, with a similarity form
  GET  /healthz      200 "ok"
  POST /embed        {"text": "..."}  -> {"model": "hash-bow-64", "dim": 64,
                                          "vector": [64 floats]}
  POST /similarity   {"a": "...", "b": "..."} -> {"similarity": cosine}
                     (cosine rounded to 6 digits; 0.0 if either text is empty)

Errors are JSON {"error": "..."}: 400 for bad JSON or a missing/non-string
field, 404 for an unknown path, 405 for a wrong method on a known path, 413
for a request body over 1 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import math
import os
import re
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MODEL = "hash-bow-64"
DIM = 64
MAX_BODY = 1024 * 1024          # 1 MiB request-body limit
TOKEN_RE = re.compile(r"\w+")   # word tokens (Unicode-aware)


# --------------------------------------------------------------------------
# The "model": hashed bag of words + character trigrams
# --------------------------------------------------------------------------

def features(text: str):
    """Yield (feature, weight): each word token, and its character trigrams
    (with "<" and ">" marking word boundaries) at half weight."""
    for token in TOKEN_RE.findall(text.lower()):
        yield "w:" + token, 1.0
        padded = f"<{token}>"
        for i in range(len(padded) - 2):
            yield "c:" + padded[i:i + 3], 0.5


def embed(text: str) -> list[float]:
    """Deterministic DIM-dimensional, L2-normalised embedding of `text`."""
    vec = [0.0] * DIM
    for feature, weight in features(text):
        digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
        h = int.from_bytes(digest, "big")
        bucket = h % DIM                      # low bits pick the bucket
        sign = -1.0 if h >> 63 else 1.0       # top bit picks the sign
        vec[bucket] += sign * weight
    norm = math.sqrt(sum(x * x for x in vec))
    if norm == 0.0:
        return vec                            # no tokens: the zero vector
    return [x / norm for x in vec]


def cosine(a: list[float], b: list[float]) -> float:
    """Cosine similarity of two unit (or zero) vectors."""
    dot = sum(x * y for x, y in zip(a, b))
    return max(-1.0, min(1.0, dot))


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
    server_version = "nlp-example/1.0"

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
        "/embed": ("POST", "embed"),
        "/similarity": ("POST", "similarity"),
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

    def route_embed(self) -> None:
        (text,) = self.read_json_fields("text")
        vector = [round(x, 6) for x in embed(text)]
        self.send_json(200, {"model": MODEL, "dim": DIM, "vector": vector})

    def route_similarity(self) -> None:
        a, b = self.read_json_fields("a", "b")
        self.send_json(200, {"similarity": round(cosine(embed(a), embed(b)), 6)})


# --------------------------------------------------------------------------
# The HTML page ({BASE} is replaced by http://<Host header>)
# --------------------------------------------------------------------------

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nlp — text embeddings</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto;
         padding: 0 1rem; color: #222; line-height: 1.5; }
  h1 { margin-bottom: 0.2rem; }
  .sub { color: #666; margin-top: 0; }
  pre { background: #f4f4f4; padding: 0.7rem; overflow-x: auto; border-radius: 4px; }
  code { font-size: 0.9em; }
  textarea { width: 100%; box-sizing: border-box; font: inherit; }
  button { padding: 0.4rem 1.2rem; font: inherit; }
  #result { font-weight: bold; margin-left: 1rem; }
</style>
</head>
<body>
<h1>nlp — text embeddings</h1>
<p class="sub">Model <code>hash-bow-64</code>: a deterministic hashed
bag-of-words with character trigrams, 64 dimensions, L2-normalised.</p>

<h2>Try it</h2>
<form id="sim">
  <label>Text A<br><textarea id="a" rows="2">The quick brown fox</textarea></label>
  <label>Text B<br><textarea id="b" rows="2">A fast brown fox</textarea></label>
  <button type="submit">Compare</button><span id="result"></span>
</form>

<h2>REST API</h2>
<p><code>POST /embed</code> with <code>{"text": "..."}</code> returns
<code>{"model": "hash-bow-64", "dim": 64, "vector": [...]}</code>.</p>
<pre>curl -s {BASE}/embed -H 'Content-Type: application/json' \\
     -d '{"text": "hello world"}'</pre>
<p><code>POST /similarity</code> with <code>{"a": "...", "b": "..."}</code>
returns <code>{"similarity": cosine}</code>.</p>
<pre>curl -s {BASE}/similarity -H 'Content-Type: application/json' \\
     -d '{"a": "the quick brown fox", "b": "a fast brown fox"}'</pre>
<p><code>GET /healthz</code> returns <code>ok</code>. Errors are JSON
<code>{"error": "..."}</code> (400 bad input, 404 unknown path,
413 body over 1 MiB).</p>

<script>
document.getElementById("sim").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = document.getElementById("result");
  out.textContent = "…";
  try {
    const resp = await fetch("similarity", {   // relative: works behind a prefix
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({a: document.getElementById("a").value,
                            b: document.getElementById("b").value}),
    });
    const data = await resp.json();
    out.textContent = resp.ok ? "similarity = " + data.similarity
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
    p = argparse.ArgumentParser(description="nlp text-embedding example")
    p.add_argument("--port", type=int,
                   default=int(os.environ.get("PORT") or 8080))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--startup-delay", type=float, default=0.0)
    args = p.parse_args(argv)

    # SIGTERM: exit cleanly, whether still sleeping or already serving.
    def on_term(signum, frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, on_term)

    try:
        if args.startup_delay > 0:
            time.sleep(args.startup_delay)
        server = Server((args.host, args.port), Handler)
        host, port = server.server_address[:2]
        print(f"nlp listening on {host}:{port}", file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        finally:
            server.server_close()
    except (SystemExit, KeyboardInterrupt):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
