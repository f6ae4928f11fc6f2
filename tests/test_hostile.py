"""Hostile inputs and misuse, round two: one test per case, plus property tests for clip planning
and the filter parser. Every CLI mistake ends in one line and exit 2, never a traceback."""

from __future__ import annotations

import errno
import json
import os
import shutil
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from curate import schema
from curate.clips import ClipSpan, plan_clips
from curate.config import ClipsParams, ConfigError, load_config
from curate.shards import read_shards
from curate.storage import _local, resolve_inputs
from curate.video import VideoInfo, ffmpeg_exe
from pipelines.run import run
from datatools.select import Filter, evaluate
from tests.conftest import DATA, one_line_error
from tests.test_reliability import NO_SCORERS, cfg

ROOT = Path(__file__).parents[1]
DEMO = str(ROOT / "curate" / "configs" / "demo.yaml")
runner = CliRunner()


def ffmpeg(*args):
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def slow_inputs(tmp_path_factory):
    """A 0.1 fps slideshow and a screen recording whose one frame is held for 6 s."""
    d = tmp_path_factory.mktemp("hostile")
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=0.1", "-t", "40", "-pix_fmt", "yuv420p", str(d / "slideshow.mp4"))
    ffmpeg("-f", "lavfi", "-t", "3", "-i", "testsrc=size=64x64:rate=24", "-vf", "setpts='PTS+if(gt(N,24),6/TB,0)'",
           "-fps_mode", "vfr", "-pix_fmt", "yuv420p", str(d / "held.mp4"))  # fmt: skip
    return d


# -- runs that never ended -------------------------------------------------------------------------


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_slideshow_and_held_frame_finish_and_the_other_inputs_commit(tmp_path, slow_inputs, three_shots, executor, request):
    if executor == "ray":
        request.getfixturevalue("ray_session")
    inputs = [str(slow_inputs / "slideshow.mp4"), str(slow_inputs / "held.mp4"), three_shots.path]
    r = run(cfg(f"executor={executor}", "input_timeout_s=60"), inputs, str(tmp_path / "out"))
    assert r.processed == 3 and r.manifest["counts"]["quarantined"] == 0
    rows = read_shards(str(tmp_path / "out")).to_pylist()
    spans = {Path(x["source_uri"]).name: [] for x in rows}
    for x in rows:
        spans[Path(x["source_uri"]).name].append((x["start_frame"], x["end_frame"]))
    assert "slideshow.mp4" not in spans  # every 10 s frame is longer than max_s=3: no clip holds one
    assert sorted(spans["held.mp4"]) == [(0, 24), (25, 72)]  # 1 s before the held frame, 2 s after
    assert len(spans["three_shots.mp4"]) == 5
    assert r.manifest["counts"]["held_frames_dropped"] == 4 + 1


def test_watchdog_ends_a_stuck_input_and_the_others_commit(tmp_path, three_shots, text_video, monkeypatch):
    """A demuxer that never returns (simulated) is killed from outside at input_timeout_s + grace."""
    monkeypatch.setenv("CURATE_FAULT", "hang:probe:text")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    t0 = time.monotonic()
    r = run(cfg("input_timeout_s=1"), [three_shots.path, text_video.path], str(tmp_path / "out"))
    assert time.monotonic() - t0 < 60
    q = pq.read_table(tmp_path / "out" / "quarantine.parquet").to_pylist()
    assert [(Path(x["source_uri"]).name, x["reason"]) for x in q] == [("text.mp4", schema.Q_TIMEOUT)]
    assert "watchdog" in q[0]["detail"]
    assert {Path(x["source_uri"]).name for x in read_shards(str(tmp_path / "out")).to_pylist()} == {"three_shots.mp4"}
    assert r.processed == 2
    assert not list(scratch.iterdir())  # the children's private temp directories went with them


