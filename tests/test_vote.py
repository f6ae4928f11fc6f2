"""`curate vote` (human preference votes in the browser) and `curate rerank`."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from t2v.vote import VOTES_FILE, index, make_app, read_votes

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a moving texture", "text on screen"]


def fake_compare(d: Path, arms=("A", "B", "C")) -> Path:
    """A compare output's sample layout: arms/ARM/seed-T/samples/pP-sS.mp4 + prompts.json."""
    from curate.synth import encode

    for k, arm in enumerate(arms):
        samples = d / "arms" / arm / "seed-0" / "samples"
        samples.mkdir(parents=True)
        stats = []
        for p, prompt in enumerate(PROMPTS):
            for seed in (0, 1):
                frames = np.full((8, 64, 64, 3), 40 + 80 * k, np.uint8)
                frames[:, :, : 8 * (p + 1)] = 255
                encode(str(samples / f"p{p}-s{seed}.mp4"), frames, 8.0)
                stats.append({"prompt": prompt, "seed": seed})
        (samples / "prompts.json").write_text(json.dumps(stats))
    return d


@pytest.fixture()
def cmp(tmp_path):
    return fake_compare(tmp_path / "cmp")


def test_index_pairs_same_prompt_and_seeds_and_skips_links_out(cmp, tmp_path):
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"not yours")
    link_dir = cmp / "arms" / "D" / "seed-0" / "samples"
    link_dir.mkdir(parents=True)
    (link_dir / "p0-s0.mp4").symlink_to(outside)
    (link_dir / "prompts.json").write_text(json.dumps([{"prompt": PROMPTS[0], "seed": 0}]))
    files, pairs = index(cmp)
    assert all(f.is_relative_to(cmp.resolve()) for f in files) and outside.resolve() not in files
    assert len(files) == 12 and len(pairs) == 4 * 3  # 4 (prompt, seed) units x 3 arm pairs
    assert all(p.a < p.b for p in pairs)


def test_paths_outside_the_index_are_refused(cmp, tmp_path):
    client = make_app(cmp).test_client()
    (tmp_path / "passwd").write_text("root")
    for url in ["/video/../../etc/passwd", "/video/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/video//etc/passwd", "/video/12",
                "/video/-1", "/video/1.0", "/arms/A/seed-0/samples/p0-s0.mp4", "/votes.jsonl", "/../prompts.json",
                f"/video/{tmp_path / 'passwd'}", "/static/", "/api/"]:  # fmt: skip
        r = client.get(url)
        assert r.status_code in (400, 404, 405), (url, r.status_code)
    n = client.get("/api/next").json
    assert client.get(n["left"]["video"]).status_code == 200
    for bad in [None, {}, {"ticket": "x", "choice": "left", "rater": "r"}, {"ticket": n["ticket"] + "A", "choice": "left",
                "rater": "r"}, {"ticket": n["ticket"], "choice": "up", "rater": "r"}]:  # fmt: skip
        assert client.post("/api/vote", json=bad).status_code == 400
    assert not (cmp / VOTES_FILE).exists()


def test_fewest_votes_first_and_two_raters_at_once(cmp):
    client = make_app(cmp, seed=0).test_client()
    seen = set()
    for _ in range(12):  # 12 pairs: each is shown once before any comes back
        n = client.get("/api/next").json
        unit = (n["prompt"], *sorted((n["left"]["video"], n["right"]["video"])))
        assert unit not in seen
        seen.add(unit)
        assert client.post("/api/vote", json={"ticket": n["ticket"], "choice": "tie", "rater": "r1"}).status_code == 200

    def rater(name: str) -> None:
        c = make_app(cmp).test_client()  # a second server process would share only the file
        for _ in range(20):
            n = c.get("/api/next").json
            c.post("/api/vote", json={"ticket": n["ticket"], "choice": "left", "rater": name})

    threads = [threading.Thread(target=rater, args=(f"t{k}",)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (cmp / VOTES_FILE).read_text().splitlines()
    assert len(lines) == 12 + 40 and all(json.loads(x)["winner"] in ("A", "B", "C", "tie") for x in lines)


def _start(cmp: Path, port: int = 0) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "curate_cli.main", "vote", str(cmp), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "CI": "true"})  # fmt: skip
    for line in proc.stdout:
        m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        if m:
            return proc, m.group(1)
    raise AssertionError("the vote server did not start")


