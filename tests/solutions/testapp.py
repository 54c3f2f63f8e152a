#!/usr/bin/env python3
"""testapp — the deterministic test solution used by wakegate's black-box tests.

The gateway starts this script as a local process (scale-from-zero) and the
tests drive it through the gateway.  Every endpoint behaves exactly and
deterministically so that tests can assert on status codes, headers and bodies.
Python 3.11 standard library only.

Command line
------------
  --port N              port to bind (falls back to env PORT, then 8080; 0 = any)
  --host HOST           address to bind (default 127.0.0.1)
  --name NAME           application name used in responses (default "testapp")
  --startup-delay SECS  float; sleep this long before binding the port
  --record FILE         append one JSON line per received request:
                          {"method", "path", "headers": {lowercased: value},
                           "body_len": n, "complete": bool}
                        written once the request body has been fully read, or
                        when the connection failed mid-body (complete=false).
  --fail-start          print "boom: cannot start" to stderr and exit 3 at once

If env TESTAPP_STARTS names a file, one line holding the pid is appended to it
after the startup delay, once the port is listening and before any request is
served (so every response a test sees comes after the line was written).

Endpoints
---------
  GET  /                 200 text/html with <title>NAME</title> and
                         <h1 id="app">NAME is awake</h1>
  GET  /healthz          200 "ok"
  GET  /hello            200 text/plain "hello from NAME\\n"
  GET  /slow?ms=N        sleep N ms (default 1000), then 200 "slow done\\n"
  GET  /headers          200 JSON: received headers (lowercased names, duplicates
                         joined with ", ") plus "_method" and "_path"
  POST|PUT /upload       streams the body (Content-Length or chunked) in 64 KiB
                         pieces; 200 JSON {"bytes": total, "sha256": hex}
  POST /echo             200, the body back with the same Content-Type
  GET  /sse?n=N&interval_ms=M
                         text/event-stream, "data: event i\\n\\n" for i in 0..N
                         (defaults n=5, interval_ms=100), flushed one by one;
                         chunked for HTTP/1.1 clients, close-delimited for 1.0
  GET  /ws               RFC 6455 WebSocket echo (400 without Upgrade: websocket)
  GET  /status/N         status N with body "status N\\n" (200 <= N <= 599;
                         no body for 204/304; other N -> 400 "bad status\\n")
  anything else          404 "not found\\n"

HEAD is accepted wherever GET is, except /sse and /ws.  Malformed query values
(e.g. /slow?ms=abc) give 400 "bad query\\n".  Request bodies are always read
(drained) before responding so keep-alive connections stay in sync.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import os
import signal
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CHUNK = 64 * 1024                      # streaming read size for bodies
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_MAX_PAYLOAD = 16 * 1024 * 1024      # refuse absurd WebSocket frames


# --------------------------------------------------------------------------
# Request recording (--record)
# --------------------------------------------------------------------------

class Recorder:
    """Appends one JSON line per request to a file; safe across threads."""

    def __init__(self, path: str | None):
        self.path = path
        self.lock = threading.Lock()

    def write(self, entry: dict) -> None:
        if not self.path:
            return
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self.lock:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()


# --------------------------------------------------------------------------
# Request body reading (Content-Length or chunked), streaming
# --------------------------------------------------------------------------

class BodyError(Exception):
    """The request body could not be read.

    `dead` is True when the peer went away mid-body (no response possible),
    False when the framing itself was malformed (a 400 can still be sent).
    """

    def __init__(self, message: str, dead: bool):
        super().__init__(message)
        self.dead = dead


class BodyReader:
    """Streams a request body in pieces of at most CHUNK bytes.

    Handles `Transfer-Encoding: chunked` (decoded here, trailers discarded) and
    `Content-Length`; with neither, the body is empty.  `on_done(body_len,
    complete)` is called exactly once, when the body ends or reading fails.
    """

    def __init__(self, rfile, headers, on_done):
        self.rfile = rfile
        self.on_done = on_done
        self.body_len = 0
        self.finished = False
        te = headers.get("Transfer-Encoding", "")
        self.chunked = "chunked" in te.lower()
        self.length = 0
        if not self.chunked:
            cl = headers.get("Content-Length")
            if cl is not None:
                try:
                    self.length = int(cl.strip())
                    if self.length < 0:
                        raise ValueError
                except ValueError:
                    self._finish(False)
                    raise BodyError("bad Content-Length", dead=False)

    def _finish(self, complete: bool) -> None:
        if not self.finished:
            self.finished = True
            self.on_done(self.body_len, complete)

    def _read_exact(self, n: int, payload: bool = True) -> bytes:
        """Read exactly n bytes; payload bytes (even a partial read before the
        peer vanished) are counted in body_len."""
        try:
            data = self.rfile.read(n)
        except OSError as e:  # reset, timeout, ...
            raise BodyError(f"connection failed mid-body: {e}", dead=True)
        if payload:
            self.body_len += len(data)
        if len(data) < n:
            raise BodyError("connection closed mid-body", dead=True)
        return data

    def _read_line(self) -> bytes:
        try:
            line = self.rfile.readline(CHUNK + 1)
        except OSError as e:
            raise BodyError(f"connection failed mid-body: {e}", dead=True)
        if not line.endswith(b"\n"):
            if len(line) > CHUNK:
                raise BodyError("chunk line too long", dead=False)
            raise BodyError("connection closed mid-body", dead=True)
        return line

    def _pieces(self):
        if self.chunked:
            while True:
                size_line = self._read_line().split(b";", 1)[0].strip()
                try:
                    size = int(size_line, 16)
                    if size < 0:
                        raise ValueError
                except ValueError:
                    raise BodyError("bad chunk size", dead=False)
                if size == 0:
                    # Trailer section: header lines until an empty line.
                    while self._read_line().strip():
                        pass
                    return
                while size:
                    piece = self._read_exact(min(size, CHUNK))
                    size -= len(piece)
                    yield piece
                if self._read_exact(2, payload=False) != b"\r\n":  # strict chunk framing
                    raise BodyError("missing CRLF after chunk", dead=False)
        else:
            remaining = self.length
            while remaining:
                piece = self._read_exact(min(remaining, CHUNK))
                remaining -= len(piece)
                yield piece

    def iter(self):
        """Yield body pieces; records completion (or failure) exactly once."""
        try:
            yield from self._pieces()
        except BodyError:
            self._finish(False)
            raise
        self._finish(True)

    def drain(self) -> None:
        for _ in self.iter():
            pass

    def read_all(self) -> bytes:
        return b"".join(self.iter())


# --------------------------------------------------------------------------
# WebSocket (RFC 6455) helpers
# --------------------------------------------------------------------------

def ws_accept(key: str) -> str:
    digest = hashlib.sha1((key + WS_GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def ws_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """Build a server->client frame (never masked)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def ws_close_frame(code: int) -> bytes:
    return ws_frame(0x8, struct.pack("!H", code))


