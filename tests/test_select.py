"""select / export / report / notebook, against hand-computed expectations."""

import json
import os
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate import schema
from curate_cli.main import app
from curate.dataset import CLIP_BYTES, EXPORT, MISSING, OUT, PARQUET, SUBSET, DatasetError, iter_samples, read_rows, what_is
from datatools.export import export
from datatools.select import CaptionMix, Filter, Rules, SelectError, choose_captions, select
from tests.conftest import DATA

runner = CliRunner()


def fixed_table() -> pa.Table:
    """Ten clips: flow 0.0..0.9, ocr with two nulls, durations 1..10 s, captions partly missing."""
    n = 10
    return pa.table({
        schema.CLIP_ID: [f"c{i}" for i in range(n)],
        schema.DURATION_S: [float(i + 1) for i in range(n)],
        schema.FLOW_MEAN: [i / 10 for i in range(n)],
        schema.OCR_AREA_RATIO: [0.0, 0.01, None, 0.05, 0.0, 0.3, None, 0.0, 0.02, 0.1],
        schema.WIDTH: [640, 1280, 640, 1920, 640, 640, 1280, 640, 640, 320],
        schema.CAPTION_COCA: [f"coca {i}" for i in range(n)],
        schema.CAPTION_VBLIP: [f"vblip {i}" if i % 2 else None for i in range(n)],
        schema.CAPTION_LLM: [None] * n,
    })  # fmt: skip


def ids(t: pa.Table) -> list[str]:
    return t.column(schema.CLIP_ID).to_pylist()


def test_absolute_and_percentile_filters_hand_computed():
    t = fixed_table()
    sub, funnel = select(t, Rules(filters=[Filter(where="flow_mean >= 0.3"), Filter(where="width < 1500")]))
    assert ids(sub) == ["c4", "c5", "c6", "c7", "c8", "c9"]  # c3 is 1920 wide
    # drop the bottom 25% by flow: 25th percentile of 0..0.9 is 0.225 -> keep 0.3 and up
    sub, funnel = select(t, Rules(filters=[Filter(drop_bottom="flow_mean=25%")]))
    assert ids(sub) == [f"c{i}" for i in range(3, 10)]
    assert funnel["filters"][0]["threshold"] == pytest.approx(0.225)
    # drop the top 20% by duration: 80th percentile of 1..10 is 8.2 -> keep durations <= 8.2
    sub, _ = select(t, Rules(filters=[Filter(drop_top="duration_s=20%")]))
    assert ids(sub) == [f"c{i}" for i in range(8)]


def test_percentiles_are_stable_under_row_order():
    t = fixed_table()
    rules = Rules(filters=[Filter(drop_bottom="flow_mean=50%"), Filter(drop_top="ocr_area_ratio=30%", nulls="drop")])
    expected = set(ids(select(t, rules)[0]))
    for seed in range(5):
        order = list(range(t.num_rows))
        random.Random(seed).shuffle(order)
        assert set(ids(select(t.take(order), rules)[0])) == expected


def test_nulls_are_refused_by_default_then_dropped_or_kept():
    t = fixed_table()
    with pytest.raises(SelectError) as e:
        select(t, Rules(filters=[Filter(where="ocr_area_ratio < 0.02")]))
    assert "ocr_area_ratio" in str(e.value) and "2 null" in str(e.value)
    dropped, _ = select(t, Rules(filters=[Filter(where="ocr_area_ratio < 0.02", nulls="drop")]))
    kept, _ = select(t, Rules(filters=[Filter(where="ocr_area_ratio < 0.02", nulls="keep")]))
    assert ids(dropped) == ["c0", "c1", "c4", "c7"]
    assert ids(kept) == ["c0", "c1", "c2", "c4", "c6", "c7"]


