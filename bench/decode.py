"""Frame reads by index: OpenCV, PyAV and decord on the access patterns curate has.

decord is built for random access (it indexes the stream at open and seeks to the keyframe before
each wanted frame); curate's own readers (curate.sample: OpenCV grab/retrieve, PyAV) decode from
the first frame up to the last wanted one. Which is faster depends on where the frames are, so
each pattern is timed on the files it is used on, all readers in one run, same frames:

- `sample`: the frames the scorers ask of a stored clip when the sample step or `curate rescore`
  decodes it (the OCR plan's 0.1/0.5/0.9 and pHash's five frames: 8 indices over the clip);
- `trainer`: 16 frames at 8 fps from the clip start (pipelines/t2v_data.decode_clip);
- `source`: 8 frames at random places of a whole source video (reading a clip's frames back
  from its source, e.g. for a reference at source resolution).

Every reader must return the same frames (checked: mean abs difference per frame against
PyAV's); the times are the sum over the files, best of --repeat.
Run: python bench/decode.py OUT [--repeat 2]   (OUT: `curate run demo` on ../shared/data)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def read_decord(path: str, wanted: set[int]) -> dict[int, np.ndarray]:
    from decord import VideoReader, cpu

    vr = VideoReader(path, ctx=cpu(0), num_threads=1)
    idx = sorted(i for i in wanted if i < len(vr))
    return dict(zip(idx, vr.get_batch(idx).asnumpy()))


def readers() -> dict:
    from curate.sample import DECODERS

    return {"opencv": DECODERS["opencv"], "pyav": DECODERS["pyav"], "decord": read_decord}


def patterns(out: str, sources: list[str], seed: int = 0) -> dict[str, list[tuple[str, set[int]]]]:
    from curate import schema
    from curate.sample import SamplePlan, clip_frames
    from curate.shards import read_shards

    rows = read_shards(out).to_pylist()
    ocr = SamplePlan("ocr", positions=(0.1, 0.5, 0.9))
    phash = SamplePlan("phash", positions=tuple((k + 0.5) / 5 for k in range(5)))
    sample = [(r[schema.CLIP_URI], set(ocr.indices(clip_frames(r), r[schema.FPS])) | set(phash.indices(clip_frames(r), r[schema.FPS])))
              for r in rows]  # fmt: skip
    trainer = []
    for r in rows:
        step = max(1.0, r[schema.FPS] / 8.0)
        trainer.append((r[schema.CLIP_URI], {min(clip_frames(r) - 1, int(round(k * step))) for k in range(16)}))
    rng = np.random.default_rng(seed)
    source = []
    for s in sources:
        import av

        with av.open(s) as c:
            n = c.streams.video[0].frames or sum(1 for _ in c.decode(video=0))
        source.append((s, set(rng.choice(n, size=min(8, n), replace=False).tolist())))
    return {"sample": sample, "trainer": trainer, "source": source}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--videos", type=Path, default=ROOT.parent / "shared" / "data" / "videos")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    sources = sorted(str(p) for p in a.videos.iterdir() if p.suffix in (".mp4", ".mkv", ".avi"))
    pats = patterns(a.out, sources)
    print(f"{'pattern':8s} {'files':>5s} {'frames':>6s} " + " ".join(f"{n:>14s}" for n in readers()) + "   (s; x pyav)")
    for name, items in pats.items():
        secs, got = {}, {}
        for rname, fn in readers().items():
            best = float("inf")
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                frames = [fn(path, wanted) for path, wanted in items]
                best = min(best, time.perf_counter() - t0)
            secs[rname], got[rname] = best, frames
        for rname in secs:  # the same frames as PyAV's, or the comparison means nothing
            pairs = [(f[k], ref[k]) for f, ref in zip(got[rname], got["pyav"]) for k in ref if k in f]
            turned = sum(x.shape != y.shape for x, y in pairs)  # OpenCV applies a display rotation, PyAV does not
            diffs = [np.abs(x.astype(int) - y).mean() for x, y in pairs if x.shape == y.shape]
            missing = sum(len(ref) - len(set(ref) & set(f)) for f, ref in zip(got[rname], got["pyav"]))
            if missing or turned or (diffs and max(diffs) > 2.0):
                print(f"  {rname}: {missing} frames missing, {turned} rotated, max mean abs diff {max(diffs, default=0):.2f} against pyav")
        frames = sum(len(w) for _, w in items)
        print(f"{name:8s} {len(items):5d} {frames:6d} " + " ".join(f"{secs[r]:7.2f} ({secs[r] / secs['pyav']:4.2f})" for r in secs))
    print(f"machine: 2 CPUs, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
