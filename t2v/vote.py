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

Blind: the browser never sees an arm name, a pair key or which side holds which arm. A pair is
handed out as a random ticket that only the server can resolve (server-side state, so no token
can be forged or decoded), and videos are served by random ids drawn per server start, not by
their place in the index (which follows the arms' order).

The server is Flask (Werkzeug), bound to 127.0.0.1 unless told otherwise. It serves its page and
the sample files of CMP it indexed at start, by those ids: no request path is ever joined to a
file system path, so `..`, encoded or absolute paths and symlinks out of CMP reach nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import threading
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from curate.errors import UserError

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
    return files, [Pair(f"{prompt}|{seed}|{run}|{a}|{b}", prompt, a, b, arms[a], arms[b])
                   for (prompt, seed, run), arms in sorted(by_unit.items()) for a, b in combinations(sorted(arms), 2)]


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


class VotesError(UserError, ValueError):
    """A votes file that cannot be read as votes (named with its line)."""


def read_votes(path: Path, strict: bool = False) -> list[dict]:
    """The vote records of a votes.jsonl. A last line without its newline was cut by a crash
    mid-write (never acknowledged) and is skipped; any other line that is not a JSON object of a
    vote is skipped with a warning naming file and line, or, `strict`, refused with that name."""
    import logging

    if not path.is_file():
        return []
    out = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise VotesError(f"{path}: not UTF-8 text (byte {e.start})") from None
    lines = text.splitlines()
    cut = len(lines) if lines and not text.endswith("\n") else 0
    for k, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            v = json.loads(line)
        except ValueError:
            v = None
        if not (isinstance(v, dict) and isinstance(v.get("a"), str) and isinstance(v.get("b"), str)
                and isinstance(v.get("winner"), str)):  # fmt: skip
            if k == cut:
                logging.getLogger("curate").warning("%s line %d: cut off (a write that never finished), skipped", path, k)
                continue
            if strict:
                raise VotesError(f"{path} line {k}: not a vote (a JSON object with a, b and winner): {line[:60]!r}")
            logging.getLogger("curate").warning("%s line %d: not a vote, skipped: %r", path, k, line[:60])
            continue
        out.append(v)
    return out


MAX_TICKETS = 10000  # pairs handed out and not voted on yet, per server (oldest forgotten first)


def make_app(cmp: str | Path, seed: int | None = None):
    import secrets
    from collections import OrderedDict

    from flask import Flask, abort, jsonify, request, send_file

    cmp = Path(cmp)
    files, pairs = index(cmp)
    votes_path = cmp / VOTES_FILE
    counts = {p.key: 0 for p in pairs}
    for v in read_votes(votes_path):
        if v.get("pair") in counts and v.get("winner") != "skip":
            counts[v["pair"]] += 1
    lock = threading.Lock()
    rng = random.Random(seed)
    # Opaque (not the index order, which is the arms' order) and never all digits: a bare hex id
    # is all digits about once in 2,000, and would read as the old index numbers.
    video_ids = ["v" + secrets.token_hex(8) for _ in files]
    by_video = {vid: n for n, vid in enumerate(video_ids)}
    tickets: OrderedDict[str, tuple[Pair, str, str]] = OrderedDict()  # ticket -> (pair, left arm, right arm)
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
            ticket = secrets.token_urlsafe(18)
            tickets[ticket] = (p, left, right)
            while len(tickets) > MAX_TICKETS:
                tickets.popitem(last=False)
            total = sum(counts.values())
        return jsonify({"ticket": ticket, "prompt": p.prompt, "left": {"video": f"/video/{video_ids[lf]}"},
                        "right": {"video": f"/video/{video_ids[rf]}"}, "votes": total, "pairs": len(pairs),
                        "min_votes": fewest})  # fmt: skip

    @app.get("/video/<vid>")
    def video(vid: str):
        n = by_video.get(vid)
        if n is None:
            abort(404)
        return send_file(files[n], mimetype="video/mp4", conditional=True)

    @app.post("/api/vote")
    def vote():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            abort(400)
        ticket, choice, rater = body.get("ticket"), body.get("choice"), body.get("rater")
        if not isinstance(ticket, str) or choice not in ("left", "right", "tie", "skip"):
            abort(400)
        if not isinstance(rater, str) or not 0 < len(rater.strip()) <= 80:
            abort(400)
        with lock:
            shown = tickets.pop(ticket, None)  # one vote per ticket
        if shown is None:
            abort(400)
        p, left, right = shown
        winner = {"left": left, "right": right, "tie": "tie", "skip": "skip"}[choice]
        record = {"a": p.a, "b": p.b, "winner": winner, "pair": p.key, "left": left, "right": right,
                  "rater": rater.strip(), "time": time.time()}  # fmt: skip
        with lock:
            try:
                append_vote(votes_path, record)
            except OSError:
                tickets[ticket] = shown  # not on disk: the page may try again
                raise
            if winner != "skip":
                counts[p.key] += 1
        return jsonify({"ok": True, "votes": sum(counts.values())})

    return app


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
      body: JSON.stringify({ticket: cur.ticket, choice: choice, rater: rater})});
    if (r.status === 400) {  // its ticket is unknown: the server restarted since the pair was shown
      await load(); $("status").textContent = "not saved: that pair had expired (the server restarted); here is another"; return;
    }
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