CRASHING_SCORER = '''
import os, sys
from typing import ClassVar
sys.path.insert(0, {root!r})
from curate import registry, schema
from curate.params import Strict
import pyarrow as pa
from curate.sample import SamplePlan
from curate.stage import Resources, StageBase


class CrashParams(Strict):
    enabled: bool = False


class CrashScorer(StageBase):
    """A scorer whose native code kills its worker on one input's clips, every time (a segfault)."""
    name: ClassVar[str] = "crash"
    order: ClassVar[int] = 90
    Params: ClassVar[type] = CrashParams
    resources: ClassVar[Resources] = Resources(num_cpus=1, batch_size=8, actors=1)
    output_fields: ClassVar[tuple] = (pa.field(schema.QUALITY_BRIGHTNESS, pa.float32()),)

    @classmethod
    def plans(cls, params):
        return [SamplePlan(cls.name, positions=(0.5,), max_side=32)]

    def __call__(self, batch):
        if any("crash_me" in u for u in batch.column(schema.SOURCE_URI).to_pylist()):
            os._exit(3)
        return super().__call__(batch)

    def score(self, frames):
        return {{schema.QUALITY_BRIGHTNESS: 0.5}}


if __name__ == "__main__":
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import this file
    registry.register(CrashScorer)
    from curate_cli.main import app

    app(sys.argv[1:])
'''


def test_a_clip_that_kills_its_worker_every_time_ends_with_an_error_and_the_run_ends(tmp_path, three_shots, text_video):
    """Ray retries a batch whose worker died without limit, so one input that crashed native code
    hung the whole run (measured: still running when killed at 150 s). Now a retried batch runs
    its rows alone, and a row that killed its worker alone is handed on with the cause: the good
    input's clips, bundled by Ray with the crashing ones, are all scored; the crashing input's
    clips are kept with a null score and the reason; the run ends and the OUT verifies."""
    from curate.verify import verify

    script = tmp_path / "crashing.py"
    script.write_text(CRASHING_SCORER.format(root=str(ROOT)))
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(three_shots.path, inputs / "three_shots.mp4")
    shutil.copy(text_video.path, inputs / "crash_me.mp4")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(script), "run", DEMO, "-i", str(inputs), "-o", str(out), "--set", "ray.num_cpus=2",
         "--set", "scorers.crash.enabled=true", "--set", "clips.min_s=1", "--set", "clips.max_s=3",
         *[x for s in NO_SCORERS for x in ("--set", s)]],
        capture_output=True, text=True, timeout=300, env={**os.environ, "CI": "true", "COLUMNS": "300"},
    )  # fmt: skip
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "2 inputs processed" in said, said[-3000:]
    assert "Traceback" not in said
    # Ray's two paragraphs per death are one curate line; the summary counts what was kept unscored
    assert "(raylet)" not in said and " ".join(said.split()).count("a Ray worker died") == 1, said[-3000:]
    rows = read_shards(str(out)).to_pylist()
    by_input: dict[str, list] = {}
    for x in rows:
        by_input.setdefault(Path(x[schema.SOURCE_URI]).name, []).append(x)
    assert sorted(by_input) == ["crash_me.mp4", "three_shots.mp4"] and len(by_input["three_shots.mp4"]) == 5
    assert all(x[schema.QUALITY_BRIGHTNESS] == 0.5 and not x[schema.ERRORS] for x in by_input["three_shots.mp4"])
    for x in by_input["crash_me.mp4"]:  # kept, unscored, with the cause; never a made-up score
        assert x[schema.QUALITY_BRIGHTNESS] is None
        assert any(e.startswith("crash: its Ray worker died running this clip alone") for e in x[schema.ERRORS]), x[schema.ERRORS]
    assert f"{len(by_input['crash_me.mp4'])} clips kept with a stage's scores missing" in " ".join(said.split())
    assert json.loads((out / "manifest.json").read_text())["counts"]["clips_with_errors"] == len(by_input["crash_me.mp4"])
    report = verify(str(out))
    assert report.ok, report.problems


