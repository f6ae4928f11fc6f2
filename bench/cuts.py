"""Cut-detection speed and accuracy against peers, measured in one process tree.

For each video: a bare decode of every frame with PyAV (threaded) and with the ffmpeg binary
(`-f null`), PySceneDetect's own CLI `detect-content` (default backend, as users run it), and
curate's cut stage. Prints frames/s, the ratios (curate / bare ffmpeg decode, PySceneDetect CLI /
curate), peak RSS of curate's cut stage, and cut F1 at +-2 frames for both detectors over the
real videos in ../shared/data. Run: python bench/cuts.py [--videos NAME ...]
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
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
from curate.config import CutsParams
from curate.cuts import detect_cuts
from curate.video import probe
t = time.perf_counter()
info = probe({path!r})
r = detect_cuts({path!r}, info, CutsParams())
print(json.dumps({{"s": time.perf_counter() - t, "cuts": r.cuts, "frames": r.n_frames,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def timed(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {p.stderr[-500:]}")
    return time.perf_counter() - t, p.stdout


def pyav_decode(path: str) -> float:
    code = (
        "import av,sys\nwith av.open(sys.argv[1]) as c:\n s=c.streams.video[0]; s.thread_type='AUTO'\n"
        " n=sum(1 for _ in c.decode(s))\n"
    )
    return timed([sys.executable, "-c", code, path])[0]


def pyscenedetect_cli(path: str) -> tuple[float, list[int]]:
    with tempfile.TemporaryDirectory() as d:
        s, _ = timed([sys.executable, "-m", "scenedetect", "-q", "-i", path, "-o", d, "detect-content", "list-scenes", "-q"])
        csv = next(Path(d).glob("*.csv"))
        lines = csv.read_text().splitlines()
        # first line is the timecode list, then a header; column 2 is the start frame (1-based)
        starts = [int(line.split(",")[1]) - 1 for line in lines[2:] if line.strip()]
    return s, [f for f in starts if f > 0]


DETECTORS = ["classical", "hybrid", "transnetv2", "psd-content", "psd-adaptive", "transnet-package"]


def run_detector(kind: str, path: str) -> list[int]:
    """Cut frames (first frame of each new shot) of one detector on one file."""
    if kind in ("classical", "transnetv2", "hybrid"):
        from curate.config import CutsParams
        from curate.cuts import detect_cuts
        from curate.video import probe

        return detect_cuts(path, probe(path), CutsParams(detector=kind)).cuts
    if kind.startswith("psd-"):
        import scenedetect
        from scenedetect.detectors import AdaptiveDetector, ContentDetector

        det = ContentDetector() if kind == "psd-content" else AdaptiveDetector()
        return [s[0].frame_num for s in scenedetect.detect(path, det)][1:]
    # the reference package on 48x27 frames from PyAV (its predict_video needs an ffmpeg on PATH)
    import av
    import numpy as np
    import torch

    from curate.transnet import load_model

    with av.open(path) as c:
        frames = np.stack([f.to_ndarray(format="rgb24", width=48, height=27) for f in c.decode(video=0)])
    model = load_model("cpu")
    single, _ = model.predict_frames(torch.from_numpy(frames), quiet=True)
    return [int(x) for x in model.predictions_to_scenes(single.numpy())[1:, 0]]


def accuracy(sets: dict[str, tuple[Path, dict]], detectors: list[str]) -> None:
    """P/R/F1 at +-2 frames and frames/s of every detector on every set, beside a bare ffmpeg decode."""
    from curate.evaluate import CutScore, score_cuts, truth_ignore_zones
    from curate.video import ffmpeg_exe

    for set_name, (folder, truth) in sets.items():
        frames = sum(t["frames"] for t in truth.values())
        s_ff = sum(timed([ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(folder / n), "-map", "0:v:0", "-f", "null", "-"])[0]
                   for n in truth)  # fmt: skip
        print(f"\n{set_name}: {len(truth)} videos, {frames} frames, {sum(len(t['cuts']) for t in truth.values())} cuts; "
              f"bare ffmpeg decode {frames / s_ff:.0f} frames/s")  # fmt: skip
        print(f"{'detector':18s} {'P':>6s} {'R':>6s} {'F1':>6s} {'tp':>4s} {'fp':>4s} {'fn':>4s} {'frames/s':>9s} {'x decode':>8s}")
        for kind in detectors:
            if kind in ("transnetv2", "hybrid", "transnet-package"):
                # a pipeline worker loads the network once (the watchdog's forkserver preloads it):
                # its load is not per-video work, so it is paid here, outside the timing
                from curate.transnet import load_model

                if load_model.cache_info().currsize == 0:
                    t0 = time.perf_counter()
                    load_model("cpu")
                    print(f"  (TransNetV2 loaded in {time.perf_counter() - t0:.2f} s, once per process, not timed)")
            total, secs = CutScore(0, 0, 0, 0), 0.0
            for name, t in truth.items():
                t0 = time.perf_counter()
                cuts = run_detector(kind, str(folder / name))
                secs += time.perf_counter() - t0
                total = total + score_cuts(cuts, t["cuts"], 2, truth_ignore_zones(t))
            print(f"{kind:18s} {total.precision:6.3f} {total.recall:6.3f} {total.f1:6.3f} {total.tp:4d} {total.fp:4d} "
                  f"{total.fn:4d} {frames / secs:9.0f} {secs / s_ff:8.2f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from curate.evaluate import CutScore, score_cuts, truth_ignore_zones
    from curate.video import ffmpeg_exe

    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", nargs="*", help="names from ../shared/data/truth.json (default: all)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--accuracy", action="store_true", help="P/R/F1 and speed of every detector mode and peer "
                    "on the splice set (bench/splice.py) and ../shared/data, instead of the speed table")
    ap.add_argument("--splice", default=None, help="splice set folder (built there if it has no truth.json)")
    ap.add_argument("--detectors", nargs="*", default=DETECTORS)
    args = ap.parse_args(argv)
    if args.accuracy:
        from bench.splice import build

        folder = Path(args.splice or tempfile.mkdtemp(prefix="splice-"))
        if not (folder / "truth.json").is_file():
            build(str(folder))
        sets = {"splice set": (folder, json.loads((folder / "truth.json").read_text())),
                "../shared/data": (SHARED / "videos", json.loads((SHARED / "truth.json").read_text()))}  # fmt: skip
        accuracy(sets, args.detectors)
        print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
        return 0
    if not (SHARED / "truth.json").is_file():
        print(f"needs the real videos in {SHARED}")
        return 1
    truth = json.loads((SHARED / "truth.json").read_text())
    names = args.videos or list(truth)
    ff = ffmpeg_exe()
    rows, f1_curate, f1_psd = [], CutScore(0, 0, 0, 0), CutScore(0, 0, 0, 0)
    tot = {"frames": 0, "ffmpeg": 0.0, "pyav": 0.0, "psd": 0.0, "curate": 0.0}
    peak_rss = 0.0
    for name in names:
        path = str(SHARED / "videos" / name)
        t = truth[name]
        best = lambda f: min(f() for _ in range(args.repeat))  # noqa: E731
        s_ff = best(lambda: timed([ff, "-nostdin", "-v", "error", "-i", path, "-map", "0:v:0", "-f", "null", "-"])[0])
        s_av = best(lambda: pyav_decode(path))
        psd = [pyscenedetect_cli(path) for _ in range(args.repeat)]
        s_psd, cuts_psd = min(p[0] for p in psd), psd[0][1]
        cur = [json.loads(timed([sys.executable, "-c", CHILD.format(root=str(ROOT), path=path)])[1]) for _ in range(args.repeat)]
        s_cur = min(c["s"] for c in cur)
        peak_rss = max(peak_rss, max(c["rss_mb"] for c in cur))
        ignore = truth_ignore_zones(t)
        f1_curate = f1_curate + score_cuts(cur[0]["cuts"], t["cuts"], 2, ignore)
        f1_psd = f1_psd + score_cuts(cuts_psd, t["cuts"], 2, ignore)
        n = t["frames"]
        for k, v in (("frames", n), ("ffmpeg", s_ff), ("pyav", s_av), ("psd", s_psd), ("curate", s_cur)):
            tot[k] += v
        rows.append((name, n, f"{t['width']}x{t['height']}", n / s_ff, n / s_av, n / s_psd, n / s_cur, s_cur / s_ff, s_psd / s_cur))
    print(f"{'video':42s} {'frames':>6s} {'size':>9s} {'ffmpeg':>7s} {'pyav':>7s} {'psd-cli':>7s} {'curate':>7s} {'cur/ff':>6s} {'psd/cur':>7s}   (frames/s)")
    for r in rows:
        print(f"{r[0]:42s} {r[1]:6d} {r[2]:>9s} {r[3]:7.0f} {r[4]:7.0f} {r[5]:7.0f} {r[6]:7.0f} {r[7]:6.2f} {r[8]:7.2f}")
    n = tot["frames"]
    print(f"{'TOTAL':42s} {n:6d} {'':>9s} {n / tot['ffmpeg']:7.0f} {n / tot['pyav']:7.0f} {n / tot['psd']:7.0f} "
          f"{n / tot['curate']:7.0f} {tot['curate'] / tot['ffmpeg']:6.2f} {tot['psd'] / tot['curate']:7.2f}")
    print(f"cut F1 at +-2 frames: curate {f1_curate.f1:.3f} ({f1_curate}); PySceneDetect CLI detect-content {f1_psd.f1:.3f} ({f1_psd})")
    print(f"curate cut stage peak RSS (max over videos, whole process): {peak_rss:.0f} MB")
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
