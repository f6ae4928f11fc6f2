"""Long inputs as segments (curate/segments.py): the cuts of every segment joined, and the clips
of a segmented run, equal those of one pass, on real footage, with seams inside a scene, exactly
at a cut, inside a fade, inside a dissolve and on a variable-frame-rate input; a segment that
fails is its input's failure; a run killed between segments resumes to the same rows."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from curate import schema
from curate.config import load_config
from curate.cuts import detect_cuts
from curate.record import InputRecord
from curate.segments import segment_cuts, split
from curate.shards import read_shards
from curate.verify import verify
from curate.video import probe
from pipelines.run import run
from tests.conftest import SHARED, assert_same_rows, run_ffmpeg

ROOT = Path(__file__).resolve().parents[1]
TESTDATA = Path(__file__).parent / "data"
TESTVIDEO = TESTDATA / "pyscenedetect__testvideo.mp4"  # cuts 30, 180; fades 211-240 and 331-360
CUP = TESTDATA / "opencv__cup.mp4"  # one shot, hand moving a cup


@pytest.fixture(scope="module")
def dissolve(tmp_path_factory) -> Path:
    """Two real shots joined by a 1 s dissolve (frames 192-216 mix them)."""
    out = tmp_path_factory.mktemp("dissolve") / "dissolve.mp4"
    run_ffmpeg("-i", str(CUP), "-i", str(TESTVIDEO), "-filter_complex",
               "[0:v]fps=24,scale=320:240,setsar=1,format=yuv420p[a];[1:v]trim=start_frame=40:end_frame=170,setpts=PTS-STARTPTS,"
               "fps=24,scale=320:240,setsar=1,format=yuv420p[b];[a][b]xfade=transition=dissolve:duration=1:offset=8[v]",
               "-map", "[v]", "-c:v", "libx264", "-g", "48", str(out))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def vfr(tmp_path_factory) -> Path:
    """testvideo with every third frame kept up to frame 400 and every frame after: a variable
    frame rate stream whose cuts and fades are the original's."""
    out = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    run_ffmpeg("-i", str(TESTVIDEO), "-vf", "select='not(mod(n\\,3))+gt(n\\,400)'", "-fps_mode", "vfr",
               "-c:v", "libx264", "-g", "30", str(out))  # fmt: skip
    return out


def joined_cuts(path: Path, seams: list[int], cfg) -> tuple[list[int], int]:
    info = probe(str(path))
    bounds = [0, *seams, info.n_frames]
    rec = InputRecord(str(path), local=str(path), info=info)
    cuts, n = [], 0
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        found = segment_cuts(rec, cfg.cuts, a, b, last=k == len(bounds) - 2)
        cuts += found["cuts"]
        n = found["n_frames"]
    return cuts, n


@pytest.mark.parametrize("recipe", ["demo", "svd"])
def test_segment_cuts_equal_one_decode_at_every_kind_of_seam(recipe, dissolve, vfr):
    cfg = load_config(recipe)
    cases = {  # seams: inside a scene, exactly at a cut, inside each fade, inside the dissolve
        TESTVIDEO: [100, 180, 225, 345, 600],
        dissolve: [60, 193, 204, 215, 300],
        vfr: [10, 60, 80, 95, 300],  # (frame 60 of the VFR stream is the original's 180: a cut)
        CUP: [1, 108, 216],
    }
    for path, seams in cases.items():
        whole = detect_cuts(str(path), probe(str(path)), cfg.cuts)
        assert joined_cuts(path, seams, cfg) == (whole.cuts, whole.n_frames), (path.name, seams)
    # ... and they are the real cuts (not an agreement on nothing)
    assert {30, 180} <= set(detect_cuts(str(TESTVIDEO), probe(str(TESTVIDEO)), cfg.cuts).cuts)
    dissolve_cuts = detect_cuts(str(dissolve), probe(str(dissolve)), cfg.cuts).cuts
    assert any(185 <= c <= 222 for c in dissolve_cuts), dissolve_cuts


def test_segment_cuts_on_real_vfr_footage(shared_data):
    path = shared_data / "videos" / "pyscenedetect__goldeneye-vfr-drop3.mp4"
    cfg = load_config("demo")
    whole = detect_cuts(str(path), probe(str(path)), cfg.cuts)
    assert whole.cuts == [60, 140]  # truth.json
    for seams in ([30, 60, 100], [59, 61, 139, 141], [140]):
        assert joined_cuts(path, seams, cfg) == (whole.cuts, whole.n_frames), seams


def test_split_covers_the_input_in_about_segment_s():
    info = probe(str(TESTVIDEO))  # 24 s
    assert split(info, info.n_frames, 0) == [(0, info.n_frames)]
    assert split(info, info.n_frames, 20) == [(0, info.n_frames)]  # under 1.5 segments: one piece
    ranges = split(info, info.n_frames, 5)
    assert len(ranges) == 5 and ranges[0][0] == 0 and ranges[-1][1] == info.n_frames
    assert all(a1 == b0 for (_, b0), (a1, _) in zip(ranges, ranges[1:]))
    lengths = [info.frame_times[b - 1] - info.frame_times[a] for a, b in ranges]
    assert max(lengths) - min(lengths) < 0.1