def test_guarded_runs_a_retried_batch_row_by_row_and_never_reruns_a_row_that_died(ray_session):
    """The retry logic itself, against a real ledger actor: a worker's death is a call of
    `guarded` that never returns (here an exception that skips its bookkeeping, as a killed
    process would), and Ray's retry is the next call with the same batch."""
    import pyarrow.compute as pc
    import ray

    from pipelines.graph import WORKER_DIED, CrashLedger, guarded

    class Dies(BaseException):
        pass

    class Stage:
        name = "toy"
        output_columns = (schema.QUALITY_BRIGHTNESS,)
        calls: list[list[str]] = []

        def __call__(self, batch):
            uris = batch.column(schema.SOURCE_URI).to_pylist()
            Stage.calls.append(uris)
            if "poison" in uris:
                raise Dies
            return batch.append_column(schema.QUALITY_BRIGHTNESS, pa.array([0.5] * len(uris), pa.float32()))

    ledger = ray.remote(CrashLedger).options(num_cpus=0).remote()
    batch = pa.table({schema.SOURCE_URI: ["a", "poison", "b"], schema.CLIP_ID: ["a-0", "p-0", "b-0"],
                      schema.ERRORS: pa.array([None, None, ["earlier: kept"]], pa.list_(pa.string()))})
    stage = Stage()
    with pytest.raises(Dies):  # first attempt: the whole batch, which dies
        guarded(stage, batch, ledger)
    with pytest.raises(Dies):  # the retry: rows alone; "a" passes, the poison dies alone
        guarded(stage, batch, ledger)
    out = guarded(stage, batch, ledger)  # the next: "a" again (its result died too), not the poison
    assert Stage.calls == [["a", "poison", "b"], ["a"], ["poison"], ["a"], ["b"]]
    assert out.column(schema.SOURCE_URI).to_pylist() == ["a", "poison", "b"]
    assert out.column(schema.QUALITY_BRIGHTNESS).to_pylist() == [0.5, None, 0.5]
    assert out.column(schema.ERRORS).to_pylist() == [None, [f"toy: {WORKER_DIED}"], ["earlier: kept"]]
    Stage.calls.clear()  # a batch that ran to its end leaves no trace: the next call runs it whole
    ok = batch.filter(pc.not_equal(batch.column(schema.SOURCE_URI), "poison"))
    assert guarded(stage, ok, ledger).num_rows == 2 and guarded(stage, ok, ledger).num_rows == 2
    assert Stage.calls == [["a", "b"], ["a", "b"]]


def _info(times: list[float], duration: float) -> VideoInfo:
    return VideoInfo(codec="h264", pix_fmt="yuv420p", width=64, height=64, coded_width=64, coded_height=64, rotation=0,
                     fps=len(times) / duration, variable_fps=True, n_frames=len(times), duration_s=duration,
                     start_offset_s=0.0, frame_times=times, keyframes=[0])  # fmt: skip


@settings(max_examples=300, deadline=2000)
@given(
    durs=st.lists(st.one_of(st.floats(0.001, 0.2), st.floats(0.2, 30.0)), min_size=1, max_size=120),
    cut_at=st.lists(st.integers(0, 130), max_size=6),
    min_s=st.floats(0.05, 4.0),
    extra=st.floats(0.0, 6.0),
)
@example(durs=[0.125] * 5 + [1.0, 2.5], cut_at=[], min_s=3.0, extra=1.0)  # found by hypothesis: a clip fits from frame 2
def test_clip_planning_terminates_and_covers(durs, cut_at, min_s, extra):
    times = list(np.cumsum([0.0, *durs[:-1]]))
    n = len(times)
    info = _info(times, times[-1] + durs[-1])
    params = ClipsParams(min_s=min_s, max_s=min_s + extra)
    clips, dropped, held = plan_clips(info, cut_at, n, params)
    t = lambda i: times[i] if i < n else info.duration_s  # noqa: E731
    bounds = sorted({0, *[c for c in cut_at if 0 < c < n], n})
    scene_of = {i: k for k, (a, b) in enumerate(zip(bounds, bounds[1:])) for i in range(a, b)}
    last_end = 0
    for c in clips:
        assert isinstance(c, ClipSpan) and last_end <= c.start < c.end <= n  # ordered, no overlap
        assert scene_of[c.start] == scene_of[c.end - 1]  # never across a cut
        assert min_s - 1e-6 <= t(c.end) - t(c.start) <= params.max_s + 1e-6
        last_end = c.end
    covered = {i for c in clips for i in range(c.start, c.end)}
    kept_scenes = [(a, b) for a, b in zip(bounds, bounds[1:]) if t(b) - t(a) >= min_s - 1e-6]
    assert dropped == len(bounds) - 1 - len(kept_scenes)
    long_frames = [i for a, b in kept_scenes for i in range(a, b) if t(i + 1) - t(i) > params.max_s + 1e-6]
    assert held == len(long_frames)
    # what a kept scene loses: its held frames, and runs shorter than min_s that no clip could
    # extend (at the scene end, before a held frame, or before a frame that would pass max_s)
    for a, b in kept_scenes:
        i = a
        while i < b:
            if i in covered or i in long_frames:
                i += 1
                continue
            j = i
            while j < b and j not in covered and j not in long_frames:
                j += 1
            fits = [(x, y) for x in range(i, j) for y in range(x + 1, j + 1)
                    if min_s + 1e-6 <= t(y) - t(x) <= params.max_s - 1e-6]  # fmt: skip
            assert not fits, (i, j, fits[:3])  # no clip was left in the gap
            i = j