# --------------------------------------------------------------------------
# HTTP handler
# --------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "testapp/1.0"

    # Set on the class by main().
    app_name = "testapp"
    recorder = Recorder(None)

    # ---- plumbing -------------------------------------------------------

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass  # no per-request logging

    def do_GET(self):
        self.dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    def header_map(self) -> dict:
        """Lowercased header names -> value; duplicates joined with ", "."""
        out: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            out[key] = f"{out[key]}, {value}" if key in out else value
        return out

    def record(self, body_len: int, complete: bool) -> None:
        self.recorder.write({
            "method": self.command,
            "path": self.path,
            "headers": self.header_map(),
            "body_len": body_len,
            "complete": complete,
        })

    def respond(self, status: int, body: bytes = b"",
                ctype: str = "text/plain; charset=utf-8",
                headers: dict | None = None) -> None:
        """Send a complete response with Content-Length (no body on HEAD)."""
        self.send_response(status)
        no_body = status in (204, 304)
        if not no_body:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and not no_body:
            self.wfile.write(body)

    def respond_json(self, status: int, obj) -> None:
        body = (json.dumps(obj, sort_keys=True) + "\n").encode("utf-8")
        self.respond(status, body, "application/json")

    # ---- routing --------------------------------------------------------

    def dispatch(self) -> None:
        url = urlsplit(self.path)
        path = url.path or "/"
        query = parse_qs(url.query, keep_blank_values=True)
        method = self.command
        get_like = method in ("GET", "HEAD")

        try:
            body = BodyReader(self.rfile, self.headers, self.record)
        except BodyError as e:
            self.close_connection = True
            self.respond(400, f"bad request: {e}\n".encode(),
                         headers={"Connection": "close"})
            return

        try:
            # Endpoints that consume the body themselves.
            if path == "/upload" and method in ("POST", "PUT"):
                return self.do_upload(body)
            if path == "/echo" and method == "POST":
                return self.do_echo(body)

            # Everything else: drain (and record) the body first.
            body.drain()

            if path == "/" and get_like:
                return self.do_index()
            if path == "/healthz" and get_like:
                return self.respond(200, b"ok")
            if path == "/hello" and get_like:
                return self.respond(200, f"hello from {self.app_name}\n".encode())
            if path == "/slow" and get_like:
                return self.do_slow(query)
            if path == "/headers" and get_like:
                return self.do_headers()
            if path == "/hop" and get_like:
                return self.do_hop()
            if path == "/sse" and method == "GET":
                return self.do_sse(query)
            if path == "/ws" and method == "GET":
                return self.do_ws()
            if path.startswith("/status/") and get_like:
                code = path[len("/status/"):]
                if code.isdigit():
                    return self.do_status(int(code))
            return self.respond(404, b"not found\n")
        except BodyError as e:
            self.close_connection = True
            if not e.dead:
                self.respond(400, f"bad request: {e}\n".encode(),
                             headers={"Connection": "close"})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # ---- endpoints ------------------------------------------------------

    def do_index(self) -> None:
        name = html.escape(self.app_name)
        page = (
            "<!doctype html>\n"
            "<html><head><meta charset=\"utf-8\">"
            f"<title>{name}</title></head>\n"
            f"<body><h1 id=\"app\">{name} is awake</h1></body></html>\n"
        )
        self.respond(200, page.encode("utf-8"), "text/html; charset=utf-8")

    @staticmethod
    def int_param(query: dict, key: str, default: int) -> int:
        """Non-negative integer query parameter; ValueError if malformed."""
        if key not in query:
            return default
        value = int(query[key][0])
        if value < 0:
            raise ValueError(key)
        return value

    def do_slow(self, query: dict) -> None:
        try:
            ms = self.int_param(query, "ms", 1000)
        except ValueError:
            return self.respond(400, b"bad query\n")
        time.sleep(ms / 1000.0)
        self.respond(200, b"slow done\n")

    def do_headers(self) -> None:
        data = self.header_map()
        data["_method"] = self.command
        data["_path"] = self.path
        self.respond_json(200, data)

    def do_hop(self) -> None:
        """An answer with hop-by-hop fields, fields in mixed case, a repeated
        field, and an X-Request-Id of its own (the gateway's replaces it)."""
        body = b"hop\n"
        self.send_response(200)
        self.send_header("Connection", "keep-alive, X-Hop")
        self.send_header("X-Hop", "secret")
        self.send_header("Keep-Alive", "timeout=5")
        self.send_header("X-Request-Id", "from-the-solution")
        self.send_header("Set-Cookie", "a=1")
        self.send_header("Set-Cookie", "b=2")
        self.send_header("X-Kept", "yes")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_status(self, code: int) -> None:
        if not 200 <= code <= 599:
            return self.respond(400, b"bad status\n")
        self.respond(code, f"status {code}\n".encode())

    def do_upload(self, body: BodyReader) -> None:
        digest = hashlib.sha256()
        total = 0
        for piece in body.iter():  # never holds more than one piece
            digest.update(piece)
            total += len(piece)
        self.respond_json(200, {"bytes": total, "sha256": digest.hexdigest()})

    def do_echo(self, body: BodyReader) -> None:
        data = body.read_all()
        ctype = self.headers.get("Content-Type", "application/octet-stream")
        self.respond(200, data, ctype)

    def do_sse(self, query: dict) -> None:
        try:
            n = self.int_param(query, "n", 5)
            interval = self.int_param(query, "interval_ms", 100)
        except ValueError:
            return self.respond(400, b"bad query\n")

        chunked = self.request_version == "HTTP/1.1"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            # HTTP/1.0 has no chunked encoding: the body ends at close.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

        for i in range(n):
            if i:
                time.sleep(interval / 1000.0)
            event = f"data: event {i}\n\n".encode()
            if chunked:
                event = b"%x\r\n%s\r\n" % (len(event), event)
            self.wfile.write(event)  # unbuffered: each event goes out now
            self.wfile.flush()
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    # ---- WebSocket ------------------------------------------------------

    def do_ws(self) -> None:
        upgrade = self.headers.get("Upgrade", "")
        if "websocket" not in upgrade.lower():
            return self.respond(400, b"expected websocket upgrade\n")
        key = self.headers.get("Sec-WebSocket-Key", "").strip()
        if not key:
            return self.respond(400, b"missing Sec-WebSocket-Key\n")
        version = self.headers.get("Sec-WebSocket-Version", "13").strip()
        if version != "13":
            return self.respond(426, b"unsupported websocket version\n",
                                headers={"Sec-WebSocket-Version": "13"})

        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", ws_accept(key))
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True  # no HTTP after the WebSocket session
        try:
            self.ws_echo_loop()
        except (OSError, ConnectionError):
            pass

    def ws_read(self, n: int) -> bytes:
        data = self.rfile.read(n) if n else b""
        if len(data) < n:
            raise ConnectionError("websocket peer went away")
        return data

    def ws_echo_loop(self) -> None:
        """Echo data frames until a close frame (or protocol error)."""
        while True:
            b0, b1 = self.ws_read(2)
            fin = bool(b0 & 0x80)
            opcode = b0 & 0x0F
            masked = bool(b1 & 0x80)
            length = b1 & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self.ws_read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self.ws_read(8))

            if not masked:  # clients MUST mask
                self.wfile.write(ws_close_frame(1002))
                return
            if opcode >= 0x8 and (length > 125 or not fin):
                self.wfile.write(ws_close_frame(1002))
                return
            if length > WS_MAX_PAYLOAD:
                self.wfile.write(ws_close_frame(1009))
                return

            mask = self.ws_read(4)
            raw = self.ws_read(length)
            payload = bytes(b ^ mask[i & 3] for i, b in enumerate(raw))

            if opcode in (0x0, 0x1, 0x2):      # continuation / text / binary
                self.wfile.write(ws_frame(opcode, payload, fin))
            elif opcode == 0x9:                # ping -> pong, same payload
                self.wfile.write(ws_frame(0xA, payload))
            elif opcode == 0xA:                # unsolicited pong: ignore
                pass
            elif opcode == 0x8:                # close: echo status code, end
                self.wfile.write(ws_frame(0x8, payload[:2]))
                return
            else:                              # reserved opcode
                self.wfile.write(ws_close_frame(1002))
                return


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
            return  # the peer went away (e.g. reset mid-request): not an error
        super().handle_error(request, client_address)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="wakegate black-box test solution")
    p.add_argument("--port", type=int,
                   default=int(os.environ.get("PORT") or 8080))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--name", default="testapp")
    p.add_argument("--startup-delay", type=float, default=0.0)
    p.add_argument("--record", default=None)
    p.add_argument("--fail-start", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.fail_start:
        print("boom: cannot start", file=sys.stderr, flush=True)
        return 3

    # SIGTERM: exit cleanly, whether still sleeping or already serving.
    def on_term(signum, frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, on_term)

    try:
        if args.startup_delay > 0:
            time.sleep(args.startup_delay)

        Handler.app_name = args.name
        Handler.recorder = Recorder(args.record)
        server = Server((args.host, args.port), Handler)

        starts = os.environ.get("TESTAPP_STARTS")
        if starts:
            with open(starts, "a", encoding="utf-8") as f:
                f.write(f"{os.getpid()}\n")

        host, port = server.server_address[:2]
        print(f"{args.name} listening on {host}:{port}",
              file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        finally:
            server.server_close()
    except (SystemExit, KeyboardInterrupt):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
