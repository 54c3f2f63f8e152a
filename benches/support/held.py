#!/usr/bin/env python3
"""Held requests: N concurrent requests to one cold wakegate solution.

Opens --conns connections (at most --connect-batch connecting at once),
each sends one GET and waits. Once every request is sent and wakegate's
admin /status shows them held, it creates --go-file, which lets the
solution (benches/support/solution.py --wait-file) start listening; then
it waits for every answer.

Prints `key=value` lines: conns, sent, held_seen, ok (HTTP 200), other
(status:count,...), errors (no response: refused, reset, timeout),
answer_s (go-file to last answer), and with --gateway-pid held_rss_kib:
the gateway's VmRSS while every request is held, just before the wake.
"""
import argparse
import asyncio
import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stats import solution_status  # noqa: E402


async def one(port, req, sem, sent, timeout):
    """Returns the HTTP status, or an error name."""
    try:
        async with sem:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            writer.write(req)
            await writer.drain()
            sent[0] += 1
    except (OSError, asyncio.TimeoutError) as e:
        return type(e).__name__
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
        await asyncio.wait_for(reader.read(), timeout)   # Connection: close: read to EOF
        parts = line.split(b" ", 2)
        return int(parts[1]) if line.startswith(b"HTTP/") and len(parts) > 1 else "bad-status-line"
    except (OSError, asyncio.TimeoutError, ValueError) as e:
        return type(e).__name__
    finally:
        writer.close()


async def poll_held(admin, name, want, limit):
    """Highest `held` /status showed before it reached want (or limit s passed)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + limit
    best = 0
    while time.monotonic() < deadline:
        try:
            st = await loop.run_in_executor(None, solution_status, admin, name)
            best = max(best, int((st or {}).get("held") or 0))
        except OSError:
            pass
        if best >= want:
            break
        await asyncio.sleep(0.1)
    return best


def vm_kib(pid, field):
    """A Vm* line of /proc/PID/status in KiB, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


async def main(a):
    req = f"GET / HTTP/1.1\r\nHost: {a.host}\r\nConnection: close\r\n\r\n".encode()
    sem = asyncio.Semaphore(a.connect_batch)
    sent = [0]
    tasks = [asyncio.create_task(one(a.port, req, sem, sent, a.timeout)) for _ in range(a.conns)]
    # Every connection has sent its request (or failed to connect), bounded.
    deadline = time.monotonic() + a.timeout
    while time.monotonic() < deadline:
        pending = sum(1 for t in tasks if not t.done())
        if sent[0] + (a.conns - pending) >= a.conns or sent[0] >= a.conns:
            break
        await asyncio.sleep(0.05)
    held = await poll_held(a.admin, a.name, sent[0], 30)
    held_rss = vm_kib(a.gateway_pid, "VmRSS") if a.gateway_pid else None
    t_go = time.monotonic()
    with open(a.go_file, "w") as f:
        f.write("go\n")
    results = await asyncio.gather(*tasks)
    answer_s = time.monotonic() - t_go
    codes = collections.Counter(r for r in results if isinstance(r, int))
    errors = collections.Counter(r for r in results if not isinstance(r, int))
    print(f"conns={a.conns}")
    print(f"sent={sent[0]}")
    print(f"held_seen={held}")
    print(f"ok={codes.get(200, 0)}")
    print("other=" + ",".join(f"{k}:{v}" for k, v in sorted(codes.items()) if k != 200))
    print("errors=" + ",".join(f"{k}:{v}" for k, v in sorted(errors.items())))
    print(f"answer_s={answer_s:.2f}")
    if held_rss is not None:
        print(f"held_rss_kib={held_rss}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--admin", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--go-file", required=True)
    p.add_argument("--conns", type=int, default=10000)
    p.add_argument("--connect-batch", type=int, default=500)
    p.add_argument("--timeout", type=float, default=90.0, help="per-request bound, s")
    p.add_argument("--gateway-pid", type=int, help="report the gateway's RSS while the requests are held")
    asyncio.run(main(p.parse_args()))