@settings(max_examples=200, deadline=None)
@given(x=st.floats(-1e6, 1e6, allow_nan=False), fmt=st.sampled_from(["{:g}", "{:e}", "{:E}", "{:.3f}", "{!r}"]),
       op=st.sampled_from([">=", "<=", ">", "<", "==", "!="]))  # fmt: skip
def test_where_numbers_are_numbers(x, fmt, op):
    values = np.array([-1e-3, 0.0, 1e-3, 5.0, x, -x], dtype=np.float64)
    table = pa.table({"score": values})
    raw = fmt.format(x)
    mask, info = evaluate(table, Filter(where=f"score {op} {raw}"))
    v = float(raw)
    expect = {">=": values >= v, "<=": values <= v, ">": values > v, "<": values < v, "==": values == v, "!=": values != v}[op]
    assert info["threshold"] == v and list(mask) == list(expect)


@pytest.mark.parametrize("raw,expect", [("no", [True, False]), ("'no'", [True, False]), ('"yes"', [False, False]),
                                        ("null", [False, False]), ("1e-3", [False, True])])  # fmt: skip
def test_where_strings_stay_strings(raw, expect):
    table = pa.table({"codec": ["no", "1e-3"]})
    mask, _ = evaluate(table, Filter(where=f"codec == {raw}"))
    assert list(mask) == expect


# -- names the OS allows ---------------------------------------------------------------------------


def test_a_file_name_that_is_not_utf8_is_processed_and_kept_faithfully(tmp_path, three_shots):
    d = os.fsencode(tmp_path / "in")
    os.mkdir(d)
    bad = os.path.join(d, b"bad\xffname.mp4")
    shutil.copy(three_shots.path, bad)
    shutil.copy(DATA / "counter.mp4", os.path.join(d, b"good.mp4"))
    uris = resolve_inputs([str(tmp_path / "in")])
    r = run(cfg(), uris, str(tmp_path / "out"))
    assert r.processed == 2 and r.manifest["counts"]["quarantined"] == 0
    rows = read_shards(str(tmp_path / "out")).to_pylist()
    odd = {x["source_uri"] for x in rows if "bad" in x["source_uri"]}
    assert odd == {"file://" + os.fsdecode(d) + "/bad%FFname.mp4"}
    assert os.fsencode(_local(odd.pop())) == bad  # byte for byte back to the file


# -- transient failures are retried, failures are not clips ----------------------------------------


def _failing(monkeypatch, mode: str, fails) -> None:
    """Make clip files fail where `fails(span, video_id)` returns an error, in the step each mode
    writes them with (exact: storing the one-decode pass's files; smart: per-clip extraction)."""
    import curate.clips

    if mode == "exact":
        original = curate.clips.store_clip

        def store(store_, f, span, vid, cid):
            err = fails(span, vid)
            if err:
                raise err
            return original(store_, f, span, vid, cid)

        monkeypatch.setattr(curate.clips, "store_clip", store)
    else:
        original_x = curate.clips.extract_clip

        def extract(store_, local, info, span, vid, cid, params, left):
            err = fails(span, vid)
            if err:
                raise err
            return original_x(store_, local, info, span, vid, cid, params, left)

        monkeypatch.setattr(curate.clips, "extract_clip", extract)


def _vid(path: str) -> str:
    from curate.storage import fingerprint

    return fingerprint(path, os.path.getsize(path))


@pytest.mark.parametrize("mode", ["exact", "smart"])
def test_a_full_disk_during_extraction_is_retried_and_never_a_clip(tmp_path, three_shots, text_video, monkeypatch, mode):
    out = tmp_path / "out"
    target = _vid(three_shots.path)  # three_shots, from its 2nd clip on
    _failing(monkeypatch, mode, lambda span, vid: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if vid == target and span.start > 0 else None)
    r = run(cfg("watchdog=false", f"clips.mode={mode}"), [three_shots.path, text_video.path], str(out))  # in-process: the patch applies
    c = r.manifest["counts"]
    assert (c["clips"], c["to_retry"]) == (len(read_shards(str(out))), 1)
    assert {Path(x["source_uri"]).name for x in read_shards(str(out)).to_pylist()} == {"text.mp4"}
    committed_dirs = {x["video_id"] for x in read_shards(str(out)).to_pylist()}
    assert {p.name for p in (out / "clips").iterdir()} == committed_dirs  # its first clip's file was swept
    monkeypatch.undo()
    again = run(cfg("watchdog=false", f"clips.mode={mode}"), [three_shots.path, text_video.path], str(out))
    assert (again.processed, again.skipped) == (1, 1) and again.manifest["counts"]["to_retry"] == 0
    names = [Path(x["source_uri"]).name for x in read_shards(str(out)).to_pylist()]
    assert names.count("three_shots.mp4") == 5 and again.manifest["counts"]["quarantined"] == 0


