"""`curate rescore`: scorer columns added or recomputed on an existing OUT, exactly-once."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from curate import schema
from curate.config import ConfigError, load_config
from curate.shards import ConfigMismatch, read_shards
from curate.verify import verify
from pipelines.run import run
from pipelines.rescore import rescore
from tests.conftest import assert_same_rows
from tests.conftest import DATA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cfg(**sets):
    base = {"executor": "local", "clips.min_s": 1, "clips.max_s": 3, "clips.short_side": 96, "shards.max_rows": 2,
            "scorers.flow.enabled": "false", "scorers.ocr.enabled": "false", "scorers.quality.enabled": "true"}
    base.update(sets)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, three_shots, text_video):
    d = tmp_path_factory.mktemp("rescore_in")
    shutil.copy(three_shots.path, d / "a.mp4")
    shutil.copy(text_video.path, d / "b.mp4")
    shutil.copy(DATA / "counter.mp4", d / "c.mp4")
    return sorted(str(p) for p in d.iterdir())


def by_id(out: str) -> dict[str, dict]:
    return {r[schema.CLIP_ID]: r for r in read_shards(out).to_pylist()}


def test_rescore_adds_a_scorer_as_a_fresh_run_would(tmp_path, inputs):
    out = str(tmp_path / "out")
    run(cfg(), inputs, out)
    before = by_id(out)
    assert before and all(r[schema.FLOW_MEAN] is None for r in before.values())
    res = rescore(out, ["scorers.flow.enabled=true"])
    assert res.scorers == ["flow"] and res.rows == len(before) and res.parts_done >= 2
    after = by_id(out)
    assert after.keys() == before.keys()  # the same clips, once each
    for cid, r in after.items():
        assert r[schema.FLOW_MEAN] is not None, r[schema.ERRORS]
        assert r[schema.QUALITY_SHARPNESS] == before[cid][schema.QUALITY_SHARPNESS]  # untouched
    assert verify(out).ok, verify(out).problems
    # the same scores as a run that had flow from the start (fed by the extraction decode, so up
    # to what the clip encode changed)
    fresh = str(tmp_path / "fresh")
    run(cfg(**{"scorers.flow.enabled": "true"}), inputs, fresh)
    ref = by_id(fresh)
    assert ref.keys() == after.keys()
    a = np.array([after[c][schema.FLOW_MEAN] for c in ref])
    b = np.array([ref[c][schema.FLOW_MEAN] for c in ref])
    assert np.all(np.abs(a - b) <= 0.1 * np.maximum(b, 0.5)), list(zip(a, b))
    # OUT's config is the new one now: a run resumes with it and is refused with the old one
    m = json.loads(open(os.path.join(out, "manifest.json")).read())
    assert m["config"]["scorers"]["flow"]["enabled"] is True
    assert run(cfg(**{"scorers.flow.enabled": "true"}), inputs, out).skipped == len(inputs)
    with pytest.raises(ConfigMismatch, match="rescored"):
        run(cfg(), inputs, out)
    # nothing changed: nothing to do
    assert rescore(out, []).parts_done == 0


def test_rescore_clears_a_scorer_switched_off_and_refuses_clip_changes(tmp_path, inputs):
    out = str(tmp_path / "out")
    run(cfg(), inputs[:1], out)
    with pytest.raises(ConfigError, match="clips.max_s"):
        rescore(out, ["clips.max_s=2"])
    res = rescore(out, ["scorers.quality.enabled=false"])
    assert res.cleared == ["quality"] and res.scorers == []
    assert all(r[schema.QUALITY_SHARPNESS] is None for r in by_id(out).values())
    assert verify(out).ok


def test_rescore_killed_between_parts_resumes_exactly_once(tmp_path, inputs):
    out = str(tmp_path / "out")
    run(cfg(), inputs, out)
    before = by_id(out)
    cli = [sys.executable, "-m", "curate_cli.main", "rescore", out, "--set", "scorers.flow.enabled=true"]
    env = {**os.environ, "CI": "true", "CURATE_FAULT": "after_record@2"}  # 2nd part: record written, not moved
    killed = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == -9, killed.stderr
    half = by_id(out)  # what a reader sees meanwhile: every clip once, some rescored
    assert half.keys() == before.keys()
    assert 0 < sum(r[schema.FLOW_MEAN] is not None for r in half.values()) < len(half)
    done = subprocess.run(cli, capture_output=True, text=True, env={**os.environ, "CI": "true"}, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 parts already rescored" in done.stdout + done.stderr
    after = by_id(out)
    assert after.keys() == before.keys() and all(r[schema.FLOW_MEAN] is not None for r in after.values())
    assert len(read_shards(out)) == len(before)
    assert verify(out).ok, verify(out).problems


def test_rescore_on_ray_equals_local(tmp_path, inputs, ray_session):
    out = str(tmp_path / "out")
    run(cfg(), inputs, out)
    shutil.copytree(out, tmp_path / "copy")  # a copy resolves its own clip files (round three)
    rescore(out, ["scorers.flow.enabled=true", "scorers.ocr.enabled=true"])
    rescore(str(tmp_path / "copy"), ["scorers.flow.enabled=true", "scorers.ocr.enabled=true", "executor=ray"])
    local = read_shards(out).sort_by(schema.CLIP_ID)
    ray_ = read_shards(str(tmp_path / "copy")).sort_by(schema.CLIP_ID)
    assert local.column(schema.CLIP_ID).to_pylist() == ray_.column(schema.CLIP_ID).to_pylist()
    cols = [schema.FLOW_MEAN, schema.OCR_AREA_RATIO, schema.QUALITY_SHARPNESS]  # OCR's DBNet: floats to FLOAT_RTOL
    assert_same_rows(local.select(cols).to_pylist(), ray_.select(cols).to_pylist())
    assert verify(str(tmp_path / "copy")).ok
