"""Composition in one place: the layering contract (import-linter) and a scorer added in one place."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pytest

from curate import registry, schema
from curate.config import load_config
from curate.params import Strict
from curate.sample import SamplePlan, frames_for
from curate.shards import read_shards
from curate.stage import Resources, StageBase, score_each
from pipelines.curate import run

ROOT = Path(__file__).parents[1]


def lint(root: Path) -> subprocess.CompletedProcess:
    # the one installed beside this interpreter (a venv's), else the one on PATH
    beside = Path(sys.executable).parent / "lint-imports"
    exe = str(beside) if beside.is_file() else shutil.which("lint-imports") or "lint-imports"
    return subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")],
                          cwd=root, capture_output=True, text=True, env={"PYTHONPATH": str(root), "PATH": ""})  # fmt: skip


def test_layers_hold_and_the_contract_bites(tmp_path):
    ok = lint(ROOT)
    assert ok.returncode == 0, ok.stdout[-3000:]
    for pkg in ("curate", "scoring", "pipelines"):  # a copy of the tree with one import the wrong way
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("data", "configs", "__pycache__"))
    (tmp_path / "curate" / "wrong_way.py").write_text("def f():\n    from pipelines import select  # noqa\n")
    bad = lint(tmp_path)
    assert bad.returncode != 0 and "curate.wrong_way -> pipelines.select" in bad.stdout


class ToyParams(Strict):
    enabled: bool = False


class ToyScorer(StageBase):
    """Mean luma of the middle frame, written where the quality scorer would (it is off here)."""

    name: ClassVar[str] = "toy"
    Params: ClassVar[type] = ToyParams
    resources: ClassVar[Resources] = Resources(batch_size=4, actors=1)  # an actor: setup() once per replica
    output_columns: ClassVar[tuple[str, ...]] = (schema.QUALITY_BRIGHTNESS,)

    def __init__(self, params: ToyParams):
        self.params = params
        self.scale = None

    @classmethod
    def plans(cls, params: ToyParams) -> list[SamplePlan]:
        return [SamplePlan(cls.name, positions=(0.5,), max_side=32)]

    def setup(self) -> None:
        self.scale = 1 / 255.0

    def __call__(self, batch: pa.Table) -> pa.Table:
        return score_each(batch, self.name, frames_for(batch, self.name), self.output_columns,
                          lambda f: {schema.QUALITY_BRIGHTNESS: float(np.mean(f)) * self.scale})  # fmt: skip


@pytest.fixture()
def toy():
    registry.register(ToyScorer)  # the one place a new scorer is added (a plugin: an entry point)
    yield
    registry.unregister("toy")


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_scorer_added_in_one_place_runs_locally_and_on_ray(tmp_path, toy, three_shots, executor, request):
    if executor == "ray":
        from ray import cloudpickle  # Ray's own copy: what its workers unpickle with

        request.getfixturevalue("ray_session")
        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/
    cfg = load_config(None, [f"executor={executor}", "clips.min_s=1", "clips.max_s=3", "scorers.flow.enabled=false",
                             "scorers.ocr.enabled=false", "scorers.quality.enabled=false", "scorers.toy.enabled=true"])  # fmt: skip
    assert list(type(cfg.scorers).model_fields)[-1] == "toy"  # default order: after the shipped ones
    r = run(cfg, [three_shots.path], str(tmp_path / "out"))
    rows = read_shards(str(tmp_path / "out")).to_pylist()
    assert len(rows) == 5 and all(0.0 < x[schema.QUALITY_BRIGHTNESS] < 1.0 for x in rows)
    assert r.manifest["scorers"]["toy"] == {"enabled": True}