def test_funnel_sums_and_overlaps():
    t = fixed_table()
    rules = Rules(filters=[Filter(where="flow_mean >= 0.2"), Filter(where="duration_s >= 5"), Filter(where="width <= 1280")])
    sub, f = select(t, rules)
    # flow removes c0,c1; duration removes c0..c3 (two of them new); width removes c3 (already gone)
    assert [s["alone_removed_clips"] for s in f["filters"]] == [2, 4, 1]
    assert [s["removed_clips"] for s in f["filters"]] == [2, 2, 0]
    assert [s["kept_clips"] for s in f["filters"]] == [8, 6, 6]
    assert ids(sub) == ["c4", "c5", "c6", "c7", "c8", "c9"]
    assert f["input"]["clips"] - f["output"]["clips"] == sum(s["removed_clips"] for s in f["filters"])
    assert f["output"]["hours"] == pytest.approx(sum(range(5, 11)) / 3600)
    assert f["input"]["hours"] - f["output"]["hours"] == pytest.approx(sum(s["removed_hours"] for s in f["filters"]))


def test_caption_mix_is_seeded_per_clip_and_uses_what_exists():
    t = fixed_table()
    caps, src = choose_captions(t, CaptionMix(mix={"caption_coca": 0.5, "caption_vblip": 0.5}, seed=1))
    for i in range(0, 10, 2):  # no vblip caption on even rows: coca every time
        assert src[i] == "caption_coca" and caps[i] == f"coca {i}"
    caps2, _ = choose_captions(t.take(list(range(9, -1, -1))), CaptionMix(mix={"caption_coca": 0.5, "caption_vblip": 0.5}, seed=1))
    assert caps2[::-1] == caps  # independent of row order
    # over many clips the mix is honoured
    n = 4000
    big = pa.table({schema.CLIP_ID: [f"x{i}" for i in range(n)], schema.CAPTION_COCA: ["a"] * n,
                    schema.CAPTION_VBLIP: ["b"] * n, schema.CAPTION_LLM: ["c"] * n})  # fmt: skip
    _, src = choose_captions(big, CaptionMix())
    share = {s: src.count(s) / n for s in set(src)}
    assert share["caption_coca"] == pytest.approx(0.5, abs=0.03)
    assert share["caption_vblip"] == pytest.approx(0.25, abs=0.03) and share["caption_llm"] == pytest.approx(0.25, abs=0.03)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    """A real (small) curate output with the weight-free scores, made in-process."""
    from curate.config import load_config
    from curate.synth import demo_corpus
    from pipelines.run import run

    d = tmp_path_factory.mktemp("demo")
    demo_corpus(str(d / "inputs"))
    for clip in DATA.glob("*.mp4"):
        shutil.copy(clip, d / "inputs" / clip.name)
    (d / "inputs" / "broken.mp4").write_bytes(b"not a video")
    root = Path(__file__).parents[1]
    run(load_config(root / "curate" / "configs" / "demo.yaml", ["executor=local"]), sorted(str(p) for p in (d / "inputs").iterdir()), str(d / "out"))
    return d / "out"


RULES = Path(__file__).parents[1] / "curate" / "configs" / "subsets" / "demo_clean.yaml"


