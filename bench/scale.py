"""Per-input costs where they add up: many small inputs through `curate run`.

What a run spends on each input beyond decoding it (watchdog child, Ray task, commit record,
lease renewals, manifest), the driver's peak memory at N/10 and N inputs, the commit records
written, how long a resume of an OUT with 90% done takes to reach its first new input, and
`inspect` / `verify` / `select` on the N-input OUT. The peer is a bare decode of the same files
in the same run (PyAV, as many processes as the run has workers).

Inputs: one ffmpeg call writes an N-second stream (distinct content throughout: testsrc2 with a
moving hue; a hard cut every 7.3 s) and the segment muxer cuts it into N files of 1-3 s, so
generating 10,000 inputs takes one encoder start (455 s here at 10,000, most of it muxing), not
10,000 of them.

Run: python bench/scale.py [--inputs 1000] [--workers 2] [--executor ray|local] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETS = ["scorers.flow.enabled=false", "scorers.ocr.enabled=false", "scorers.quality.enabled=false",
        "scorers.phash.enabled=false", "clips.extract=false", "clips.min_s=0.5", "shards.max_rows=1000"]  # fmt: skip

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
from curate.config import load_config
from curate.storage import resolve_inputs
from pipelines.run import run
t0 = time.perf_counter()
cfg = load_config("demo", {sets!r})
inputs = sorted(resolve_inputs([{inputs!r}]))[:{n}]
first = []
def progress(done, total):
    if done and not first:
        first.append(time.perf_counter() - t0)
r = run(cfg, inputs, {out!r}, on_progress=progress)
print(json.dumps({{"wall_s": time.perf_counter() - t0, "first_s": first[0] if first else None,
                  "processed": r.processed, "skipped": r.skipped, "clips": r.manifest["counts"]["clips"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def make_inputs(directory: Path, n: int, seed: int = 0) -> None:
    """N files of 1-3 s (64x64, 24 fps) cut from one generated stream."""
    from curate.video import ffmpeg_exe

    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    times, t = [], 0.0
    for _ in range(n - 1):
        t += rng.choice([1.0, 1.5, 2.0, 2.5, 3.0])
        times.append(t)
    total = t + 2.0
    points = ",".join(f"{x:.3f}" for x in times)
    vf = "hue=h='360*t/97+if(lt(mod(t\\,7.3)\\,3.65)\\,0\\,180)'"  # distinct colours over time, a hard cut every 7.3 s
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=64x64:rate=24",
                    "-t", f"{total:.3f}", "-vf", vf, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                    "-force_key_frames", points, "-f", "segment", "-segment_times", points, "-reset_timestamps", "1",
                    str(directory / "%05d.mp4")], check=True)  # fmt: skip


def _decode(path: str) -> int:
    import av

    with av.open(path) as c:
        return sum(1 for _ in c.decode(video=0))


def bare_decode(files: list[str], workers: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        frames = sum(pool.map(_decode, files, chunksize=16))
    return time.perf_counter() - t0, frames


def curate_run(inputs: Path, n: int, out: Path, workers: int, executor: str) -> dict:
    sets = [*SETS, f"executor={executor}", f"ray.num_cpus={workers}"]
    code = CHILD.format(root=str(ROOT), sets=sets, inputs=str(inputs), n=n, out=str(out))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "CI": "true"})
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def cli_seconds(*args: str) -> float:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "curate_cli.main", *args], capture_output=True, text=True,
                       env={**os.environ, "CI": "true"})  # fmt: skip
    if p.returncode not in (0, 1):
        raise SystemExit(p.stderr[-2000:])
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--executor", default="ray", choices=["ray", "local"])
    ap.add_argument("--keep", default=None, help="work here and keep it (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    n, small = args.inputs, max(1, args.inputs // 10)
    work = Path(args.keep or tempfile.mkdtemp(prefix="curate-scale-"))
    try:
        t0 = time.perf_counter()
        make_inputs(work / "in", n)
        files = sorted(str(p) for p in (work / "in").glob("*.mp4"))
        print(f"{len(files)} inputs generated in {time.perf_counter() - t0:.1f} s")
        dec_s, frames = bare_decode(files, args.workers)
        print(f"bare decode ({args.workers} processes, PyAV): {dec_s:.1f} s, {frames} frames")
        few = curate_run(work / "in", small, work / "out_small", args.workers, args.executor)
        full = curate_run(work / "in", n, work / "out", args.workers, args.executor)
        commits = len(list((work / "out" / "_commits").glob("commit-*.json")))
        over_ms = (full["wall_s"] - dec_s) / n * 1000
        print(f"curate run, {n} inputs ({args.executor}, {args.workers} workers, clips.extract=false, scorers off): "
              f"{full['wall_s']:.1f} s = {full['wall_s'] / dec_s:.2f}x the bare decode; {over_ms:.0f} ms per input beyond "
              f"its decode; {full['clips']} clip rows; {commits} commit records")  # fmt: skip
        print(f"driver peak RSS: {few['peak_rss_mb']:.0f} MB at {small} inputs, {full['peak_rss_mb']:.0f} MB at {n} "
              f"({full['peak_rss_mb'] / few['peak_rss_mb']:.2f}x)")  # fmt: skip
        # a resume with 90% done: the first 90% in an OUT, then all of them
        part = int(n * 0.9)
        curate_run(work / "in", part, work / "out_resume", args.workers, args.executor)
        res = curate_run(work / "in", n, work / "out_resume", args.workers, args.executor)
        print(f"resume with {part} of {n} done: first new input done {res['first_s']:.1f} s after start "
              f"(wall {res['wall_s']:.1f} s for {res['processed']} new inputs)")  # fmt: skip
        out = str(work / "out")
        times = {"inspect": cli_seconds("inspect", out), "verify": cli_seconds("verify", out),
                 "select": cli_seconds("select", "-s", out, "--where", "duration_s >= 1", "-o", str(work / "subset"))}  # fmt: skip
        print("on the {}-input OUT: ".format(n) + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
