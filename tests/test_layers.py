"""Composition in one place: the layering contract (import-linter) and a scorer added in one place."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from curate import registry
from curate.config import load_config
from curate.shards import read_shards
from pipelines.run import run

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
    for pkg in ("curate", "scoring", "pipelines", "datatools", "t2v", "curate_cli"):  # a copy of the tree with one import the wrong way
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("data", "configs", "__pycache__"))
    (tmp_path / "curate" / "wrong_way.py").write_text("def f():\n    from datatools import select  # noqa\n")
    bad = lint(tmp_path)
    assert bad.returncode != 0 and "curate.wrong_way -> datatools.select" in bad.stdout


def test_no_module_imports_itself_back():
    """No import cycle between modules, lazy and type-only imports included (grimp: what import-linter reads)."""
    import grimp

    graph = grimp.build_graph("curate", "scoring", "pipelines", "datatools", "t2v", "curate_cli")
    cycles = [(a, b) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
              if a != b and graph.chain_exists(importer=b, imported=a)]  # fmt: skip
    assert not cycles, cycles[:5]


PLUGIN = {
    "pyproject.toml": """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "curate-toy-scorer"
version = "0.1"

[project.entry-points."curate.scorers"]
toy = "curate_toy:ToyScorer"

[tool.setuptools]
packages = ["curate_toy"]
""",
    "curate_toy/__init__.py": """
from typing import ClassVar

import numpy as np
import pyarrow as pa

from curate.params import Strict
from curate.sample import SamplePlan
from curate.stage import Resources, StageBase

TOY_LUMA = "toy_luma"


class ToyParams(Strict):
    enabled: bool = False
    scale: float = 1.0


class ToyScorer(StageBase):
    \"\"\"Mean luma of the middle frame, in its own column.\"\"\"

    name: ClassVar[str] = "toy"
    order: ClassVar[int] = 95
    Params: ClassVar[type] = ToyParams
    resources: ClassVar[Resources] = Resources(batch_size=4, actors=1)  # an actor: setup() once per replica
    output_fields: ClassVar[tuple] = (pa.field(TOY_LUMA, pa.float32()),)

    def __init__(self, params):
        self.params = params
        self.unit = None

    @classmethod
    def plans(cls, params):
        return [SamplePlan(cls.name, positions=(0.5,), max_side=32)]

    def setup(self):
        self.unit = 1 / 255.0

    def score(self, frames):
        return {TOY_LUMA: float(np.mean(frames)) * self.unit * self.params.scale}
""",
}


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """A scorer in a package of its own, built and installed (pip, into a directory on sys.path):
    an entry point and its own column, nothing in curate/ edited."""
    src, site = tmp_path_factory.mktemp("plugin-src"), tmp_path_factory.mktemp("plugin-site")
    for name, text in PLUGIN.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text.lstrip())
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site),
                    str(src)], check=True, capture_output=True)  # fmt: skip
    sys.path.insert(0, str(site))
    registry.reload()
    import curate_toy

    yield curate_toy
    sys.path.remove(str(site))
    sys.modules.pop("curate_toy", None)
    registry.reload()


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_scorer_from_a_separate_package_runs_and_reaches_select_report_and_rescore(tmp_path, plugin, three_shots,
                                                                                     executor, request):
    from datatools.report import write_report
    from datatools.select import Filter, Rules, run_select
    from pipelines.rescore import rescore

    if executor == "ray":
        from ray import cloudpickle  # Ray's own copy: what its workers unpickle with

        request.getfixturevalue("ray_session")
        cloudpickle.register_pickle_by_value(plugin)  # Ray's workers have not the plugin's directory on their path
    cfg = load_config(None, [f"executor={executor}", "clips.min_s=1", "clips.max_s=3", "scorers.flow.enabled=false",
                             "scorers.ocr.enabled=false", "scorers.quality.enabled=false", "scorers.toy.enabled=true"])  # fmt: skip
    assert list(type(cfg.scorers).model_fields)[-1] == "toy"  # its config section, after the shipped ones
    out = str(tmp_path / "out")
    r = run(cfg, [three_shots.path], out)
    table = read_shards(out)
    assert table.schema.field("toy_luma").type == pa.float32()  # its own declared column, in the shards
    luma = table.column("toy_luma").to_pylist()
    assert len(luma) == 5 and all(0.0 < x < 1.0 for x in luma)
    assert r.manifest["scorers"]["toy"] == {"enabled": True, "scale": 1.0}
    if executor == "ray":
        return
    cut = sorted(luma)[2]
    funnel = run_select(out, tmp_path / "subset", Rules(filters=[Filter(where=f"toy_luma >= {cut}")]))
    assert funnel["output"]["clips"] == sum(x >= cut for x in luma) == 3
    assert "toy_luma" in write_report(out, str(tmp_path / "report.html")).read_text()
    res = rescore(out, ["scorers.toy.scale=2"])
    assert res.scorers == ["toy"]
    again = dict(zip(read_shards(out).column("clip_id").to_pylist(), read_shards(out).column("toy_luma").to_pylist()))
    before = dict(zip(table.column("clip_id").to_pylist(), luma))
    # rescore decodes the clip files (the run scored the source's frames): the same up to the encode
    assert all(again[k] == pytest.approx(2 * v, rel=0.03) for k, v in before.items()), (again, before)
