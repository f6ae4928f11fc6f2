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
from pipelines.curate import run
from tests.test_reliability import cfg

runner = CliRunner()


def app_():
    from pipelines.cli import app

    return app


def one_line_error(result, *needles, code=2):
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    for n in needles:
        assert n in result.output, result.output


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