def one_run(tmp_path, inputs, name, *sets):
    out = tmp_path / name
    cfg = load_config("demo", ["executor=local", "scorers.ocr.enabled=false", "clips.max_s=3", *sets])
    result = run(cfg, [str(p) for p in inputs], str(out))
    return out, result


def rows_of(out) -> list[dict]:
    rows = read_shards(str(out)).sort_by(schema.CLIP_ID).to_pylist()
    for r in rows:
        r.pop(schema.CLIP_URI)
    return rows


def records(out) -> dict[str, dict]:
    got = {}
    for name in sorted(os.listdir(out / "_commits")) if (out / "_commits").exists() else []:
        for v in json.loads((out / "_commits" / name).read_text())["videos"]:
            got[Path(v["source_uri"]).name] = v
    return got


@pytest.mark.parametrize("mode", ["exact", "deferred", "smart"])
def test_a_segmented_run_equals_one_pass(tmp_path, mode, dissolve):
    inputs = [TESTVIDEO, CUP, dissolve]
    sets = [f"clips.mode={mode}"] + (["clips.short_side=null"] if mode == "smart" else [])  # (it keeps the source's pixels)
    one, r1 = one_run(tmp_path, inputs, "one", *sets)
    seg, r2 = one_run(tmp_path, inputs, "seg", *sets, "segment_s=4")
    want, got = rows_of(one), rows_of(seg)
    assert len(want) >= 8
    assert_same_rows(got, want)  # every column: spans, ids, indexes, scores, previews, samples' results
    counts = ("clips", "scenes", "short_scenes_dropped", "held_frames_dropped", "quarantined")
    assert {k: r2.manifest["counts"][k] for k in counts} == {k: r1.manifest["counts"][k] for k in counts}
    segs = {name: v.get("segments") for name, v in records(seg).items()}
    assert segs == {TESTVIDEO.name: 6, CUP.name: 2, dissolve.name: 3}
    assert all(not v.get("segments") for v in records(one).values())
    assert verify(str(seg)).ok


def test_segments_on_ray_equal_one_pass(tmp_path, ray_session, dissolve):
    inputs = [TESTVIDEO, dissolve]
    one, _ = one_run(tmp_path, inputs, "one")
    seg, _ = one_run(tmp_path, inputs, "seg", "segment_s=4", "executor=ray")
    assert_same_rows(rows_of(seg), rows_of(one))


def test_a_segment_that_never_returns_is_its_inputs_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_FAULT", f"hang:segment:{TESTVIDEO.name}#2")
    out, result = one_run(tmp_path, [TESTVIDEO, CUP], "out", "segment_s=4", "input_timeout_s=5")
    q = {Path(r["source_uri"]).name: r for r in read_shards(str(out)).to_pylist()}
    assert TESTVIDEO.name not in q and CUP.name in q  # none of its other segments' clips committed
    assert result.manifest["counts"]["quarantine_reasons"] == {schema.Q_TIMEOUT: 1}
    assert verify(str(out)).ok


def test_a_run_killed_between_segments_resumes_to_one_pass(tmp_path, dissolve):
    inputs = [TESTVIDEO, dissolve]
    one, _ = one_run(tmp_path, inputs, "one")
    out = tmp_path / "killed"
    sets = ["executor=local", "scorers.ocr.enabled=false", "clips.max_s=3", "segment_s=4", "shards.commit_every_videos=1"]
    cmd = [sys.executable, "-m", "curate_cli.main", "run", "demo", "-i", str(inputs[0]), "-i", str(inputs[1]),
           "-o", str(out), *[x for s in sets for x in ("--set", s)]]  # fmt: skip
    # calls of the per-video stage: 2 whole inputs, 9 segments' cuts, then clips: the 13th is in round 2
    killed = subprocess.run(cmd, capture_output=True, env={**os.environ, "CI": "true", "CURATE_FAULT": "worker@13"}, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not records(out)  # nothing of a segmented input is committed before all its segments are in
    done = subprocess.run(cmd, capture_output=True, env={**os.environ, "CI": "true"}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_rows(rows_of(out), rows_of(one))
    assert verify(str(out)).ok


def test_the_clips_that_carry_their_frames_do_not_depend_on_the_split(tmp_path, monkeypatch):
    """Past the sample budget a clip's frames come from its file (the sample step), not from the
    extraction: which clips carry theirs is decided on the input's whole plan, so a clip's scores
    are the same in one piece and in segments (in-process, for the smaller budget to reach it)."""
    import curate.clips

    monkeypatch.setattr(curate.clips, "SAMPLE_BUDGET_BYTES", 3 << 20)  # a few clips' frames
    sets = ["watchdog=false", "scorers.phash.enabled=false"]
    one, _ = one_run(tmp_path, [TESTVIDEO], "one", *sets)
    seg, _ = one_run(tmp_path, [TESTVIDEO], "seg", *sets, "segment_s=4")
    assert_same_rows(rows_of(seg), rows_of(one))
