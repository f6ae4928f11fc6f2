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


def main(argv: list[str] | None = None) -> int:
    from curate.evaluate import CutScore, score_cuts, truth_ignore_zones
    from curate.video import ffmpeg_exe

    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", nargs="*", help="names from ../shared/data/truth.json (default: all)")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args(argv)
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
