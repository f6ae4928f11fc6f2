"""Scoring cost on the demo corpus: per stage, and decode-once against decode-per-scorer.

Prints, for the clips the demo config produces: a bare decode of every clip (PyAV and OpenCV,
the peers), the `sample` step (one decode serving every scorer), each weight-free scorer's own
compute, and the same scorers each decoding for themselves. Ratios are what to read: the
machine is shared and absolute times are noise. `--videos DIR`: real footage (e.g.
../shared/data/videos) instead of the generated corpus. Run: python bench/scoring.py [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bare_decode_pyav(paths: list[str]) -> int:
    import av

    n = 0
    for p in paths:
        with av.open(p) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            n += sum(1 for _ in c.decode(s))
    return n


def bare_decode_opencv(paths: list[str]) -> int:
    import cv2

    n = 0
    for p in paths:
        cap = cv2.VideoCapture(p)
        while cap.grab():
            n += 1
        cap.release()
    return n


def best_of(repeat: int, fn):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main(argv: list[str] | None = None) -> int:
    from curate.config import load_config
    from curate.sample import SampleStage
    from curate.shards import read_shards
    from curate.synth import demo_corpus
    from curate.registry import scorers
    from pipelines.run import run

    SCORERS = scorers()

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--videos", type=Path, help="a folder of real videos instead of the generated corpus")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="curate-bench-"))
    try:
        if args.videos:
            shutil.copytree(args.videos, work / "inputs")
        else:
            demo_corpus(str(work / "inputs"))
            for clip in (ROOT / "curate" / "data").glob("*.mp4"):
                shutil.copy(clip, work / "inputs" / clip.name)
        cfg = load_config(ROOT / "curate" / "configs" / "demo.yaml", ["executor=local"] + [f"scorers.{n}.enabled=false" for n in SCORERS])
        run(cfg, [str(p) for p in sorted((work / "inputs").iterdir())], str(work / "out"))
        clips = read_shards(str(work / "out"))
        paths = clips.column("clip_uri").to_pylist()
        frames_total = int(sum(e - s for s, e in zip(clips.column("start_frame").to_pylist(), clips.column("end_frame").to_pylist())))
        table = clips.select(["clip_uri", "start_frame", "end_frame", "fps", "errors"])
        full = load_config(ROOT / "curate" / "configs" / "demo.yaml")
        scorers = [(cls, getattr(full.scorers, name)) for name, cls in SCORERS.items()
                   if name in ("flow", "camera", "ocr", "quality", "phash")]  # the demo recipe's weight-free ones
        instances = [cls(params) for cls, params in scorers]
        for s in instances:
            s.setup()
        plans = [p for s in instances for p in s.plans(s.params)]

        t_pyav, n = best_of(args.repeat, lambda: bare_decode_pyav(paths))
        t_cv, _ = best_of(args.repeat, lambda: bare_decode_opencv(paths))
        t_sample, sampled = best_of(args.repeat, lambda: SampleStage(full.sample, plans)(table))
        per_stage = {}
        for s in instances:
            per_stage[s.name], _ = best_of(args.repeat, lambda s=s: s(sampled))
        separate = 0.0
        for s in instances:
            t, _ = best_of(args.repeat, lambda s=s: s(SampleStage(full.sample, s.plans(s.params))(table)))
            separate += t
        once = t_sample + sum(per_stage.values())
        c = len(paths)
        print(f"demo corpus: {c} clips, {frames_total} frames ({n} decoded), best of {args.repeat}, {os.cpu_count()} CPUs")
        print(f"{'step':28s} {'seconds':>8s} {'clips/s':>8s} {'frames/s':>9s}")
        rows = [("bare decode PyAV (peer)", t_pyav), ("bare decode OpenCV (peer)", t_cv), ("sample (one decode, all plans)", t_sample)]
        rows += [(f"  {k} (compute only)", v) for k, v in per_stage.items()]
        rows += [("scoring, decode once", once), ("scoring, each scorer decodes", separate)]
        for name, t in rows:
            print(f"{name:28s} {t:8.3f} {c / t:8.1f} {frames_total / t:9.0f}")
        decode = min(t_pyav, t_cv)
        compute = sum(per_stage.values())
        print(f"scoring (decode once) / bare decode:            {once / decode:6.2f}x")
        for k, v in per_stage.items():
            print(f"  {k} compute / bare decode: {v / decode:.3f}x")
        print(f"scorer compute / bare decode:                   {compute / decode:6.2f}x  (target < 1)")
        print(f"decode-per-scorer / decode-once:                {separate / once:6.2f}x")
        print(f"of which OCR:                                   {per_stage.get('ocr', 0) / compute:6.1%} of scorer compute")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
