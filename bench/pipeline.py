"""The whole pass against its peers, in one run: a bare decode of the inputs, PySceneDetect's
`detect-adaptive split-video`, and `curate run` at source and at training resolution.

Every figure is wall time on the same inputs in the same session, as ratios to the bare decode
(ffmpeg `-f null`, its own threads, one input after the other) and to PySceneDetect (its CLI, one
input after the other, as users run it). curate runs as users run it too (`curate run`, the CLI,
Ray on all cores, Ray's start included), scorers off for the cuts + clips rows; the manifest's
stage_seconds (summed over workers) give the per-stage split. Model stages are absent here (no
weights), so the demo recipe's figure is flow, quality and OCR.
Run: python bench/pipeline.py [--videos DIR] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "videos"
sys.path.insert(0, str(ROOT))

NO_SCORERS = ["scorers.flow.enabled=false", "scorers.ocr.enabled=false", "scorers.quality.enabled=false",
              "scorers.caption_coca.enabled=false", "scorers.caption_vblip.enabled=false",
              "scorers.caption_llm.enabled=false", "scorers.clip.enabled=false"]  # fmt: skip
# (name, demo recipe overrides); the recipe's cut levels and clip lengths throughout
RUNS = [
    ("cuts+clips copy, source size", ["clips.mode=copy", "clips.short_side=null", *NO_SCORERS]),
    ("cuts+clips smart, source size", ["clips.mode=smart", "clips.short_side=null", *NO_SCORERS]),
    ("cuts+clips exact, source size", ["clips.mode=exact", "clips.short_side=null", *NO_SCORERS]),
    ("cuts+clips exact, 320 px", ["clips.mode=exact", "clips.short_side=320", *NO_SCORERS]),
    ("demo recipe (flow, quality, OCR), 320 px", ["clips.mode=exact", "clips.short_side=320"]),
    ("demo recipe, 320 px, executor local (no Ray)", ["clips.mode=exact", "clips.short_side=320", "executor=local"]),
    ("demo recipe, smart at source size (before)", ["clips.mode=smart", "clips.short_side=null"]),
]


def timed(cmd: list[str], env: dict | None = None) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: {(p.stdout + p.stderr)[-800:]}")
    return time.perf_counter() - t


def bare_decode(videos: list[Path]) -> float:
    from curate.video import ffmpeg_exe

    return sum(timed([ffmpeg_exe(), "-v", "error", "-i", str(v), "-map", "0:v:0", "-f", "null", "-"]) for v in videos)


def pyscenedetect(videos: list[Path], work: Path) -> float:
    """`scenedetect -i V detect-adaptive split-video` per input (PySceneDetect re-encodes each
    scene with ffmpeg: libx264, its defaults)."""
    from curate.video import ffmpeg_exe

    env = {**os.environ, "PATH": f"{Path(ffmpeg_exe()).parent}:{os.environ.get('PATH', '')}"}
    shim = work / "bin"  # PySceneDetect calls `ffmpeg` by name
    shim.mkdir(exist_ok=True)
    if not (shim / "ffmpeg").exists():
        (shim / "ffmpeg").symlink_to(ffmpeg_exe())
    env["PATH"] = f"{shim}:{env['PATH']}"
    total = 0.0
    for i, v in enumerate(videos):
        out = work / f"psd{i}"
        total += timed([sys.executable, "-m", "scenedetect", "-q", "-i", str(v), "-o", str(out), "detect-adaptive",
                        "split-video"], env)  # fmt: skip
    return total


def curate_run(videos_dir: Path, out: Path, sets: list[str]) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "curate_cli.main", "run", "demo", "-i", str(videos_dir), "-o", str(out)]
    for s in sets:
        cmd += ["--set", s]
    wall = timed(cmd, {**os.environ, "CI": "true", "RAY_USAGE_STATS_ENABLED": "0"})
    return wall, json.loads((out / "manifest.json").read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=Path, default=SHARED)
    ap.add_argument("--only", nargs="*", help="run names containing these words")
    args = ap.parse_args(argv)
    videos = sorted(p for p in args.videos.iterdir() if p.suffix in {".mp4", ".avi", ".mkv", ".mov", ".webm"})
    if not videos:
        print(f"no videos in {args.videos}")
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = Path(tmp)
        base = bare_decode(videos)
        psd = pyscenedetect(videos, work)
        print(f"{len(videos)} videos; bare decode {base:.1f} s; PySceneDetect detect-adaptive split-video {psd:.1f} s "
              f"({psd / base:.1f}x decode)")  # fmt: skip
        print("| run | wall s | x bare decode | x PySceneDetect | clips | stage seconds (summed over workers) |")
        print("|---|---|---|---|---|---|")
        for k, (name, sets) in enumerate(RUNS):
            if args.only and not any(w in name for w in args.only):
                continue
            wall, m = curate_run(videos[0].parent, work / f"out{k}", sets)
            stages = ", ".join(f"{s} {v:.1f}" for s, v in m["stage_seconds"].items())
            print(f"| {name} | {wall:.1f} | {wall / base:.2f} | {wall / psd:.2f} | {m['counts']['clips']} | {stages} |",
                  flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
