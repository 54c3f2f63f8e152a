#!/usr/bin/env python3
"""nlp — a tiny text-embedding service, an example solution for wakegate.

It mirrors an NLP embedding demo without any ML dependency: the "model" is a
deterministic hashed bag-of-words (plus character trigrams) projected into 64
signed buckets and L2-normalised, so the same text always gives the same
vector.  The gateway starts it as a local process on demand (scale-from-zero).
Python 3.11 standard library only, plus webapp.py next to this file.

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

import hashlib
import math
import re
import sys

import webapp  # shared HTTP/JSON scaffolding, next to this file


MODEL = "hash-bow-64"
DIM = 64
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
# The service
# --------------------------------------------------------------------------

class Handler(webapp.JSONHandler):
    server_version = "nlp-example/1.0"
    PAGE = PAGE
    ROUTES = {
        **webapp.JSONHandler.ROUTES,
        "/embed": ("POST", "embed"),
        "/similarity": ("POST", "similarity"),
    }

    # ---- endpoints ------------------------------------------------------

    def route_embed(self) -> None:
        (text,) = self.read_json_fields("text")
        vector = [round(x, 6) for x in embed(text)]
        self.send_json(200, {"model": MODEL, "dim": DIM, "vector": vector})

    def route_similarity(self) -> None:
        a, b = self.read_json_fields("a", "b")
        self.send_json(200, {"similarity": round(cosine(embed(a), embed(b)), 6)})


def main(argv=None) -> int:
    return webapp.run("nlp", Handler, "nlp text-embedding example", startup_delay=0.0, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