def test_cli_select_with_rules_and_flags(tmp_path, demo_out):
    r = runner.invoke(app, ["select", str(RULES), "-s", str(demo_out), "-o", str(tmp_path / "sub"), "--where", "duration_s <= 4.5"])
    assert r.exit_code == 0, r.output
    funnel = json.loads((tmp_path / "sub" / "funnel.json").read_text())
    sub = pq.read_table(tmp_path / "sub" / "subset.parquet")
    assert sub.num_rows == funnel["output"]["clips"] > 0
    assert len(funnel["filters"]) == 5 and funnel["filters"][-1]["filter"] == "duration_s <= 4.5"
    assert all(v < 0.02 for v in sub.column(schema.OCR_AREA_RATIO).to_pylist())
    # the model stages were skipped in the demo: no caption exists, and none is invented
    assert sub.column("caption").null_count == sub.num_rows
    r = runner.invoke(app, ["select", "-s", str(demo_out), "-o", str(tmp_path / "x"), "--drop-bottom", "clip_sim=50%"])
    assert r.exit_code == 2 and "clip_sim" in r.output and "null" in r.output
    r = runner.invoke(app, ["select", "-s", str(demo_out), "-o", str(tmp_path / "x"), "--where", "no_such >= 1"])
    assert r.exit_code == 2 and "no column 'no_such'" in r.output
    r = runner.invoke(app, ["select", "-s", str(demo_out), "-o", str(tmp_path / "x"), "--where", "flow_mean => 1"])
    assert r.exit_code == 2 and "column OP value" in r.output


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_export_round_trips(tmp_path, demo_out, fmt):
    runner.invoke(app, ["select", "-s", str(demo_out), "-o", str(tmp_path / "sub"), "--where", "duration_s >= 0"])
    sub = pq.read_table(tmp_path / "sub" / "subset.parquet").to_pylist()
    index = export(tmp_path / "sub", tmp_path / "exp", fmt, max_rows=4)
    assert index["rows"] == len(sub) and all(s["rows"] <= 4 for s in index["shards"])
    back = {r[schema.CLIP_ID]: r for r in iter_samples(tmp_path / "exp")}
    assert set(back) == {r[schema.CLIP_ID] for r in sub}
    for r in sub:
        got = back[r[schema.CLIP_ID]]
        assert got[CLIP_BYTES] == Path(r[schema.CLIP_URI]).read_bytes()
        assert got["caption"] == r["caption"] and got[schema.FLOW_MEAN] == pytest.approx(r[schema.FLOW_MEAN])
    by_bytes = export(tmp_path / "sub", tmp_path / "exp_b", fmt, max_rows=1000, max_bytes=150_000)
    assert len(by_bytes["shards"]) > 1 and by_bytes["rows"] == len(sub)
    # one answer to "what is at this path", for every verb, and one reader of the rows of each
    kinds = {demo_out: OUT, tmp_path / "sub": SUBSET, tmp_path / "sub" / "subset.parquet": PARQUET,
             tmp_path / "exp": EXPORT, tmp_path / "none": MISSING, demo_out / "shards": None}  # fmt: skip
    assert {p: what_is(p) for p in kinds} == kinds
    assert read_rows(demo_out).num_rows == json.loads((demo_out / "manifest.json").read_text())["counts"]["clips"]
    for p in (tmp_path / "sub", tmp_path / "exp"):
        assert sorted(read_rows(p).column(schema.CLIP_ID).to_pylist()) == sorted(r[schema.CLIP_ID] for r in sub)
    with pytest.raises(DatasetError, match="-s .*shards: not a curate output or a .parquet"):
        read_rows(demo_out / "shards", "-s", kinds=(OUT, PARQUET))


def test_shards_readable_by_common_tools(demo_out, ray_session):
    import pandas as pd

    shards = demo_out / "shards"
    n = len(pd.read_parquet(shards))
    assert n > 0
    duckdb = pytest.importorskip("duckdb")
    assert duckdb.sql(f"SELECT count(*) AS n FROM read_parquet('{shards}/*.parquet')").fetchall()[0][0] == n
    import ray

    assert ray.data.read_parquet(str(shards)).count() == n
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(shards / "*.parquet"), split="train", cache_dir=str(demo_out.parent / "hf"))
    assert len(ds) == n and "flow_mean" in ds.column_names


def test_report_renders_in_headless_chromium(tmp_path, demo_out):
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    r = runner.invoke(app, ["report", str(demo_out), "-o", str(tmp_path / "report.html"), "--rules", str(RULES)])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "report.html").read_text()
    assert "http://" not in text and "https://" not in text  # self-contained
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])  # fmt: skip
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((tmp_path / "report.html").as_uri())
        page.wait_for_load_state("load")
        loaded = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert len(loaded) > 10 and all(loaded)
    assert any(h.startswith("Funnel") for h in headings) and "Quarantine" in headings and "Stage timings" in headings
    assert "drop_bottom flow_mean=25%" in text and "unreadable" in text
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_explore_notebook_executes(demo_out, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = Path(__file__).parents[1] / "notebooks" / "explore.ipynb"
    nb = nbformat.read(path, as_version=4)
    monkeypatch.setenv("CURATE_OUT", str(demo_out))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(demo_out)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("clips" in json.dumps(o.get("data", {})) for o in outputs)
