#!/usr/bin/env python3
"""parts — a "part comparer" service, an example solution for wakegate.

It mirrors a part-comparison demo whose model is slow to load: by default it
sleeps --startup-delay seconds (3.0) "loading the model" before it binds its
port, which makes it a good showcase for the gateway holding requests while a
cold app wakes up.  Comparison is the Jaccard index of the two descriptions'
word-token sets.  Python 3.11 standard library only, plus webapp.py next to
this file.

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

import re
import sys

import webapp  # shared HTTP/JSON scaffolding, next to this file


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
# The service
# --------------------------------------------------------------------------

class Handler(webapp.JSONHandler):
    server_version = "parts-example/1.0"
    PAGE = PAGE
    ROUTES = {
        **webapp.JSONHandler.ROUTES,
        "/api/parts": ("GET", "parts"),
        "/compare": ("POST", "compare"),
    }

    # ---- endpoints ------------------------------------------------------

    def route_parts(self) -> None:
        self.send_json(200, {"count": len(CATALOGUE), "parts": CATALOGUE})

    def route_compare(self) -> None:
        a, b = self.read_json_fields("a", "b")
        self.send_json(200, compare(a, b))


def main(argv=None) -> int:
    return webapp.run("parts", Handler, "parts comparer example", startup_delay=3.0, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
