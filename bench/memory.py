"""Peak memory against corpus size: the same pipeline on 10 and on 100 inputs.

Streaming end to end means the peak RSS should not grow with the number of inputs (target:
the 100-input run within 1.1x of the 10-input run). Each run is a fresh child process running
`curate run` in-process (executor: local), so the figure covers decode, scoring and commits.
Run: python bench/memory.py [--small 10 --large 100]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import resource, sys
sys.path.insert(0, {root!r})
from curate.config import load_config
from curate.storage import resolve_inputs
from pipelines.run import run
cfg = load_config({cfg!r}, ["executor=local", "shards.max_rows=50"])
inputs = resolve_inputs([{inputs!r}])[:{n}]
r = run(cfg, inputs, {out!r})
print(r.manifest["counts"]["clips"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def make_corpus(directory: Path, n: int) -> None:
    from curate.synth import Scene, make_video

    directory.mkdir(parents=True, exist_ok=True)
    for k in range(n):  # distinct content (different seeds), two shots each
        make_video(str(directory / f"v{k:03d}.mp4"),
                   [Scene("moving", 1.5, seed=2 * k, speed_px=2.0), Scene("text", 1.5, seed=2 * k + 1, text=f"clip {k}")],
                   size=(160, 120))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=10)
    ap.add_argument("--large", type=int, default=100)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="curate-mem-") as tmp:
        corpus = Path(tmp) / "in"
        make_corpus(corpus, args.large)
        peaks = {}
        for n in (args.small, args.large):
            code = CHILD.format(root=str(ROOT), cfg=str(ROOT / "curate" / "configs" / "demo.yaml"), inputs=str(corpus), n=n,
                                out=str(Path(tmp) / f"out{n}"))  # fmt: skip
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            clips, kb = out.stdout.split()[-2:]
            peaks[n] = int(kb) / 1024
            print(f"{n:4d} inputs: {clips} clips, peak RSS {peaks[n]:.0f} MB")
        print(f"peak RSS ratio {args.large} vs {args.small} inputs: {peaks[args.large] / peaks[args.small]:.3f}x (target <= 1.1x)")
        print(f"machine: {os.cpu_count()} CPUs; children max RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
