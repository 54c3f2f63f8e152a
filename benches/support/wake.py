#!/usr/bin/env python3
"""Wake overhead: cold requests to one wakegate solution, one at a time.

For each run: wait until the solution is cold (admin /status phase), send
one GET, and take the wall-clock time the first response byte arrives
minus the time the solution wrote to --listen-file right after it started
listening. That difference is what wakegate adds to a cold start: noticing
readiness (probe), then forwarding the held request. The solution's own
start-up (interpreter, imports) is not in it.

Prints `key=value` lines: n, failures, overhead_p50_ms, overhead_p99_ms,
overhead_max_ms, cold_p50_ms (first byte after sending, whole cold start),
and `runs=` with every overhead in ms.
"""
import argparse
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stats import percentile, solution_status  # noqa: E402


def wait_phase(admin, name, phase, limit):
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        try:
            st = solution_status(admin, name)
            last = st and st.get("phase")
            if last == phase:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    print(f"wake.py: {name} not {phase} after {limit}s (last phase {last})", file=sys.stderr)
    return False


def cold_request(port, host, timeout):
    """One GET; returns (status, t_sent_ns, t_first_byte_ns)."""
    req = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        t_sent = time.time_ns()
        s.sendall(req)
        first = s.recv(65536)
        t_fb = time.time_ns()
        data = first
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, t_sent, t_fb


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--admin", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--listen-file", required=True)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--cold-wait", type=float, default=20.0, help="longest wait for a scale-down, s")
    p.add_argument("--timeout", type=float, default=30.0, help="longest cold request, s")
    a = p.parse_args()

    overheads, colds, failures = [], [], 0
    for i in range(a.runs):
        if not wait_phase(a.admin, a.name, "cold", a.cold_wait):
            failures += a.runs - i
            break
        try:
            os.unlink(a.listen_file)
        except FileNotFoundError:
            pass
        try:
            status, t_sent, t_fb = cold_request(a.port, a.host, a.timeout)
            with open(a.listen_file) as f:
                t_listen = int(f.read().strip())
        except (OSError, ValueError) as e:
            print(f"wake.py: run {i + 1}: {e}", file=sys.stderr)
            failures += 1
            continue
        if status != 200:
            print(f"wake.py: run {i + 1}: HTTP {status}", file=sys.stderr)
            failures += 1
            continue
        overheads.append((t_fb - t_listen) / 1e6)
        colds.append((t_fb - t_sent) / 1e6)
        print(f"wake.py: run {i + 1}: overhead {overheads[-1]:.2f} ms, cold request {colds[-1]:.1f} ms", file=sys.stderr)

    print(f"n={len(overheads)}")
    print(f"failures={failures}")
    if overheads:
        print(f"overhead_p50_ms={percentile(overheads, 50):.2f}")
        print(f"overhead_p99_ms={percentile(overheads, 99):.2f}")
        print(f"overhead_max_ms={max(overheads):.2f}")
        print(f"cold_p50_ms={percentile(colds, 50):.1f}")
        print("runs=" + ",".join(f"{x:.2f}" for x in overheads))
    return 0 if overheads and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
