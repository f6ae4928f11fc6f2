"""End to end: the pipeline in-process and on Ray, quarantine, resume, the CLI."""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate import schema
from curate_cli.main import app
from curate.config import load_config
from curate.shards import Committer, read_shards
from curate.storage import OutputStore, resolve_inputs
from pipelines.run import run
from tests.conftest import DATA, assert_same_rows

runner = CliRunner()


def local_cfg(scorers: bool = True, **sets):
    off = [] if scorers else ["scorers.flow.enabled=false", "scorers.ocr.enabled=false", "scorers.quality.enabled=false"]
    return load_config(None, ["executor=local", "clips.min_s=1", "clips.max_s=3", "shards.max_rows=2", *off,
                              *[f"{k}={v}" for k, v in sets.items()]])  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, three_shots, text_video, bad_inputs):
    d = tmp_path_factory.mktemp("corpus")
    shutil.copy(three_shots.path, d / "three shots 'quoted'.mp4")  # spaces and quotes in the name
    shutil.copy(text_video.path, d / "-leading-dash.mp4")
    shutil.copy(DATA / "counter.mp4", d / "counter.mp4")
    shutil.copy(DATA / "counter.mp4", d / "counter_copy.mp4")  # byte-identical duplicate
    for kind in ("empty", "unreadable", "no_video_stream", "truncated_moovless", "truncated_mid_mdat"):
        shutil.copy(bad_inputs[kind], d / bad_inputs[kind].name)
    return d


EXPECTED_QUARANTINE = {
    "zero.mp4": schema.Q_EMPTY, "random.mp4": schema.Q_UNREADABLE, "audio_only.mp4": schema.Q_NO_VIDEO,
    "truncated_moovless.mp4": schema.Q_UNREADABLE, "counter_copy.mp4": schema.Q_DUPLICATE,
    "missing.mp4": schema.Q_MISSING,
}  # fmt: skip


def quarantine_by_name(out) -> dict[str, str]:
    q = pq.read_table(Path(out) / "quarantine.parquet").to_pylist()
    return {Path(r["source_uri"]).name: r["reason"] for r in q}


def test_local_run_clips_quarantine_and_manifest(tmp_path, corpus):
    out = tmp_path / "out"
    inputs = resolve_inputs([str(corpus), str(corpus / "missing.mp4")])
    result = run(local_cfg(), inputs, str(out))
    assert quarantine_by_name(out) == EXPECTED_QUARANTINE
    rows = read_shards(str(out)).to_pylist()
    ids = [r["clip_id"] for r in rows]
    assert len(ids) == len(set(ids))
    by_source = {}
    for r in rows:
        by_source.setdefault(Path(r["source_uri"]).name, []).append(r)
    # three shots (4 s | 3 s | 5 s at 24 fps, max 3 s): 4 s -> 3 s + 1 s, 3 s -> 3 s, 5 s -> 3 s + 2 s
    shots = sorted((r["start_frame"], r["end_frame"]) for r in by_source["three shots 'quoted'.mp4"])
    assert shots == [(0, 72), (72, 96), (96, 168), (168, 240), (240, 288)]
    # cut mid-mdat with the index up front: clips from the frames that decode, none past them
    cut_short = sorted((r["start_frame"], r["end_frame"]) for r in by_source["truncated_mid_mdat.mp4"])
    assert cut_short[:3] == [(0, 72), (72, 96), (96, cut_short[2][1])] and cut_short[-1][1] < 288
    counter = sorted((r["start_frame"], r["end_frame"]) for r in by_source["counter.mp4"])
    assert counter == [(0, 10), (10, 20), (20, 30)]
    for r in rows:
        assert Path(r["clip_uri"]).is_file()
        assert Path(r["clip_uri"]).parent.name == r["video_id"]
        assert r["duration_s"] == pytest.approx((r["end_frame"] - r["start_frame"]) / r["fps"])
        assert r["errors"] == []
    # at most max_rows per part file
    for part in (out / "shards").glob("part-*.parquet"):
        assert pq.read_metadata(part).num_rows <= 2
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["clips"] == len(rows) and m["counts"]["quarantined"] == len(EXPECTED_QUARANTINE)
    assert m["counts"]["quarantine_reasons"][schema.Q_UNREADABLE] == 2
    # every stage is timed: the per-video steps, the sample decode and each scorer
    assert set(m["stage_seconds"]) == {"probe", "cuts", "clips", "sample", "flow", "camera", "ocr", "quality", "phash"}
    assert all(v > 0 for v in m["stage_seconds"].values())
    assert not any(c.startswith("_") for c in read_shards(str(out)).column_names)
    assert m["config_hash"] == local_cfg().hash() and "ray" in m["versions"]
    assert result.processed == len(inputs)


def clip_set(out) -> set[tuple]:
    return {(r["clip_id"], r["source_uri"], r["start_frame"], r["end_frame"]) for r in read_shards(str(out)).to_pylist()}


class Killed(Exception):
    pass


