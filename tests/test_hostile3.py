"""Hostile pass, round three: an OUT that is moved, copied or damaged loses nothing and never
duplicates; verbs that must not write into an OUT refuse; votes are blind and counted right;
every mistake or damage is one line, never a traceback. Each test failed on the main it fixes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate.shards import read_shards
from curate.verify import verify
from pipelines.run import run
from tests.conftest import one_line_error
from tests.test_reliability import cfg

runner = CliRunner()


def app_():
    from curate_cli.main import app

    return app


def rows_of(out) -> list[tuple]:
    return sorted((r["clip_id"], r["start_frame"], r["end_frame"]) for r in read_shards(str(out)).to_pylist())


def clip_files(out) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in Path(out, "clips").rglob("*.mp4"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, three_shots, text_video, fade_video):
    d = tmp_path_factory.mktemp("h3") / "in"
    d.mkdir()
    for v in (three_shots, text_video, fade_video):
        shutil.copy(v.path, d)
    return d


@pytest.fixture(scope="module")
def base_out(tmp_path_factory, inputs):
    """A finished OUT of three inputs, in parts of 2 rows (compaction has run), and its truth."""
    out = tmp_path_factory.mktemp("h3base") / "out"
    run(cfg(), sorted(str(p) for p in inputs.iterdir()), str(out))
    assert verify(str(out)).ok
    return out


def fresh(base_out, tmp_path, name="out") -> Path:
    dst = tmp_path / name
    shutil.copytree(base_out, dst, symlinks=True)
    return dst


def resume(out, inputs, *sets):
    return run(cfg(*sets), sorted(str(p) for p in inputs.iterdir()), str(out))


# -- 1. a moved, copied or symlinked OUT keeps its clips ----------------------------------------


@pytest.mark.parametrize("how", ["mv", "copy", "symlink"])
def test_a_moved_copied_or_linked_out_keeps_every_clip_on_resume(tmp_path, base_out, inputs, how):
    truth_rows, truth_files = rows_of(base_out), clip_files(base_out)
    staged = fresh(base_out, tmp_path, "A")
    if how == "mv":
        out = tmp_path / "B"
        staged.rename(out)
    elif how == "copy":
        out = tmp_path / "B"
        shutil.copytree(staged, out)
    else:
        out = tmp_path / "LINK"
        out.symlink_to(staged, target_is_directory=True)
    r = resume(out, inputs)
    assert r.skipped == 3 and r.processed == 0
    assert clip_files(out) == truth_files  # nothing swept
    assert rows_of(out) == truth_rows
    rep = verify(str(out))
    assert rep.ok, rep.problems
    assert all(Path(u).is_file() for u in read_shards(str(out)).column("clip_uri").to_pylist())
    if how == "copy":
        assert clip_files(staged) == truth_files  # the original is untouched


# -- 2. a lost commit record never becomes a duplicate row --------------------------------------


def test_a_lost_commit_record_is_rebuilt_from_the_rows_and_never_duplicates(tmp_path, base_out, inputs):
    out = fresh(base_out, tmp_path)
    truth = rows_of(out)
    (out / "_commits" / "commit-000000.json").unlink()
    rep = verify(str(out))
    assert any("commit-000000.json is missing" in p for p in rep.problems), rep.problems
    resume(out, inputs)
    assert rows_of(out) == truth  # no duplicate, no loss
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["clips"] == len(truth)
    rep = verify(str(out))
    assert rep.ok, rep.problems
    assert any("repaired" in n for n in rep.notes)


@pytest.mark.parametrize("damage", ["empty", "cut", "null", "list"])
def test_a_damaged_commit_record_is_named_by_verify_and_repaired_by_the_next_run(tmp_path, base_out, inputs, damage):
    out = fresh(base_out, tmp_path)
    truth = rows_of(out)
    records = sorted((out / "_commits").glob("commit-*.json"))
    victim = records[len(records) // 2]
    text = victim.read_text()
    victim.write_text({"empty": "", "cut": text[: len(text) // 2], "null": "null", "list": "[1, 2]"}[damage])
    rep = verify(str(out))
    assert any(f"{victim.name} is damaged" in p for p in rep.problems), rep.problems
    resume(out, inputs)
    assert rows_of(out) == truth
    assert verify(str(out)).ok, verify(str(out)).problems


def test_a_truncated_shard_is_set_aside_and_its_inputs_redone(tmp_path, base_out, inputs):
    out = fresh(base_out, tmp_path)
    truth = rows_of(out)
    part = sorted((out / "shards").glob("part-*.parquet"))[0]
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    assert any("does not parse" in p for p in verify(str(out)).problems)
    r = resume(out, inputs)
    assert r.processed >= 1  # the inputs whose rows were in it
    assert rows_of(out) == truth  # redone: the same clips, once each
    assert (out / "_damaged" / part.name).is_file()  # kept for a person to look at
    assert verify(str(out)).ok, verify(str(out)).problems


def test_a_missing_or_empty_clip_file_is_named_and_re_extracted_by_the_run(tmp_path, base_out, inputs):
    out = fresh(base_out, tmp_path)
    truth, files = rows_of(out), clip_files(out)
    (out / files[0]).unlink()
    (out / files[-1]).write_bytes(b"")
    problems = verify(str(out)).problems
    assert any("is missing" in p for p in problems) and any("is empty" in p for p in problems), problems
    resume(out, inputs)
    assert rows_of(out) == truth and clip_files(out) == files
    assert all((out / f).stat().st_size > 0 for f in files)
    assert verify(str(out)).ok, verify(str(out)).problems


def test_a_stray_parquet_in_shards_is_not_read(tmp_path, base_out):
    out = fresh(base_out, tmp_path)
    truth = rows_of(out)
    shutil.copy(next((out / "shards").glob("part-*.parquet")), out / "shards" / "subset.parquet")
    assert rows_of(out) == truth  # select, dedup and report read through read_shards
    assert any("subset.parquet is not part of any commit" in p for p in verify(str(out)).problems)


# -- 3, 4: no verb writes inside an OUT; a re-export never destroys the last one ----------------


def test_no_verb_but_run_writes_inside_an_out(tmp_path, base_out):
    out = fresh(base_out, tmp_path)
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    app = app_()
    one_line_error(runner.invoke(app, ["select", "-s", str(out), "-o", str(out / "shards")]), "inside the curate output")
    one_line_error(runner.invoke(app, ["select", "-s", str(out), "-o", str(out)]), "is the curate output")
    (tmp_path / "link").symlink_to(out / "clips", target_is_directory=True)
    one_line_error(runner.invoke(app, ["select", "-s", str(out), "-o", str(tmp_path / "link" / "sub")]), "curate output")
    sub = tmp_path / "sub"
    assert runner.invoke(app, ["select", "-s", str(out), "-o", str(sub)]).exit_code == 0
    one_line_error(runner.invoke(app, ["export", str(sub), "-o", str(out / "exp")]), "inside the curate output")
    one_line_error(runner.invoke(app, ["dedup", str(out), "-o", str(out / "dups")]), "inside the curate output")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
    assert rows_of(out) == rows_of(base_out)


def test_a_failed_re_export_leaves_the_previous_export_whole(tmp_path, base_out):
    out = fresh(base_out, tmp_path)
    app = app_()
    sub, exp = tmp_path / "sub", tmp_path / "exp"
    assert runner.invoke(app, ["select", "-s", str(out), "-o", str(sub)]).exit_code == 0
    assert runner.invoke(app, ["export", str(sub), "-o", str(exp), "--max-rows", "2"]).exit_code == 0
    first = {p.name: p.read_bytes() for p in exp.iterdir()}
    uri = pq.read_table(sub / "subset.parquet").column("clip_uri").to_pylist()[3]
    os.unlink(uri)
    one_line_error(runner.invoke(app, ["export", str(sub), "-o", str(exp), "--max-rows", "3"]), "is missing", "unchanged")
    assert {p.name: p.read_bytes() for p in exp.iterdir()} == first  # untouched, index.json included
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no work left aside
    from curate.dataset import iter_samples

    assert len(list(iter_samples(exp))) == len(rows_of(base_out))


# -- tracebacks and dead ends on plausible damage or mistakes ----------------------------------


def test_init_from_a_file_that_is_not_a_checkpoint_is_one_line_and_creates_nothing(tmp_path, base_out):
    app = app_()
    (tmp_path / "notes.txt").write_text("my notes")
    part = next((base_out / "shards").glob("part-*.parquet"))
    for bad in (tmp_path / "notes.txt", part, tmp_path / "nope.pt"):
        run_dir = tmp_path / f"run-{bad.stem}"
        r = runner.invoke(app, ["train", "train/tiny", "--data", str(base_out), "-o", str(run_dir), "--init-from", str(bad)])
        one_line_error(r, str(bad.name))
        assert not run_dir.exists()


def test_inspect_a_rescored_out(tmp_path, base_out):
    from pipelines.rescore import rescore

    out = fresh(base_out, tmp_path)
    rescore(str(out), ["scorers.quality.enabled=true"])
    r = runner.invoke(app_(), ["inspect", str(out)])
    assert r.exit_code == 0 and "rescore of quality" in r.output, r.output


def test_a_rescore_that_changes_nothing_leaves_the_config_hash(tmp_path, base_out):
    from pipelines.rescore import rescore

    out = fresh(base_out, tmp_path)
    before = json.loads((out / "manifest.json").read_text())["config_hash"]
    commits = sorted(p.name for p in (out / "_commits").iterdir())
    r = runner.invoke(app_(), ["rescore", str(out), "--set", "sample.decoders=[pyav]"])
    assert r.exit_code == 0 and "nothing to rescore" in r.output, r.output
    assert json.loads((out / "manifest.json").read_text())["config_hash"] == before
    assert sorted(p.name for p in (out / "_commits").iterdir()) == commits
    assert rescore(str(out), []).parts_done == 0


def test_a_rescore_killed_half_way_is_named_with_the_command_that_finishes_it(tmp_path, base_out, inputs):
    import subprocess
    import sys

    from curate.shards import ConfigMismatch
    from pipelines.rescore import rescore

    out = fresh(base_out, tmp_path)
    cli = [sys.executable, "-m", "curate_cli.main", "rescore", str(out), "--set", "scorers.quality.enabled=true"]
    env = {**os.environ, "CI": "true", "CURATE_FAULT": "before_parts@2"}
    assert subprocess.run(cli, capture_output=True, text=True, env=env, timeout=300).returncode == -9
    problems = verify(str(out)).problems
    assert any("stopped before its end" in p and "--set 'scorers.quality.enabled=true'" in p for p in problems), problems
    with pytest.raises(ConfigMismatch, match="scorers.quality.enabled=true"):
        resume(out, inputs)  # the run's own config: refused, naming how to finish
    with pytest.raises(ConfigMismatch, match="finish it with"):
        rescore(str(out), ["scorers.flow.enabled=true"])
    r = subprocess.run(cli, capture_output=True, text=True, env={**os.environ, "CI": "true"}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert verify(str(out)).ok, verify(str(out)).problems


def test_a_truncated_shard_never_crashes_rescore_nor_half_rescores(tmp_path, base_out, inputs):
    from pipelines.rescore import rescore

    out = fresh(base_out, tmp_path)
    truth = rows_of(out)
    part = sorted((out / "shards").glob("part-*.parquet"))[-1]
    part.write_bytes(part.read_bytes()[:100])
    res = rescore(str(out), ["scorers.quality.enabled=true"])
    assert res.manifest["counts"]["to_retry"] >= 1  # the inputs whose rows it held: redone by a run
    rows = read_shards(str(out)).to_pylist()
    assert rows and all(r["quality_sharpness"] is not None for r in rows)  # every row left is rescored
    resume(out, inputs, "scorers.quality.enabled=true")
    assert rows_of(out) == truth
    assert all(r["quality_sharpness"] is not None for r in read_shards(str(out)).to_pylist())
    assert verify(str(out)).ok, verify(str(out)).problems


@pytest.mark.parametrize("item, needle", [
    ("clips.max_s=.inf", "--set 'clips.max_s=.inf'"),
    ("clips.min_s=-1", "--set 'clips.min_s=-1'"),
    ("clips.nope=1", "--set 'clips.nope=1'"),
])
def test_set_errors_blame_the_set_and_infinity_is_refused(tmp_path, inputs, item, needle):
    r = runner.invoke(app_(), ["run", "demo", "-i", str(inputs), "-o", str(tmp_path / "o"), "--set", item])
    one_line_error(r, needle)
    assert "demo.yaml" not in r.output.split("\n")[0]
    assert not (tmp_path / "o").exists()


def test_a_file_named_like_a_recipe_does_not_shadow_it(tmp_path, inputs, monkeypatch):
    from curate.config import load_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_bytes(b"\x00\x01 not yaml: [")
    assert load_config("demo").name == "demo"
    with pytest.raises(Exception, match="demo"):
        load_config("./demo")  # named as a path: that file, and the error says so


def test_fingerprint_covers_the_whole_file_under_2_mib(tmp_path):
    """Two files of 1-2 MiB that differ after their first MiB were called duplicates."""
    from curate.storage import fingerprint

    rng = __import__("numpy").random.default_rng(0)
    data = rng.integers(0, 256, (3 << 19), dtype="uint8").tobytes()  # 1.5 MiB
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(data)
    b.write_bytes(data[:-10] + b"0123456789")
    c.write_bytes(data)
    assert fingerprint(str(a), len(data)) != fingerprint(str(b), len(data))
    assert fingerprint(str(a), len(data)) == fingerprint(str(c), len(data))


def test_a_duplicate_input_is_quarantined_before_any_work(tmp_path, three_shots, text_video):
    """Byte-identical copies were cut and encoded in full before the committer called them
    duplicates: now a stat and a fingerprint find them first, in one run or on a resume."""
    d = tmp_path / "in"
    d.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(three_shots.path, d / name)
    shutil.copy(text_video.path, d / "c.mp4")
    out = tmp_path / "out"
    r = run(cfg(), sorted(str(p) for p in d.iterdir()), str(out))
    assert r.processed == 3 and r.manifest["counts"]["quarantine_reasons"] == {"duplicate": 1}
    records = [v for f in sorted((out / "_commits").glob("*.json")) for v in json.loads(f.read_text())["videos"]]
    dup = next(v for v in records if v["quarantine"])
    assert dup["source_uri"].endswith("b.mp4") and "a.mp4" in dup["quarantine"]["detail"]
    assert dup["stage_seconds"] == {} and dup["clips"] == 0  # no probe, no cuts, no clips
    shutil.copy(text_video.path, d / "d.mp4")  # a copy of a done input, on a resume
    r = run(cfg(), sorted(str(p) for p in d.iterdir()), str(out))
    assert r.processed == 1 and r.manifest["counts"]["quarantine_reasons"] == {"duplicate": 2}
    assert verify(str(out)).ok, verify(str(out)).problems