@pytest.mark.parametrize("mode", ["exact", "smart"])
def test_a_clip_that_fails_for_good_is_counted_not_a_row(tmp_path, three_shots, monkeypatch, mode):
    from curate.clips import ExtractError

    _failing(monkeypatch, mode, lambda span, vid: ExtractError("ffmpeg exited 1: Invalid data found") if span.start == 72 else None)
    r = run(cfg("watchdog=false", f"clips.mode={mode}"), [three_shots.path], str(tmp_path / "out"))
    rows = read_shards(str(tmp_path / "out")).to_pylist()
    assert len(rows) == 4 and all(x["clip_uri"] for x in rows)
    assert (r.manifest["counts"]["clips"], r.manifest["counts"]["failed_clips"]) == (4, 1)


def test_a_missing_input_that_appears_is_processed_by_the_next_run(tmp_path, three_shots):
    late = tmp_path / "late.mp4"
    first = run(cfg(), [str(late)], str(tmp_path / "out"))
    assert first.manifest["counts"]["quarantine_reasons"] == {"missing": 1}
    shutil.copy(three_shots.path, late)
    second = run(cfg(), [str(late)], str(tmp_path / "out"))
    assert second.processed == 1 and second.manifest["counts"]["quarantined"] == 0
    assert len(read_shards(str(tmp_path / "out"))) == 5
    assert pq.read_table(tmp_path / "out" / "quarantine.parquet").num_rows == 0


@pytest.mark.slow
def test_a_kill_at_a_random_moment_redoes_at_most_the_videos_in_flight(tmp_path, three_shots, text_video, fade_video):
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(int(time.time()))
    srcs = [three_shots, text_video, fade_video]
    for k in range(12):  # distinct content per file, so no input is a duplicate of another
        data = Path(srcs[k % 3].path).read_bytes() + b"\0" * (k + 1)
        (d / f"v{k:02d}.mp4").write_bytes(data)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "curate_cli.main", "run", DEMO, "-i", str(d), "-o", str(out),
            *[x for s in ["executor=local", "clips.min_s=1", "clips.max_s=3", "shards.commit_every_s=0.001",
                          *NO_SCORERS] for x in ("--set", s)]]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "CI": "true"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("_commits/commit-*.json"))) < 3:
        try:
            proc.wait(timeout=0.05)
            pytest.fail("finished before the kill")
        except subprocess.TimeoutExpired:
            pass
    try:
        proc.wait(timeout=float(rng.uniform(0, 2)))  # a random moment after the third commit
        pytest.fail("finished before the kill")
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    committed = set()
    for rec in out.glob("_commits/commit-*.json"):
        committed |= {Path(v["source_uri"]).name for v in json.loads(rec.read_text())["videos"]}
    ids = {}
    for x in read_shards(str(out)).to_pylist():
        ids[x["video_id"]] = Path(x["source_uri"]).name
    worked_on = {p.name for p in (out / "clips").iterdir()} if (out / "clips").exists() else set()
    uncommitted_work = worked_on - set(ids)
    assert len(uncommitted_work) <= 1  # the local executor has one video in flight
    r = subprocess.run(args, capture_output=True, env={**os.environ, "CI": "true"})
    assert r.returncode == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["runs"][-1]["processed"] == 12 - len(committed) and m["counts"]["videos_ok"] == 12


# -- mistakes that looked like success, values that break every input, raw tracebacks --------------


def test_select_from_a_mistyped_source_fails_and_creates_nothing(tmp_path):
    r = runner.invoke(app_(), ["select", "-s", str(tmp_path / "no_such_out"), "-o", str(tmp_path / "subset")])
    one_line_error(r, "not a curate output")
    assert not (tmp_path / "subset").exists() and not (tmp_path / "no_such_out").exists()


