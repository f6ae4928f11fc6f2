"""`curate browse`: the live threshold page. Its funnel must be select's, its saved RULES must
give select the page's count, its margins must be the clips nearest each threshold, and it must
serve nothing but OUT's clips, by row."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate import schema
from curate_cli.main import app
from datatools.browse import Browser, columns_of, slots_of
from datatools.select import DedupRule, Filter, Rules, funnel, select
from tests.browse_out import scores, write_out

runner = CliRunner()
DATA = Path(__file__).parents[1] / "curate" / "data"
RULES_TEXT = """filters:
  - where: flow_mean >= 1.0
  - drop_top: ocr_area_ratio=10%
  - where: camera_motion != 'shaky'
  - where: aesthetic_score > 4
    nulls: drop
"""


def body(rules: Rules, **kw) -> dict:
    return {"filters": [f.model_dump(mode="json", exclude_none=True) for f in rules.filters], **kw}


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return write_out(tmp_path_factory.mktemp("browse") / "out", scores(2000))


RULE_SETS = [
    Rules(),
    Rules(filters=[Filter(where="flow_mean >= 1.0"), Filter(drop_top="ocr_area_ratio=10%"),
                   Filter(where="camera_motion != 'shaky'"), Filter(where="aesthetic_score > 4", nulls="drop")]),
    Rules(filters=[Filter(drop_bottom="aesthetic_score=30%", nulls="keep"), Filter(where="duration_s <= 5.5")]),
    Rules(filters=[Filter(where="flow_mean >= 99")]),  # keeps nothing
]  # fmt: skip


@pytest.mark.parametrize("k", range(len(RULE_SETS)))
def test_the_page_funnel_is_selects(out, k):
    rules = RULE_SETS[k]
    b = Browser(str(out), Rules(), out.parent / "r.yaml")
    got = b.view(body(rules))
    table = b.table
    _, want = select(table, rules)
    assert got["funnel"]["output"] == want["output"] and got["funnel"]["input"] == want["input"]
    for g, w in zip(got["funnel"]["filters"], want["filters"], strict=True):
        assert {k: g[k] for k in w} == w
    # the kept histogram of every column counts exactly the kept rows with a value
    for name, col in b.columns.items():
        present = (col.bin_of if col.kind == "number" else col.label_of) >= 0
        assert sum(got["hist"][name]) == int((present & funnel(table, rules).keep).sum())


def test_margins_are_the_clips_nearest_the_threshold_among_what_the_other_rules_keep(out):
    rules = RULE_SETS[1]
    b = Browser(str(out), Rules(), out.parent / "r.yaml")
    f = funnel(b.table, rules)
    flow = b.table.column("flow_mean").to_numpy(zero_copy_only=False).astype(np.float64)
    for focus in (0, 1):
        m = b.view(body(rules, focus=focus))["margin"]
        others = np.logical_and.reduce([f.masks[j] for j in range(len(f.masks)) if j != focus])
        col = b.columns[m["column"]].values
        thr = f.steps[focus]["threshold"]
        for side, cand in (("kept", others & f.masks[focus]), ("removed", others & ~f.masks[focus])):
            rows = [c["row"] for c in m[side]]
            assert m[side + "_total"] == int(cand.sum()) and len(rows) == min(8, int(cand.sum()))
            assert all(cand[r] for r in rows)
            dist = np.abs(col[cand] - thr)
            assert np.isclose(np.max(np.abs(col[rows] - thr)), np.sort(dist)[len(rows) - 1])
        if focus == 0:  # flow_mean >= 1: just kept sit at or above 1, just removed below, both near it
            assert all(flow[c["row"]] >= 1.0 for c in m["kept"]) and all(flow[c["row"]] < 1.0 for c in m["removed"])


def test_rules_load_into_controls_in_their_order(out):
    b = Browser(str(out), Rules(), out.parent / "r.yaml")
    rules = Rules(filters=[Filter(where="flow_mean >= 1.5", name="moving"), Filter(drop_top="ocr_area_ratio=10%"),
                           Filter(where="camera_motion != shaky"), Filter(where="flow_mean > 0.2"),
                           Filter(where="flow_mean >= 2"), Filter(where="aesthetic_score <= 7", nulls="keep"),
                           Filter(where="nosuch >= 1", nulls="keep")])  # fmt: skip
    slots = slots_of(rules, b.columns)
    assert [s["key"] for s in slots] == ["flow_mean:lo", "ocr_area_ratio:hi", "camera_motion:ne:shaky", "other:3",
                                         "other:4", "aesthetic_score:hi", "other:6"]  # fmt: skip
    assert slots[0]["value"] == 1.5 and slots[0]["mode"] == "value" and slots[0]["name"] == "moving"
    assert slots[1]["mode"] == "percentile" and slots[1]["value"] == 10
    assert slots[5]["nulls"] == "keep" and slots[3]["filter"] == {"where": "flow_mean > 0.2", "nulls": "refuse"}
    kinds = {c.name: c.kind for c in columns_of(b.table).values()}
    assert list(kinds.items()) == [("flow_mean", "number"), ("camera_motion", "label"), ("ocr_area_ratio", "number"),
                                   ("aesthetic_score", "number"), ("duration_s", "number")]  # fmt: skip


def test_clips_sort_by_any_column_nulls_last_and_pages_cover_every_clip_once(out):
    b = Browser(str(out), Rules(), out.parent / "r.yaml")
    rules = RULE_SETS[2]
    kept = funnel(b.table, rules).keep
    seen = []
    for offset in range(0, 2000, 96):
        page = b.view(body(rules, sort="aesthetic_score", desc=False, which="removed", offset=offset, limit=96))["clips"]
        assert page["total"] == int((~kept).sum())
        seen += [c["row"] for c in page["rows"]]
    assert sorted(seen) == sorted(np.flatnonzero(~kept).tolist())
    values = [b.columns["aesthetic_score"].values[r] for r in seen]
    present = [v for v in values if not np.isnan(v)]
    assert present == sorted(present) and all(np.isnan(v) for v in values[len(present):])
    assert all(not c["kept"] for c in b.view(body(rules, which="removed"))["clips"]["rows"])


def test_booleans_are_a_control_and_a_select_filter(tmp_path):
    t = scores(200)
    t = t.append_column("vlm_slideshow", pa.array([i % 3 == 0 for i in range(200)]))
    # (a generated OUT's shards carry the schema's columns only: this boolean comes from a parquet)
    pq.write_table(t, tmp_path / "t.parquet")
    b = Browser(str(tmp_path / "t.parquet"), Rules(), tmp_path / "r.yaml")
    assert b.columns["vlm_slideshow"].kind == "bool"
    rules = Rules(filters=[Filter(where="vlm_slideshow == false")])
    assert b.view(body(rules))["funnel"]["output"]["clips"] == 200 - 67 == select(t, rules)[1]["output"]["clips"]
    assert slots_of(rules, b.columns)[0] == {"key": "vlm_slideshow:eq", "slot": "eq", "column": "vlm_slideshow",
                                             "value": False, "nulls": "refuse", "name": None,
                                             "filter": {"where": "vlm_slideshow == false", "nulls": "refuse"}}  # fmt: skip
    with pytest.raises(Exception, match="not true or false"):
        select(t, Rules(filters=[Filter(where="vlm_slideshow == 1")]))


def _media_out(tmp_path, n: int = 40) -> tuple[Path, pa.Table]:
    """An OUT whose row 0 has a moving preview of real footage, row 1 a clip file in OUT/clips,
    row 2 a clip file that is a symlink out of OUT, row 3 a clip_uri outside any OUT; rows 0 and
    1 are the longest."""
    import cv2

    from curate.deferred import preview

    cap = cv2.VideoCapture(str(DATA / "carphone.mp4"))
    frames = []
    while len(frames) < 8:
        ok, bgr = cap.read()
        assert ok
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    t = scores(n)
    durations = t.column(schema.DURATION_S).to_numpy().copy()
    durations[:2] = (30.0, 29.0)
    t = t.set_column(t.column_names.index(schema.DURATION_S), schema.DURATION_S, pa.array(durations))
    ids = t.column(schema.CLIP_ID).to_pylist()
    vids = t.column(schema.VIDEO_ID).to_pylist()
    out = tmp_path / "out"
    uris = [None] * n
    for r in (1, 2):
        (out / "clips" / vids[r]).mkdir(parents=True, exist_ok=True)
        uris[r] = str(out / "clips" / vids[r] / f"{ids[r]}.mp4")
    shutil.copy(DATA / "carphone.mp4", uris[1])
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"not yours")
    os.symlink(secret, uris[2])
    uris[3] = str(secret)
    t = t.append_column(schema.PREVIEW, pa.array([preview(frames, 2.0)] + [None] * (n - 1), pa.binary()))
    t = t.append_column(schema.CLIP_URI, pa.array(uris, pa.string()))
    return write_out(out, t, max_rows=10), t


def test_media_only_by_row_and_only_inside_out(tmp_path):
    from datatools.browse import make_app

    out, t = _media_out(tmp_path)
    c = make_app(Browser(str(out), Rules(), tmp_path / "r.yaml")).test_client()
    row = {cid: i for i, cid in enumerate(Browser(str(out), Rules(), tmp_path / "r.yaml").clip_ids)}
    ids = t.column(schema.CLIP_ID).to_pylist()
    r = c.get(f"/media/{row[ids[0]]}")
    assert r.status_code == 200 and r.mimetype == "image/webp" and r.data[8:12] == b"WEBP"
    r = c.get(f"/media/{row[ids[1]]}")
    assert r.status_code == 200 and r.mimetype == "video/mp4" and r.data == (DATA / "carphone.mp4").read_bytes()
    for bad in (f"/media/{row[ids[2]]}", f"/media/{row[ids[3]]}", f"/media/{row[ids[4]]}", "/media/-1", "/media/40",
                "/media/99999999999999999999", "/media/..%2f..%2fsecret.mp4", "/media/../../secret.mp4",
                f"/media/{tmp_path}/secret.mp4", "/media/%2e%2e", "/media/1.0", "/secret.mp4", "/clips/x"):  # fmt: skip
        resp = c.get(bad)
        assert resp.status_code == 404 and b"not yours" not in resp.data, bad
    # the page cannot point the server at a path: a dedup rule names no file, only how to keep
    r = c.post("/api/view", json={"filters": [], "dedup": {"groups": str(tmp_path), "keep": "longest"}})
    assert r.status_code == 400 and "--dedup" in r.get_json()["error"]
    r = c.post("/api/view", json={"filters": [{"where": "flow_mean >= 1", "bogus": 1}]})
    assert r.status_code == 400 and "bogus" in r.get_json()["error"]
    r = c.post("/api/view", json={"filters": [{"where": "aesthetic_score >= 1"}]})
    assert r.status_code == 400 and "2 null values" in r.get_json()["error"]
    assert c.post("/api/view", data="[]", content_type="application/json").status_code == 400


def test_dedup_keeps_the_clip_select_keeps_and_shows_it_first(tmp_path, out):
    b0 = Browser(str(out), Rules(), tmp_path / "r.yaml")
    ids = b0.clip_ids
    groups = [f"g{i // 4}" if i < 400 else None for i in range(len(ids))]  # 100 groups of 4
    d = tmp_path / "dups"
    d.mkdir()
    pq.write_table(pa.table({schema.CLIP_ID: ids, "dup_group": groups, "group_size": [4 if g else 1 for g in groups],
                             "dup_distance": [0.0] * len(ids)}), d / "dedup.parquet")  # fmt: skip
    b = Browser(str(out), Rules(), tmp_path / "r.yaml", dedup=str(d))
    rules = Rules(filters=[Filter(where="flow_mean >= 1.0")], dedup=DedupRule(groups=str(d), keep="flow_mean"))
    got = b.view(body(rules, dedup={"keep": "flow_mean"}))
    _, want = select(b.table, rules)
    assert got["funnel"]["output"] == want["output"] and got["funnel"]["filters"][-1]["removed_clips"] == want["filters"][-1]["removed_clips"]
    flow = b.columns["flow_mean"].values
    assert got["dups"]["dropped"] == want["filters"][-1]["removed_clips"] > 0
    for g in got["dups"]["groups"]:
        kept, dropped = g["kept"]["row"], [x["row"] for x in g["dropped"]]
        assert g["kept"]["kept"] and not any(x["kept"] for x in g["dropped"])
        assert {groups[r] for r in dropped} == {groups[kept]} and all(flow[kept] >= flow[r] for r in dropped)


def _serve(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "curate_cli.main", "browse", *args, "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "CI": "true"})  # fmt: skip
    for line in proc.stdout:
        m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        if m:
            return proc, m.group(1)
    raise AssertionError("the browse server did not start")


def _chromium():
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    return pytest.importorskip("playwright.sync_api").sync_playwright


READY = "window.changes > 0 && window.rendered === window.changes"


def _page_rules(page) -> Rules:
    cur = page.evaluate("current()")
    return Rules(filters=[Filter.model_validate(f) for f in cur["filters"]])


def _page_funnel(page) -> list[list[str]]:
    return page.eval_on_selector_all("#funnel tr.step", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")


def test_browse_page_in_headless_chromium_saves_what_select_reproduces(tmp_path):
    sync_playwright = _chromium()
    out, table = _media_out(tmp_path, 600)
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES_TEXT)
    saved = tmp_path / "picked.yaml"
    rows = Browser(str(out), Rules(), saved).table  # as the server reads OUT (row numbers included)
    proc, url = _serve(str(out), "--rules", str(rules_file), "--save", str(saved))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu",
                                        "--autoplay-policy=no-user-gesture-required"])  # fmt: skip
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_function(READY)

            def check() -> int:
                """The page's count and funnel are select's on the rules the page would save."""
                page.wait_for_function(READY)
                assert page.text_content("#status") == ""
                _, want = select(rows, _page_rules(page))
                kept = int(page.text_content("#kept-clips"))
                assert kept == want["output"]["clips"] == int(page.text_content("#funnel-out"))
                assert [[int(x) for x in r[1:4]] for r in _page_funnel(page)] == [
                    [s["alone_removed_clips"], s["removed_clips"], s["kept_clips"]] for s in want["filters"]]
                return kept

            # the RULES file is in the controls, and the page's first count is select's on it
            assert _page_rules(page) == Rules.model_validate(__import__("yaml").safe_load(RULES_TEXT))
            assert page.input_value('.control[data-col="flow_mean"] .lo-num') == "1"
            assert page.input_value('.control[data-col="ocr_area_ratio"] .mode') == "percentile"
            assert page.input_value('.control[data-col="ocr_area_ratio"] .hi-num') == "10"
            assert not page.is_checked('.control[data-col="camera_motion"] input.lab[data-label="shaky"]')
            first = check()
            # move the flow slider as a user does (keyboard on the range), then other controls
            page.focus('.control[data-col="flow_mean"] input.lo')
            for _ in range(25):
                page.keyboard.press("ArrowRight")
            moved = check()
            assert moved < first and float(page.input_value('.control[data-col="flow_mean"] .lo-num')) > 1.0
            page.uncheck('.control[data-col="camera_motion"] input.lab[data-label="static"]')
            check()
            page.select_option('.control[data-col="ocr_area_ratio"] .mode', "value")  # same cut, as a value
            assert check() == int(page.text_content("#kept-clips"))
            assert "ocr_area_ratio <=" in json.dumps(page.evaluate("current()")["filters"])
            page.fill('.control[data-col="aesthetic_score"] .hi-num', "6.5")
            page.dispatch_event('.control[data-col="aesthetic_score"] .hi-num', "change")
            check()
            page.select_option('.control[data-col="aesthetic_score"] .nulls', "keep")
            check()
            page.uncheck('#others input[type=checkbox]')  # switch off the rule no control holds
            last = check()
            # the margin of the flow bound: just kept at or above it, just removed below
            page.click("#funnel tr.step >> nth=0")
            page.wait_for_function(READY)
            thr = float(page.input_value('.control[data-col="flow_mean"] .lo-num'))
            flow = rows.column("flow_mean").to_numpy(zero_copy_only=False)
            kept_rows = page.eval_on_selector_all("#margin-kept .card", "cs => cs.map(c => +c.dataset.row)")
            removed_rows = page.eval_on_selector_all("#margin-removed .card", "cs => cs.map(c => +c.dataset.row)")
            assert kept_rows and removed_rows
            assert all(flow[r] >= thr for r in kept_rows) and all(flow[r] < thr for r in removed_rows)
            # every clip, longest first: the preview (real footage) and the clip file both play
            page.select_option("#which", "all")
            page.wait_for_function(READY)
            page.wait_for_function("(() => { const i = document.querySelector('#grid .card img');"
                                   " return i && i.complete && i.naturalWidth > 0; })()", timeout=20000)  # fmt: skip
            page.wait_for_function("(() => { const v = document.querySelector('#grid .card video');"
                                   " return v && v.readyState >= 2; })()", timeout=20000)  # fmt: skip
            shown = page.eval_on_selector_all("#grid .card", "cs => cs.map(c => +c.dataset.row)")
            assert len(shown) == 24 and [rows.column(schema.DURATION_S)[r].as_py() for r in shown[:2]] == [30.0, 29.0]
            page.click("#save")
            page.wait_for_selector("#saved-clips")
            assert int(page.text_content("#saved-clips")) == last
            browser.close()
        assert errors == []
    finally:
        proc.kill()
        proc.wait()
    # `curate select` on the saved file: the page's count and funnel, exactly
    r = runner.invoke(app, ["select", str(saved), "-s", str(out), "-o", str(tmp_path / "sub")])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "sub" / "funnel.json").read_text())
    assert got["output"]["clips"] == last and pq.read_table(tmp_path / "sub" / "subset.parquet").num_rows == last


def test_a_100000_row_out_answers_the_page(tmp_path):
    """Server-side aggregation: a control change on 100,000 rows gives select's count (bench/browse.py
    times it)."""
    sync_playwright = _chromium()
    out = write_out(tmp_path / "out", scores(100_000, seed=3))
    rows = Browser(str(out), Rules(), tmp_path / "r.yaml").table
    proc, url = _serve(str(out), "--save", str(tmp_path / "r.yaml"))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_function(READY)
            assert int(page.text_content("#kept-clips")) == 100_000
            page.select_option('.control[data-col="aesthetic_score"] .mode', "percentile")
            page.fill('.control[data-col="aesthetic_score"] .lo-num', "25")
            page.dispatch_event('.control[data-col="aesthetic_score"] .lo-num', "change")
            page.fill('.control[data-col="flow_mean"] .lo-num', "0.8")
            page.dispatch_event('.control[data-col="flow_mean"] .lo-num', "change")
            page.wait_for_function(READY)
            rules = _page_rules(page)
            assert [f.model_dump(exclude_none=True) for f in rules.filters] == [
                {"drop_bottom": "aesthetic_score=25%", "nulls": "drop"}, {"where": "flow_mean >= 0.8", "nulls": "refuse"}]
            assert int(page.text_content("#kept-clips")) == select(rows, rules)[1]["output"]["clips"]
            browser.close()
    finally:
        proc.kill()
        proc.wait()


def test_cli_mistakes_are_one_line(tmp_path, out):
    bad = tmp_path / "bad.yaml"
    bad.write_text("filters:\n  - wher: flow_mean >= 1\n")
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "other.parquet")
    for args, says in ((["browse", str(tmp_path / "nowhere")], "no such file"),
                       (["browse", str(out), "--rules", str(bad)], "wher"),
                       (["browse", str(out), "--save", str(out / "rules.yaml")], "inside the curate output"),
                       (["browse", str(out), "--save", str(tmp_path)], "is a directory"),
                       (["browse", str(out), "--dedup", str(tmp_path / "nodups")], "curate dedup"),
                       (["browse", str(tmp_path / "other.parquet")], "not curate's clip rows")):  # fmt: skip
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, (args, r.output)