def test_vote_page_in_headless_chromium_survives_a_killed_server(cmp):
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    proc, url = _start(cmp)
    acknowledged = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu",
                                        "--autoplay-policy=no-user-gesture-required"])  # fmt: skip
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.fill("#rater", "ann")
            page.dispatch_event("#rater", "change")
            # both videos load and play
            page.wait_for_function("['left','right'].every(id => { const v = document.getElementById(id);"
                                   " return v.readyState >= 2 && v.currentTime > 0; })", timeout=20000)  # fmt: skip

            def cast(action, label: str) -> None:
                page.evaluate("document.getElementById('status').textContent = ''")
                action()  # the page says "saved" only once the server answered: the vote is on disk
                page.wait_for_function(f"document.getElementById('status').textContent.startsWith('saved: {label}')")
                acknowledged.append(label)

            cast(lambda: page.click("#b-left"), "left")
            cast(lambda: page.keyboard.press("ArrowRight"), "right")
            cast(lambda: page.keyboard.press("t"), "tie")
            page.reload()  # the rater is remembered, voting continues
            assert page.input_value("#rater") == "ann"
            page.wait_for_function("document.getElementById('prompt').textContent.length > 0")
            cast(lambda: page.keyboard.press("s"), "skip")
            os.kill(proc.pid, signal.SIGKILL)  # between votes: nothing acknowledged may be lost
            proc.wait()
            port = int(url.rsplit(":", 1)[1].strip("/"))
            proc, same = _start(cmp, port)  # the same address: the open page's pair is one the new server never issued
            assert same == url
            page.evaluate("document.getElementById('status').textContent = ''")
            page.keyboard.press("t")
            page.wait_for_function("document.getElementById('status').textContent.includes('expired')")
            cast(lambda: page.keyboard.press("ArrowLeft"), "left")  # the page carries on with a new pair
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc, url2 = _start(cmp)
            page.goto(url2)  # (another port: another origin, so the name is asked again)
            page.fill("#rater", "ann")
            page.wait_for_function("document.getElementById('prompt').textContent.length > 0")
            cast(lambda: page.click("#b-right"), "right")
            browser.close()
        assert errors == []
    finally:
        proc.kill()
        proc.wait()
    votes = read_votes(cmp / VOTES_FILE)
    assert len(votes) == len(acknowledged) == 6
    for v, choice in zip(votes, acknowledged):
        assert v["rater"] == "ann"
        want = {"left": v["left"], "right": v["right"], "tie": "tie", "skip": "skip"}[choice]
        assert v["winner"] == want and {v["left"], v["right"]} == {v["a"], v["b"]}


def test_votes_with_a_known_preference_rank_it_first(tmp_path):
    """Votes drawn with arm A preferred 70% of the time over B: the human judge ranks A first,
    its win rate interval excludes a coin flip, and rerank retrains nothing."""
    from t2v.compare import rerank

    cmp = tmp_path / "cmp"
    for arm in ("A", "B"):
        run = cmp / "arms" / arm / "seed-0"
        run.mkdir(parents=True)
        per_clip = {f"c{k}": 0.5 for k in range(20)}  # the automatic judge cannot tell them apart
        (run / "eval.json").write_text(json.dumps({"step": 10, "eval": {"pool": {"per_clip": per_clip}}}))
    (cmp / "leaderboard.json").write_text(json.dumps({"arms": ["A", "B"], "seeds": [0], "eval_sets": {"pool": "x"}}))
    rng = np.random.default_rng(3)
    with open(cmp / VOTES_FILE, "w") as fh:
        for _ in range(200):
            fh.write(json.dumps({"a": "A", "b": "B", "winner": "A" if rng.random() < 0.7 else "B"}) + "\n")
    board = rerank(cmp)
    assert board["ranking"][0] == "A"
    assert board["elo"]["human_votes"]["A"] > board["elo"]["human_votes"]["B"]
    lo, hi = board["human"]["win_rate"]["A"]["ci95"]
    assert 0.5 < lo < 0.7 < hi
    md = (cmp / "leaderboard.md").read_text()
    assert "Elo (human votes)" in md and "Human votes: 200" in md


def test_cli_rerank_and_vote_refusals(tmp_path):
    from typer.testing import CliRunner

    from curate_cli.main import app

    r = CliRunner()
    res = r.invoke(app, ["vote", str(tmp_path)])
    assert res.exit_code == 2 and "not a `curate compare` output" in res.output
    res = r.invoke(app, ["rerank", str(tmp_path)])
    assert res.exit_code == 2 and "leaderboard.json" in res.output
    cmp = fake_compare(tmp_path / "cmp")
    for arm in ("A", "B", "C"):
        (cmp / "arms" / arm / "seed-0" / "eval.json").write_text(json.dumps({"step": 1, "eval": {}}))
    (cmp / "leaderboard.json").write_text(json.dumps({"arms": ["A", "B", "C"], "seeds": [0], "eval_sets": {}}))
    (cmp / VOTES_FILE).write_text("".join(json.dumps({"a": "B", "b": "C", "winner": "C"}) + "\n" for _ in range(5)))
    res = r.invoke(app, ["rerank", str(cmp)])
    assert res.exit_code == 0 and "ranking" in res.output
    assert json.loads((cmp / "leaderboard.json").read_text())["ranking"][0] == "C"