def test_train_on_missing_or_empty_data_fails_in_one_line(tmp_path):
    pytest.importorskip("diffusers")
    tiny = str(ROOT / "curate" / "configs" / "train" / "tiny.yaml")
    r = runner.invoke(app_(), ["train", tiny, "--data", str(tmp_path / "nope"), "-o", str(tmp_path / "run")])
    one_line_error(r, "no such file or directory")
    assert not (tmp_path / "run").exists() and not (tmp_path / "nope").exists()
    (tmp_path / "empty").mkdir()
    table = read_shards(str(tmp_path / "none"))  # the clip schema, no rows
    pq.write_table(table.append_column("caption", pa.array([], pa.string())), tmp_path / "empty" / "subset.parquet")
    r = runner.invoke(app_(), ["train", tiny, "--data", str(tmp_path / "empty"), "-o", str(tmp_path / "run")])
    one_line_error(r, "no clips with a clip file")


@pytest.mark.parametrize("arms,needle", [
    (["../../escape=DATA", "b=DATA"], "NAME must be"),
    (["a=DATA", "a=DATA"], "given twice"),
    (["a=DATA"], "at least two arms"),
    (["a=DATA", "b=MISSING"], "does not exist"),
])  # fmt: skip
def test_compare_validates_arm_names_before_anything(tmp_path, arms, needle):
    (tmp_path / "DATA").mkdir()
    argv = ["compare", str(ROOT / "curate" / "configs" / "train" / "tiny.yaml"), "-o", str(tmp_path / "cmp")]
    for a in arms:
        argv += ["--arm", a.replace("DATA", str(tmp_path / "DATA")).replace("MISSING", str(tmp_path / "missing"))]
    one_line_error(runner.invoke(app_(), argv), needle)
    assert not (tmp_path / "cmp").exists() and not (tmp_path.parent / "escape").exists()


@pytest.mark.parametrize("override,needle", [
    ("input_timeout_s=.inf", "input_timeout_s"), ("clips.preset=-bogus", "clips.preset"),
    ("shards.max_rows=100000000000", "shards.max_rows"), ("clips.max_s=[", "not valid YAML"),
])  # fmt: skip
def test_values_that_break_every_input_are_refused(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(DEMO, [override])


def test_where_typo_is_one_line(tmp_path, small_out):
    r = runner.invoke(app_(), ["select", "-s", str(small_out), "--where", "duration_s >= [", "-o", str(tmp_path / "s")])
    one_line_error(r, "is not a number")


@pytest.fixture(scope="module")
def small_out(tmp_path_factory, three_shots):
    out = tmp_path_factory.mktemp("small") / "out"
    run(cfg(), [three_shots.path], str(out))
    return out


def test_export_refuses_files_and_foreign_directories_and_replaces_its_own(tmp_path, small_out):
    sub = tmp_path / "sub"
    assert runner.invoke(app_(), ["select", "-s", str(small_out), "-o", str(sub)]).exit_code == 0
    (tmp_path / "a_file").write_text("x")
    one_line_error(runner.invoke(app_(), ["export", str(sub), "-o", str(tmp_path / "a_file")]), "not a directory")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "photo.jpg").write_bytes(b"x")
    one_line_error(runner.invoke(app_(), ["export", str(sub), "-o", str(tmp_path / "theirs")]), "not empty")
    exp = tmp_path / "exp"
    assert runner.invoke(app_(), ["export", str(sub), "-o", str(exp), "--format", "webdataset", "--max-rows", "1"]).exit_code == 0
    assert len(list(exp.glob("*.tar"))) == 5
    assert runner.invoke(app_(), ["export", str(sub), "-o", str(exp), "--format", "webdataset", "--max-rows", "3"]).exit_code == 0
    assert len(list(exp.glob("*.tar"))) == 2  # no stale shard from the first export


def test_tar_member_names_are_one_plain_name(tmp_path, small_out):
    import tarfile

    sub = tmp_path / "sub"
    runner.invoke(app_(), ["select", "-s", str(small_out), "-o", str(sub)])
    t = pq.read_table(sub / "subset.parquet")
    ids = ["../../etc/evil", "/abs/path", "a.b.c"] + t.column("clip_id").to_pylist()[3:]
    pq.write_table(t.set_column(t.schema.get_field_index("clip_id"), "clip_id", pa.array(ids)), sub / "subset.parquet")
    assert runner.invoke(app_(), ["export", str(sub), "-o", str(tmp_path / "exp"), "--format", "webdataset"]).exit_code == 0
    names = [m.name for tar in (tmp_path / "exp").glob("*.tar") for m in tarfile.open(tar).getmembers()]
    assert names and all("/" not in n and not n.startswith(".") and n.count(".") == 1 for n in names)


