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

`--s3`: the same inputs uploaded to a local S3 server (moto): the listing of `-i s3://...` and
the run with every input downloaded by its worker.

Run: python bench/scale.py [--inputs 1000] [--workers 2] [--executor ray|local] [--keep DIR] [--s3]
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


def from_s3(work: Path, files: list[str], dec_s: float, args) -> int:
    """The same inputs uploaded to a moto server: how long `-i s3://bucket/prefix/` takes to list,
    and the run with every input downloaded by its worker (OUT on local disk)."""
    import socket

    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})  # fmt: skip
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="scale")
        t0 = time.perf_counter()
        for f in files:
            s3.upload_file(f, "scale", f"in/{Path(f).name}")
        print(f"uploaded {len(files)} inputs in {time.perf_counter() - t0:.1f} s")
        from curate.storage import resolve_inputs

        t0 = time.perf_counter()
        listed = resolve_inputs(["s3://scale/in/"])
        print(f"listing s3://scale/in/: {len(listed)} inputs in {time.perf_counter() - t0:.2f} s")
        n = len(files)
        full = curate_run("s3://scale/in/", n, work / "out_s3", args.workers, args.executor)
        over_ms = (full["wall_s"] - dec_s) / n * 1000
        print(f"curate run, {n} inputs from S3 ({args.executor}, {args.workers} workers): {full['wall_s']:.1f} s; "
              f"{over_ms:.0f} ms per input beyond the local bare decode; {full['clips']} clip rows; "
              f"driver peak RSS {full['peak_rss_mb']:.0f} MB")  # fmt: skip
    finally:
        server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--executor", default="ray", choices=["ray", "local"])
    ap.add_argument("--keep", default=None, help="work here and keep it (default: a temp dir, removed)")
    ap.add_argument("--s3", action="store_true", help="the inputs from a local S3 server (moto): listing and run only")
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
        if args.s3:
            return from_s3(work, files, dec_s, args)
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