def test_inputs_are_worked_largest_first(tmp_path, three_shots):
    """A long input given last held the run's tail alone on one lane (the 1080p talk, last of
    ../shared/data by name): inputs start largest first, then the remote and missing ones in the
    order given. Seen in the commit log: one input per commit, in the order they were worked."""
    from curate.storage import largest_first

    small, big = tmp_path / "a_small.mp4", tmp_path / "b_big.mp4"
    shutil.copy(DATA / "counter.mp4", small)
    shutil.copy(three_shots.path, big)
    assert small.stat().st_size < big.stat().st_size
    missing, remote = str(tmp_path / "c_missing.mp4"), "s3://bucket/a.mp4"
    assert largest_first([remote, str(small), missing, str(big)]) == [str(big), str(small), remote, missing]
    out = tmp_path / "out"
    run(local_cfg(False, **{"shards.commit_every_videos": 1}), [str(small), missing, str(big)], str(out))
    order = [v["source_uri"] for rec in sorted((out / "_commits").glob("commit-*.json"))
             for v in json.loads(rec.read_text())["videos"]]  # fmt: skip
    assert order == [str(big), str(small), missing]


@pytest.mark.parametrize("crash_at", ["before_commit", "after_commit_before_rename"])
def test_killed_run_resumes_exactly_once(tmp_path, corpus, monkeypatch, crash_at):
    inputs = resolve_inputs([str(corpus)])
    cfg = local_cfg(scorers=False)  # the commit protocol does not depend on what the rows hold
    run(cfg, inputs, str(tmp_path / "clean"))
    reference = clip_set(tmp_path / "clean")

    out = tmp_path / "killed"
    calls = {"n": 0}
    original_create, original_move = OutputStore.create_exclusive, OutputStore.move

    def create_exclusive(self, data, *parts):
        if parts[0] == "_commits":
            calls["n"] += 1
            if crash_at == "before_commit" and calls["n"] == 3:
                raise Killed()
        return original_create(self, data, *parts)

    def move(self, src, dst):
        if crash_at == "after_commit_before_rename" and calls["n"] == 3:
            raise Killed()
        return original_move(self, src, dst)

    monkeypatch.setattr(OutputStore, "create_exclusive", create_exclusive)
    monkeypatch.setattr(OutputStore, "move", move)
    with pytest.raises(Killed):
        run(cfg, inputs, str(out))
    monkeypatch.undo()
    # what a reader sees mid-crash: only whole, committed part files
    visible = {p.name for p in (out / "shards").glob("*.parquet")}
    for name in visible:
        pq.read_table(out / "shards" / name)
    result = run(cfg, inputs, str(out))
    assert result.skipped >= 2 and result.skipped + result.processed == len(inputs)
    assert clip_set(out) == reference
    assert not list((out / "shards" / ".tmp").glob("*"))
    assert quarantine_by_name(out) == {k: v for k, v in EXPECTED_QUARANTINE.items() if k != "missing.mp4"}


def test_rerun_is_a_no_op_and_other_config_is_refused(tmp_path, corpus):
    inputs = resolve_inputs([str(corpus)])
    out = str(tmp_path / "out")
    run(local_cfg(scorers=False), inputs, out)
    before = clip_set(out)
    again = run(local_cfg(scorers=False), inputs, out)
    assert again.processed == 0 and again.skipped == len(inputs)
    assert clip_set(out) == before
    from curate.shards import ConfigMismatch

    with pytest.raises(ConfigMismatch, match="config hash") as refused:
        run(local_cfg(scorers=False, **{"clips.max_s": 4}), inputs, out)
    assert str(refused.value).endswith("What differs from OUT's manifest.json: clips.max_s: 3.0 -> 4.0")


def test_config_differences_name_keys_an_upgrade_added_and_ignore_where_it_runs():
    from curate.config import config_differences, load_config

    new = load_config(None, ["scorers.ocr.threads=4", "executor=local"]).model_dump(mode="json")
    old = load_config(None).model_dump(mode="json")
    assert config_differences(old, new) == []  # scheduling keys and the executor change no result
    del old["scorers"]["ocr"]["precision"]  # an OUT written before the key existed
    old["cuts"]["analysis_size"] = 96
    assert config_differences(old, new) == ["cuts.analysis_size: 96 -> 128", 'scorers.ocr.precision: absent -> "f32"']


def test_commit_recovery_deletes_uncommitted_parts(tmp_path):
    store = OutputStore(str(tmp_path))
    store.write_bytes(b"junk", "shards", ".tmp", "part-000000.parquet")
    store.write_bytes(b"junk", "shards", "part-000007.parquet")
    assert Committer(store, "h").recover() == set()
    assert store.list("shards") == [] and store.list("shards", ".tmp") == []


