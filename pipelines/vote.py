"""`curate vote CMP`: human preference votes on a `curate compare` output, in the browser (SVD's
Stage II judge).

The page shows one prompt and two sample videos from two arms (same prompt, same sampling seed,
same training seed), arm names hidden and sides random; left / right / tie / skip by click or key
(arrow left, arrow right, t, s). The next pair is the one with the fewest votes so far (ties
broken at random), so votes spread over every pair before any pair gets a second one.

Votes append to CMP/votes.jsonl, one JSON line each (rater, time, pair, the arms as shown, the
winning arm or "tie"), under an exclusive lock and fsync'd before the browser is told it counted:
a vote acknowledged is on disk, whatever happens to the server after; two raters append whole
lines. Skips are recorded too (`"winner": "skip"`) but are no game.

The server is Flask (Werkzeug), bound to 127.0.0.1 unless told otherwise. It serves its page and
the sample files of CMP it indexed at start, by opaque numbers: no request path is ever joined to
a file system path, so `..`, encoded or absolute paths and symlinks out of CMP reach nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

VOTES_FILE = "votes.jsonl"


@dataclass(frozen=True)
class Pair:
    key: str  # "<prompt>|<sample seed>|<train seed>|<arm a>|<arm b>" (a < b)
    prompt: str
    a: str
    b: str
    file_a: int  # index into the sample files
    file_b: int


def index(cmp: Path) -> tuple[list[Path], list[Pair]]:
    """The sample videos of every arm (CMP/arms/ARM/seed-T/samples/pP-sS.mp4, prompts.json), and
    every pair of arms that sampled the same prompt with the same seeds. Only regular files inside
    CMP (symlinks resolved and checked) are indexed."""
    root = cmp.resolve()
    files: list[Path] = []
    by_unit: dict[tuple[str, int, str], dict[str, int]] = {}
    arms_dir = cmp / "arms"
    if not arms_dir.is_dir():
        return files, []
    for arm_dir in sorted(p for p in arms_dir.iterdir() if p.is_dir()):
        for run in sorted(p for p in arm_dir.iterdir() if p.is_dir() and p.name.startswith("seed-")):
            samples = run / "samples"
            try:
                prompts = json.loads((samples / "prompts.json").read_text())
            except (OSError, ValueError):
                continue
            names = {}
            for s in prompts:
                names.setdefault(s["prompt"], len(names))
            for s in prompts:
                f = samples / f"p{names[s['prompt']]}-s{s['seed']}.mp4"
                real = f.resolve()
                if not (real.is_file() and real.is_relative_to(root)):
                    continue
                files.append(real)
                by_unit.setdefault((s["prompt"], int(s["seed"]), run.name), {})[arm_dir.name] = len(files) - 1
    pairs = []
    for (prompt, seed, run), arms in sorted(by_unit.items()):
        names = sorted(arms)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                pairs.append(Pair(f"{prompt}|{seed}|{run}|{a}|{b}", prompt, a, b, arms[a], arms[b]))
    return files, pairs


def append_vote(path: Path, record: dict) -> None:
    """One whole line, under an exclusive lock, on disk before returning."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)  # (closing releases the lock)


def read_votes(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash mid-write never counted (it was not acknowledged)
    return out


def make_app(cmp: str | Path, seed: int | None = None):
    from flask import Flask, abort, jsonify, request, send_file

    cmp = Path(cmp)
    files, pairs = index(cmp)
    votes_path = cmp / VOTES_FILE
    by_key = {p.key: p for p in pairs}
    counts = {p.key: 0 for p in pairs}
    for v in read_votes(votes_path):
        if v.get("pair") in counts and v.get("winner") != "skip":
            counts[v["pair"]] += 1
    lock = threading.Lock()
    rng = random.Random(seed)
    app = Flask(__name__)

    @app.get("/")
    def page():
        return PAGE, 200, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}

    @app.get("/api/next")
    def next_pair():
        if not pairs:
            return jsonify({"done": True, "reason": "no pairs: CMP has no sample videos of two arms"})
        with lock:
            fewest = min(counts.values())
            p = rng.choice([q for q in pairs if counts[q.key] == fewest])
            flip = rng.random() < 0.5
        left, right = (p.b, p.a) if flip else (p.a, p.b)
        lf, rf = (p.file_b, p.file_a) if flip else (p.file_a, p.file_b)
        total = sum(counts.values())
        return jsonify({"pair": p.key, "prompt": p.prompt, "left": {"side": "left", "video": f"/video/{lf}"},
                        "right": {"side": "right", "video": f"/video/{rf}"}, "token": _token(p.key, left, right),
                        "votes": total, "pairs": len(pairs), "min_votes": fewest})  # fmt: skip

    @app.get("/video/<int:n>")
    def video(n: int):
        if not 0 <= n < len(files):
            abort(404)
        return send_file(files[n], mimetype="video/mp4", conditional=True)

    @app.post("/api/vote")
    def vote():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            abort(400)
        key, choice, rater, token = body.get("pair"), body.get("choice"), body.get("rater"), body.get("token")
        if key not in by_key or choice not in ("left", "right", "tie", "skip") or not isinstance(token, str):
            abort(400)
        if not isinstance(rater, str) or not 0 < len(rater.strip()) <= 80:
            abort(400)
        shown = _shown(token, by_key[key])
        if shown is None:
            abort(400)
        left, right = shown
        winner = {"left": left, "right": right, "tie": "tie", "skip": "skip"}[choice]
        p = by_key[key]
        record = {"a": p.a, "b": p.b, "winner": winner, "pair": key, "left": left, "right": right,
                  "rater": rater.strip(), "time": time.time()}  # fmt: skip
        with lock:
            append_vote(votes_path, record)
            if winner != "skip":
                counts[key] += 1
        return jsonify({"ok": True, "votes": sum(counts.values())})

    return app


