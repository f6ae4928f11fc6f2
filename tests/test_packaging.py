"""curate runs from its wheel, not only from its source tree: the recipes and the demo clips are
package data, and the CLI works from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
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
    # the dependencies come from this interpreter's site-packages (no downloads); curate itself only
    # from the wheel, which the venv's own site-packages puts ahead of any source checkout
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True,
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