def test_ray_run_equals_local_run(tmp_path, corpus, ray_session):
    inputs = resolve_inputs([str(corpus)])
    run(local_cfg(), inputs, str(tmp_path / "local"))
    result = run(local_cfg(executor="ray"), inputs, str(tmp_path / "ray"))
    assert result.manifest["runs"][-1]["executor"] == "ray"
    assert set(result.manifest["stage_seconds"]) == {"probe", "cuts", "clips", "sample", "flow", "camera", "ocr", "quality", "phash"}
    assert clip_set(tmp_path / "ray") == clip_set(tmp_path / "local")
    # scores too: same rows, same numbers (floats to FLOAT_RTOL: OCR's model), whichever worker computed them
    key = lambda t: sorted(t.drop_columns(["clip_uri"]).to_pylist(), key=lambda r: r["clip_id"])  # noqa: E731
    assert_same_rows(key(read_shards(str(tmp_path / "ray"))), key(read_shards(str(tmp_path / "local"))))
    assert quarantine_by_name(tmp_path / "ray") == {k: v for k, v in EXPECTED_QUARANTINE.items() if k != "missing.mp4"}


def test_cli_run_inspect_and_errors(tmp_path, corpus, ray_session):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("clips:\n  min_s: 1\n  max_s: 3\n")
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"# two inputs\n{corpus / 'counter.mp4'}\n-leading-dash.mp4\n")
    shutil.copy(corpus / "-leading-dash.mp4", tmp_path / "-leading-dash.mp4")
    out = tmp_path / "out"
    r = runner.invoke(app, ["run", str(cfg), "-i", str(manifest), "-o", str(out), "--set", "clips.mode=copy"])
    assert r.exit_code == 0, r.output
    rows = read_shards(str(out)).to_pylist()
    assert {Path(x["source_uri"]).name for x in rows} == {"counter.mp4", "-leading-dash.mp4"}
    assert {x["clip_mode"] for x in rows} == {"copy"}
    r = runner.invoke(app, ["inspect", str(out)])
    assert r.exit_code == 0 and "clips" in r.output and str(len(rows)) in r.output

    bad = tmp_path / "bad.yaml"
    bad.write_text("clips:\n  max_sec: 3\n")
    r = runner.invoke(app, ["run", str(bad), "-i", str(corpus), "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "clips.max_sec: unknown key" in r.output and "bad.yaml" in r.output
    r = runner.invoke(app, ["run", str(cfg), "-i", str(tmp_path / "nothing*.mp4"), "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "glob matches nothing" in r.output
    r = runner.invoke(app, ["inspect", str(tmp_path / "x")])
    assert r.exit_code == 2 and "manifest.json" in r.output


def test_curate_demo(tmp_path, ray_session):
    r = runner.invoke(app, ["demo", "-o", str(tmp_path / "demo")])
    assert r.exit_code == 0, r.output
    out = tmp_path / "demo" / "curated"
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["inputs"] == 6 and m["counts"]["quarantined"] == 0
    rows = read_shards(str(out)).to_pylist()
    assert len(rows) == m["counts"]["clips"] > 0
    assert all(Path(r["clip_uri"]).is_file() for r in rows)
    # the demo's three-shot video is cut where it was generated: 96 and 168
    shots = sorted(r["start_frame"] for r in rows if r["source_uri"].endswith("three_shots.mp4"))
    assert {96, 168} <= set(shots)
    # the weight-free scorers fill their columns for every clip
    for col in (schema.FLOW_MEAN, schema.FLOW_MAX, schema.OCR_AREA_RATIO, schema.QUALITY_SHARPNESS,
                schema.QUALITY_BRIGHTNESS, schema.QUALITY_CONTRAST, schema.QUALITY_COLORFULNESS):
        assert all(r[col] is not None for r in rows), col
    assert all(r["errors"] == [] for r in rows)
    static = [r for r in rows if r["source_uri"].endswith("three_shots.mp4") and r["start_frame"] == 96]
    moving = [r for r in rows if r["source_uri"].endswith("three_shots.mp4") and r["start_frame"] == 0]
    assert static[0][schema.FLOW_MEAN] < 0.01 < moving[0][schema.FLOW_MEAN]
    # the caption shot has text on screen, the static shot before it none; the demo recipe only
    # detects (reading is opt-in: ocr.recognize)
    text = sorted((r["start_frame"], r[schema.OCR_AREA_RATIO], r[schema.OCR_TEXT]) for r in rows if r["source_uri"].endswith("static_then_text.mp4"))
    assert text[0][1] < 0.005 < text[-1][1] and {t for *_, t in text} == {None}, text
    assert m["scorers"]["flow"]["short_side"] == 16


def test_resolve_inputs(tmp_path, corpus):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)  # a symlink loop
    shutil.copy(DATA / "counter.mp4", tmp_path / "sub" / "a.mp4")
    (tmp_path / "sub" / "readme.txt").write_text("not a video")
    found = resolve_inputs([str(tmp_path)])
    assert [Path(p).name for p in found] == ["a.mp4"]
    assert resolve_inputs([str(tmp_path / "sub" / "*.mp4"), str(tmp_path / "sub" / "a.mp4")]) == found
    import pyarrow as pa

    pq.write_table(pa.table({"source_uri": ["sub/a.mp4", "sub/b.mp4"]}), tmp_path / "m.parquet")
    assert [Path(p).name for p in resolve_inputs([str(tmp_path / "m.parquet")])] == ["a.mp4", "b.mp4"]
