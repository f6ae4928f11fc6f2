"""Near-duplicate grouping at scale, and the hash's cost against a decode.

1. Grouping: synthetic clip hashes (uniform random 64-bit pHashes, 6 crops x (1 mean + 5
   frames) per clip) with planted near-duplicates (10% of clips get 1-3 copies with up to 4 bits
   flipped per hash, as re-encodes and rescales give), grouped by curate's LSH + verification +
   components at 100k and 1M clips: wall time, the 1M/100k ratio against n log n (12x), and the
   share of planted pairs found.
2. Hash cost: per real clip, the phash scorer on its sampled frames against a bare PyAV decode of
   the clip (target <= 0.1x; the frames come from the extraction decode in a run).
Run: python bench/dedup.py [--sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic(n: int, seed: int = 0, dup_share: float = 0.1, k: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean (n, 6), frames (n, k, 6), truth label per clip)."""
    from curate.dedup import N_CROPS

    rng = np.random.default_rng(seed)
    originals = int(n * (1 - dup_share))
    mean = rng.integers(0, 2**63, size=(n, N_CROPS), dtype=np.uint64) | (rng.integers(0, 2, size=(n, N_CROPS), dtype=np.uint64) << np.uint64(63))
    frames = rng.integers(0, 2**63, size=(n, k, N_CROPS), dtype=np.uint64)
    label = np.arange(n)
    src = rng.integers(0, originals, size=n - originals)
    label[originals:] = src
    for arr, shape in ((mean, (n - originals, N_CROPS)), (frames, (n - originals, k, N_CROPS))):
        flips = np.zeros(shape, np.uint64)
        for _ in range(4):  # up to 4 bits per hash (a bit may be drawn twice)
            bit = rng.integers(0, 64, size=shape).astype(np.uint64)
            on = rng.random(shape) < 0.8
            flips ^= np.where(on, np.uint64(1) << bit, np.uint64(0))
        arr[originals:] = arr[src] ^ flips
    return mean, frames, label


def grouping(sizes: list[int]) -> None:
    from curate.dedup import components
    from datatools.dedup import DedupParams, hash_edges

    p = DedupParams()
    times = {}
    for n in sizes:
        mean, frames, truth = synthetic(n)
        t = time.perf_counter()
        edges = hash_edges(mean, frames, p)
        label = components(n, edges)
        times[n] = time.perf_counter() - t
        dups = np.nonzero(truth != np.arange(n))[0]
        found = float((label[dups] == label[truth[dups]]).mean())
        false = int(len(np.unique(label)) - len(np.unique(truth)))
        print(f"{n:>9,} clips: {times[n]:6.1f} s, {len(edges):,} verified pairs, planted duplicates found {found:.4f}, "
              f"groups {len(np.unique(label)):,} (truth {len(np.unique(truth)):,}; {false:+,})", flush=True)  # fmt: skip
    if len(sizes) >= 2:
        a, b = sizes[0], sizes[-1]
        nlogn = (b * math.log(b)) / (a * math.log(a))
        print(f"time {b:,} / {a:,}: {times[b] / times[a]:.1f}x (n log n: {nlogn:.1f}x, n^2: {(b / a) ** 2:.0f}x)")


def hash_cost() -> None:
    import av

    from curate.sample import SamplePlan, decode_frames
    from curate.synth import near_duplicates
    from scoring.phash import PHashParams, PHashScorer

    data = ROOT / "tests" / "data"
    plan: SamplePlan = PHashScorer.plans(PHashParams())[0]
    scorer = PHashScorer(PHashParams())
    with tempfile.TemporaryDirectory() as d:
        clips = near_duplicates(str(data / "pyscenedetect__testvideo.mp4"), 1.2, 3.5, d, "t", max_side=1280)[:3]
        clips += near_duplicates(str(data / "opencv__cup.mp4"), 1.0, 3.0, d, "c", max_side=640)[:3]
        dec = hsh = 0.0
        scorer.score(np.zeros((2, 72, 128, 3), np.uint8))  # imports (imagehash, scipy) out of the timing
        for c in clips:
            t = time.perf_counter()
            with av.open(c) as f:
                s = f.streams.video[0]
                s.thread_type = "AUTO"
                n = sum(1 for _ in f.decode(s))
            dec += time.perf_counter() - t
            frames, _ = decode_frames(c, set(plan.indices(n, 25.0)), ["pyav"])
            import cv2

            arr = np.stack([cv2.resize(frames[k], plan.size_for(frames[k].shape[1], frames[k].shape[0]),
                                       interpolation=cv2.INTER_AREA) for k in sorted(frames)])  # fmt: skip
            t = time.perf_counter()
            scorer.score(arr)
            hsh += time.perf_counter() - t
        print(f"hash per clip {1000 * hsh / len(clips):.1f} ms, bare PyAV decode per clip {1000 * dec / len(clips):.1f} ms: "
              f"{hsh / dec:.3f}x ({len(clips)} real clips of 3-3.5 s at 640-1280 px)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    args = ap.parse_args(argv)
    hash_cost()
    grouping(args.sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
