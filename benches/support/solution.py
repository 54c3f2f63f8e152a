#!/usr/bin/env python3
"""The tiny solution benches/run has wakegate start on demand.

Answers every request with 200 "ok\\n" over HTTP/1.1 keep-alive (stdlib
asyncio, so ten thousand requests arriving at once after a wake-up are
served without a listen-backlog of 5 or a thread each).

  --listen-file F   write time.time_ns() (wall clock) to F right after the
                    socket listens: the wake-overhead scenario subtracts it
                    from the client's first-byte time.
  --wait-file F     do not listen until F exists (bounded by --wait-max):
                    keeps the solution cold-but-starting while the
                    held-requests scenario piles up its requests.
"""
import argparse
import asyncio
import os
import time

BODY = b"ok\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n" + BODY
RESP_CLOSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\n" + BODY
)


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            close = b"\nconnection: close" in head.lower()
            writer.write(RESP_CLOSE if close else RESP)
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(args):
    if args.wait_file:
        deadline = time.monotonic() + args.wait_max
        while not os.path.exists(args.wait_file):
            if time.monotonic() > deadline:
                raise SystemExit(f"solution.py: {args.wait_file} did not appear within {args.wait_max}s")
            await asyncio.sleep(0.01)
    server = await asyncio.start_server(handle, "127.0.0.1", args.port, backlog=4096)
    if args.listen_file:
        stamp = time.time_ns()
        tmp = args.listen_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{stamp}\n")
        os.replace(tmp, args.listen_file)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    p.add_argument("--listen-file")
    p.add_argument("--wait-file")
    p.add_argument("--wait-max", type=float, default=120.0)
    try:
        asyncio.run(main(p.parse_args()))
    except KeyboardInterrupt:
        pass
