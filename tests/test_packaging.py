"""curate runs from its wheel, not only from its source tree: the recipes and the demo clips are
package data, and the CLI works from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_the_wheel_runs_the_demo_from_another_directory(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True)  # fmt: skip
    (wheel,) = wheels.glob("curate-*.whl")
    venv = tmp_path / "venv"
    # the dependencies come from this environment's site-packages (no downloads), listed in a .pth
    # (--system-site-packages would see the base interpreter's, not a venv's); curate itself only
    # from the wheel, which the venv's own site-packages puts ahead of them. Plain path lines: the
    # .pth files in those directories (an editable install of curate) are not processed.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "_curate_test_deps.pth").write_text("\n".join(paths) + "\n")
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", str(wheel)], check=True,
                   capture_output=True)  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "CI": "true", "PYTHONPATH": ""}
    where = subprocess.run([venv / "bin" / "python", "-c", "import curate, pipelines; print(curate.__file__, pipelines.__file__)"],
                           cwd=elsewhere, capture_output=True, text=True, env=env, check=True).stdout  # fmt: skip
    assert str(ROOT) not in where and str(venv) in where
    r = subprocess.run([venv / "bin" / "curate", "demo", "-o", "d", "--set", "executor=local"], cwd=elsewhere,
                       capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "done: 6 inputs processed" in r.stderr and (elsewhere / "d" / "curated" / "manifest.json").is_file()
    r = subprocess.run([venv / "bin" / "curate", "verify", "d/curated"], cwd=elsewhere, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
