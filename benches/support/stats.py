"""Shared helpers for the benches/run Python clients (stdlib only)."""
import json
import math
import urllib.request


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def solution_status(admin_port, name, timeout=2.0):
    """The solution's entry in wakegate's admin /status, or None."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/status", timeout=timeout) as r:
        doc = json.load(r)
    for s in doc.get("solutions", []):
        if s.get("name") == name:
            return s
    return None