def test_the_page_never_sees_arm_names_or_sides_and_tickets_cannot_be_forged_or_reused(cmp):
    """Round three: /api/next named the arms in `pair` and in a base64 token anyone could decode
    or forge; video numbers followed the arms' order."""
    import base64

    client = make_app(cmp, seed=1).test_client()
    seen_ids = set()
    for _ in range(12):
        n = client.get("/api/next").json
        text = json.dumps(n)
        for arm in ("A", "B", "C"):
            assert f"|{arm}" not in text and f'"{arm}"' not in text
        decoded = base64.urlsafe_b64decode(n["ticket"] + "=" * (-len(n["ticket"]) % 4))
        text = decoded.decode("utf-8", "replace").split("|")
        assert len(decoded) == 18 and not {"A", "B", "C"} & set(text)  # random bytes, not the sides
        ids = {n["left"]["video"], n["right"]["video"]}
        assert all(not v.rsplit("/", 1)[1].isdigit() for v in ids)
        seen_ids |= ids
        assert client.post("/api/vote", json={"ticket": n["ticket"], "choice": "left", "rater": "r"}).status_code == 200
        assert client.post("/api/vote", json={"ticket": n["ticket"], "choice": "left", "rater": "r"}).status_code == 400
    votes = read_votes(cmp / VOTES_FILE)
    assert len(votes) == 12 and all(v["winner"] == v["left"] for v in votes)  # the server knew the sides
    other = make_app(cmp, seed=1).test_client()  # another server: its own ids and tickets
    assert other.get(sorted(seen_ids)[0]).status_code == 404


def _board(cmp: Path, arms=("A", "B")) -> None:
    for arm in arms:
        run = cmp / "arms" / arm / "seed-0"
        run.mkdir(parents=True)
        (run / "eval.json").write_text(json.dumps({"step": 10, "eval": {"pool": {"per_clip": {"c0": 0.5}}}}))
    (cmp / "leaderboard.json").write_text(json.dumps({"arms": list(arms), "seeds": [0], "eval_sets": {"pool": "x"}}))


def test_skipped_pairs_are_not_games(tmp_path):
    """Round three: six skips gave the right-hand arm 1.00 [1.00, 1.00]."""
    from t2v.compare import rerank, vote_games

    cmp = tmp_path / "cmp"
    _board(cmp)
    lines = [{"a": "A", "b": "B", "winner": "skip"}] * 6 + [{"a": "A", "b": "B", "winner": "A"}, {"a": "A", "b": "B", "winner": "B"}]
    (cmp / VOTES_FILE).write_text("".join(json.dumps(v) + "\n" for v in lines))
    assert vote_games(cmp / VOTES_FILE) == [("A", "B", 1.0), ("A", "B", 0.0)]
    board = rerank(cmp)
    assert board["human"]["votes"] == 2
    assert board["human"]["win_rate"]["A"]["mean"] == board["human"]["win_rate"]["B"]["mean"] == 0.5
    (cmp / VOTES_FILE).write_text("".join(json.dumps({"a": "A", "b": "B", "winner": "skip"}) + "\n" for _ in range(6)))
    board = rerank(cmp)
    assert "human" not in board or board["human"]["votes"] == 0


@pytest.mark.parametrize("bad", ["[1,2]", "5", "null", '{"a": "A"}'])
def test_a_line_that_is_not_a_vote_is_one_line_naming_file_and_line(tmp_path, bad):
    from typer.testing import CliRunner

    from curate_cli.main import app

    cmp = fake_compare(tmp_path / "cmp", arms=("A", "B"))
    for arm in ("A", "B"):
        (cmp / "arms" / arm / "seed-0" / "eval.json").write_text(json.dumps({"step": 1, "eval": {}}))
    (cmp / "leaderboard.json").write_text(json.dumps({"arms": ["A", "B"], "seeds": [0], "eval_sets": {}}))
    good = json.dumps({"a": "A", "b": "B", "winner": "A"})
    (cmp / VOTES_FILE).write_text(f"{good}\n{bad}\n{good}\n")
    res = CliRunner().invoke(app, ["rerank", str(cmp)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "line 2" in res.output and VOTES_FILE in res.output
    client = make_app(cmp).test_client()  # the vote server starts, skipping the line
    assert client.get("/api/next").status_code == 200
    (cmp / VOTES_FILE).write_text(f"{good}\n{good}\n" + good[:-7])  # cut by a crash mid-write
    res = CliRunner().invoke(app, ["rerank", str(cmp)])
    assert res.exit_code == 0, res.output