def _token(key: str, left: str, right: str) -> str:
    """The sides as shown, for the vote to name (the page never learns the arm names)."""
    import base64
    import hashlib

    digest = hashlib.sha256(f"{key}|{left}|{right}".encode()).hexdigest()[:16]
    return base64.urlsafe_b64encode(f"{left}|{right}|{digest}".encode()).decode()


def _shown(token: str, pair: Pair) -> tuple[str, str] | None:
    import base64
    import binascii

    try:
        left, right, _ = base64.urlsafe_b64decode(token.encode()).decode().split("|")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if {left, right} != {pair.a, pair.b} or _token(pair.key, left, right) != token:
        return None
    return left, right


def serve(cmp: str | Path, host: str = "127.0.0.1", port: int = 8765) -> None:
    from werkzeug.serving import make_server

    app = make_app(cmp)
    server = make_server(host, port, app, threaded=True)
    print(f"voting on {cmp}: http://{host}:{server.server_port}/  (Ctrl-C to stop)", flush=True)
    server.serve_forever()


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>curate vote</title>
<style>body{font-family:sans-serif;margin:20px;max-width:1100px}#videos{display:flex;gap:20px}
figure{margin:0;text-align:center}video{width:480px;height:480px;background:#111;image-rendering:pixelated}
button{font-size:16px;margin:6px;padding:6px 14px}#prompt{font-size:20px;margin:10px 0}</style></head><body>
<h1>Which video fits the prompt better?</h1>
<label>Your name: <input id="rater" maxlength="80"></label> <span id="progress"></span>
<div id="prompt"></div>
<div id="videos"><figure><video id="left" autoplay loop muted playsinline></video><figcaption>left (&larr;)</figcaption></figure>
<figure><video id="right" autoplay loop muted playsinline></video><figcaption>right (&rarr;)</figcaption></figure></div>
<div><button id="b-left">Left is better</button><button id="b-tie">Tie (t)</button>
<button id="b-right">Right is better</button><button id="b-skip">Skip (s)</button></div>
<p id="status"></p>
<script>
let cur = null, busy = false;
const $ = (id) => document.getElementById(id);
$("rater").value = localStorage.getItem("curate-rater") || "";
$("rater").addEventListener("change", () => localStorage.setItem("curate-rater", $("rater").value.trim()));
async function load() {
  const r = await fetch("/api/next", {cache: "no-store"}); cur = await r.json();
  if (cur.done) { $("prompt").textContent = cur.reason; return; }
  $("prompt").textContent = cur.prompt;
  $("left").src = cur.left.video; $("right").src = cur.right.video;
  $("progress").textContent = cur.votes + " votes, " + cur.pairs + " pairs (each has " + cur.min_votes + "+)";
}
async function vote(choice) {
  const rater = $("rater").value.trim();
  if (!rater) { $("status").textContent = "enter your name first"; $("rater").focus(); return; }
  if (!cur || cur.done || busy) return;
  busy = true; localStorage.setItem("curate-rater", rater);
  let saved = null;
  try {
    const r = await fetch("/api/vote", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({pair: cur.pair, token: cur.token, choice: choice, rater: rater})});
    if (!r.ok) { $("status").textContent = "the vote was refused (" + r.status + ")"; return; }
    const j = await r.json(); saved = "saved: " + choice + " (" + j.votes + " votes)";
    // "saved" only once the next pair is up: a key pressed before that would be a vote on nothing
    await load(); $("status").textContent = saved;
  } catch (e) {
    $("status").textContent = saved ? saved + "; the next pair did not load (reload the page)" : "not saved: the server did not answer";
  } finally { busy = false; }
}
$("b-left").onclick = () => vote("left"); $("b-right").onclick = () => vote("right");
$("b-tie").onclick = () => vote("tie"); $("b-skip").onclick = () => vote("skip");
document.addEventListener("keydown", (e) => {
  if (e.target === $("rater")) return;
  const k = {ArrowLeft: "left", ArrowRight: "right", t: "tie", s: "skip"}[e.key];
  if (k) { e.preventDefault(); vote(k); }
});
load();
</script></body></html>"""