def test_inputs_that_used_to_raise_tracebacks(tmp_path, small_out):
    base = ["run", DEMO, "-o", str(tmp_path / "out"), *[x for s in NO_SCORERS for x in ("--set", s)]]
    one_line_error(runner.invoke(app_(), [*base, "-i", "http://example.com/a.mp4"]), "http(s) inputs are not supported")
    (tmp_path / "utf16.txt").write_bytes("a.mp4\n".encode("utf-16"))
    one_line_error(runner.invoke(app_(), [*base, "-i", str(tmp_path / "utf16.txt")]), "not UTF-8")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    one_line_error(runner.invoke(app_(), [*base, "-i", str(tmp_path / "bad.parquet")]), "cannot be read")
    one_line_error(runner.invoke(app_(), [*base, "-i", str(tmp_path), "--set", "clips.max_s=[1"]), "not valid YAML")
    (tmp_path / "a_file").write_text("x")
    one_line_error(runner.invoke(app_(), ["run", DEMO, "-i", str(tmp_path), "-o", str(tmp_path / "a_file")]), "not a directory")
    one_line_error(runner.invoke(app_(), ["run", DEMO, "-i", str(tmp_path), "-o", ""]), "empty")
    one_line_error(runner.invoke(app_(), ["run", DEMO, "-i", str(tmp_path), "-o", "/"]), "root")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "manifest.json").write_text("[1, 2]")
    for verb in ("inspect", "report"):
        one_line_error(runner.invoke(app_(), [verb, str(tmp_path / "foreign")]), "not a curate manifest")


def app_():
    from curate_cli.main import app

    return app


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the reaper reads /proc (Linux)")
def test_a_killed_driver_leaves_no_ray_process_behind(tmp_path, three_shots, slow_inputs):
    from curate.reaper import _descendants, _table

    d = tmp_path / "in"
    d.mkdir()
    for k in range(6):
        (d / f"v{k}.mp4").write_bytes(Path(three_shots.path).read_bytes() + b"\0" * (k + 1))
    args = [sys.executable, "-m", "curate_cli.main", "run", DEMO, "-i", str(d), "-o", str(tmp_path / "out"),
            *[x for s in ["executor=ray", "ray.num_cpus=2", *NO_SCORERS] for x in ("--set", s)]]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "CI": "true"})
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (tmp_path / "out" / "_commits").is_dir():
        seen.update(_descendants(proc.pid, _table()))
        try:
            proc.wait(timeout=0.2)
            pytest.fail("finished before the kill")
        except subprocess.TimeoutExpired:
            pass
    seen.update(_descendants(proc.pid, _table()))
    assert any("raylet" in Path(f"/proc/{p}/cmdline").read_text(errors="replace") for p in seen if Path(f"/proc/{p}").exists())
    now = _table()
    fds = {}  # a pidfd turns readable when its process exits: wait on that, not on a clock
    for p, started in seen.items():
        if p in now and now[p][1] == started:
            try:
                fds[os.pidfd_open(p)] = Path(f"/proc/{p}/cmdline").read_text(errors="replace")[:80]
            except ProcessLookupError:
                pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    pending, deadline = set(fds), time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        ready, _, _ = select.select(list(pending), [], [], deadline - time.monotonic())
        pending -= set(ready)
    for fd in fds:
        os.close(fd)
    assert not pending, [fds[fd] for fd in pending]


@pytest.mark.slow
def test_a_first_demo_prints_only_curates_lines(tmp_path):
    """Ray's C++ core worker logs a known-harmless actor warning to fd 2 (ray-project/ray#57733)."""
    r = subprocess.run([sys.executable, "-m", "curate_cli.main", "demo", "-o", str(tmp_path / "demo")], capture_output=True,
                       text=True, env={**os.environ, "CI": "true"}, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "done: 6 inputs processed" in r.stderr
    import re

    foreign = [ln for ln in r.stderr.splitlines() if re.match(r"^\[\d{4}-\d\d-\d\d |^\(\w+ pid=|.*\.cc:\d+", ln)]
    assert not foreign, foreign
