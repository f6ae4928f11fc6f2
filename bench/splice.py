"""A splice set for cut detection, grown from the real shots of ../shared/data, with exact truth.

Every edited video strings together 6-8 pieces of real single shots (the stretches between the
truth cuts of the real videos, clear of gradual transitions) and joins them by
- a hard cut between two sources,
- a hard cut between two pieces of the same shot a few seconds apart (two slides of a talk, two
  moments of one room: what colour-average detectors miss),
- a 12-frame dissolve, or a fade through black (both ignored by the scoring, as in
  curate/evaluate.py),
and a third of the pieces get a camera flash inside them (1-3 frames brightened towards white):
never a cut. Seeded: the same seed gives the same set. Output: the videos and `truth.json` in the
format of ../shared/data/truth.json (`cuts`, `gradual`, `frames`).

Run: python bench/splice.py OUTDIR [--videos 12] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

SIZE = (480, 270)
FPS = 25.0
SYNTHETIC = ("pyscenedetect__counter", "pyscenedetect__delayed_start", "pyscenedetect__fades")


def shots(truth: dict, margin: int = 3, min_len: int = 60) -> list[tuple[str, int, int]]:
    """(video, first, end) of every real single shot long enough to cut pieces from."""
    out = []
    for name, t in truth.items():
        if name.startswith(SYNTHETIC) or not t.get("real", True):
            continue
        bounds = [0, *t["cuts"], t["frames"]]
        zones = [tuple(g["frames"]) for g in t.get("gradual", [])] + [(f, f) for f in t.get("jump_cuts", [])]
        for a, b in zip(bounds, bounds[1:]):
            lo, hi = a + margin, b - margin
            for z0, z1 in sorted(zones):  # keep the longest stretch clear of gradual transitions
                if z1 < lo or z0 > hi:
                    continue
                lo, hi = (z1 + margin, hi) if hi - z1 > z0 - lo else (lo, z0 - margin)
            if hi - lo >= min_len:
                out.append((name, lo, hi))
    return out


def decode(path: str, wanted: set[int]) -> dict[int, np.ndarray]:
    import av

    out: dict[int, np.ndarray] = {}
    last = max(wanted)
    with av.open(path) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in wanted:
                out[i] = f.to_ndarray(format="bgr24", width=SIZE[0], height=SIZE[1])
            if i >= last:
                break
    return out


def plan(rng: np.random.Generator, pool: list[tuple[str, int, int]]) -> list[dict]:
    """Pieces (video, first frame, length), the join before each, and flashes."""
    pieces = []
    for k in range(int(rng.integers(6, 9))):
        length = int(rng.integers(40, 100))
        join = "start" if k == 0 else str(rng.choice(["hard", "same_source", "dissolve", "fade"], p=[0.4, 0.25, 0.15, 0.2]))
        prev = pieces[-1] if pieces else None
        if join == "same_source" and prev:
            # another stretch of the previous piece's shot, at least a second away from it
            _, lo, hi = prev["shot"]
            gap = int(FPS)
            starts = [f for f in range(lo, hi - length + 1)
                      if f + length + gap <= prev["first"] or f >= prev["first"] + prev["length"] + gap]  # fmt: skip
            if starts:
                pieces.append({"shot": prev["shot"], "first": starts[int(rng.integers(len(starts)))], "length": length, "join": join})
                continue
            join = "hard"
        choices = [s for s in pool if s[2] - s[1] >= length and (prev is None or s[0] != prev["shot"][0])]
        shot = choices[int(rng.integers(len(choices)))]
        first = int(rng.integers(shot[1], shot[2] - length + 1))
        pieces.append({"shot": shot, "first": first, "length": length, "join": join})
    for p in pieces:
        if rng.random() < 0.35 and p["length"] > 30:
            p["flash"] = (int(rng.integers(10, p["length"] - 12)), int(rng.integers(1, 4)))
    return pieces


# A cut within one shot whose two sides differ less than this (mean |luma|, 0-255) is a jump cut
# (a static camera a minute later: only people moved; a handheld shot a second on); like
# ../shared/data's truth, it is neither required nor an error.
JUMP_CUT = 20.0


def render(pieces: list[dict], frames: dict[str, dict[int, np.ndarray]], zones: dict[str, list]) -> tuple:
    """The video, its cuts, gradual transitions and ignored frames (jump cuts, and what the source's
    truth calls ambiguous inside a piece: overlay and subtitle events, jump cuts)."""
    out: list[np.ndarray] = []
    cuts, gradual, jumps, ambiguous = [], [], [], []
    for p in pieces:
        seq = [frames[p["shot"][0]][p["first"] + i].astype(np.float32) for i in range(p["length"])]
        if "flash" in p:
            at, n = p["flash"]
            for i, w in zip(range(at, at + n), (0.85, 0.6, 0.35)):
                seq[i] = seq[i] * (1 - w) + 255 * w
        origin = len(out) - (12 if p["join"] == "dissolve" else 0) + (4 if p["join"] == "fade" else 0)
        for a, b in zones.get(p["shot"][0], []):
            lo, hi = max(a, p["first"]), min(b, p["first"] + p["length"] - 1)
            if lo <= hi:
                ambiguous.append([origin + lo - p["first"], origin + hi - p["first"]])
        if p["join"] == "same_source" and np.abs(out[-1].mean(-1) - seq[0].mean(-1)).mean() < JUMP_CUT:
            jumps.append(len(out))
            p["join"] = "jump_cut"
        elif p["join"] in ("hard", "same_source"):
            cuts.append(len(out))
        elif p["join"] == "dissolve":
            n = 12
            start = len(out) - n
            for i in range(n):
                a = (i + 1) / (n + 1)
                out[start + i] = out[start + i] * (1 - a) + seq[i] * a
            seq = seq[n:]
            gradual.append({"frames": [start, len(out)], "type": "dissolve"})
        elif p["join"] == "fade":
            n = 8
            start = len(out) - n
            for i in range(n):
                out[start + i] = out[start + i] * (1 - (i + 1) / n)
            out += [np.zeros_like(seq[0])] * 4
            for i in range(n):
                seq[i] = seq[i] * ((i + 1) / n)
            gradual.append({"frames": [start, len(out) + n], "type": "fade_through_black"})
        out += seq
    video = np.clip(np.stack(out), 0, 255).astype(np.uint8)
    return video, cuts, gradual, jumps, ambiguous


def build(out_dir: str, videos: int = 12, seed: int = 0) -> dict:
    from curate.synth import encode

    truth_src = json.loads((SHARED / "truth.json").read_text())
    pool = shots(truth_src)
    rng = np.random.default_rng(seed)
    plans = [plan(rng, pool) for _ in range(videos)]
    wanted: dict[str, set[int]] = {}
    for pieces in plans:
        for p in pieces:
            wanted.setdefault(p["shot"][0], set()).update(range(p["first"], p["first"] + p["length"]))
    frames = {name: decode(str(SHARED / "videos" / name), idx) for name, idx in wanted.items()}
    from curate.evaluate import truth_ignore_zones

    zones = {name: truth_ignore_zones(truth_src[name]) for name in wanted}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth = {}
    for k, pieces in enumerate(plans):
        video, cuts, gradual, jumps, ambiguous = render(pieces, frames, zones)
        name = f"splice_{seed}_{k:02d}.mp4"
        encode(str(out / name), video, FPS, gop=50)
        truth[name] = {"frames": len(video), "cuts": cuts, "gradual": gradual, "jump_cuts": jumps, "fps": FPS,
                       "overlay_events": {f"source_{i}": z for i, z in enumerate(ambiguous)},
                       "flashes": sum("flash" in p for p in pieces),
                       "same_source_cuts": [c for c, p in zip(cuts, [p for p in pieces if p["join"] in ("hard", "same_source")])
                                            if p["join"] == "same_source"],
                       "pieces": [{"source": p["shot"][0], "first": p["first"], "length": p["length"], "join": p["join"]}
                                  for p in pieces]}  # fmt: skip
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t = build(a.out, a.videos, a.seed)
    print(f"{len(t)} videos, {sum(len(v['cuts']) for v in t.values())} cuts "
          f"({sum(len(v['same_source_cuts']) for v in t.values())} within one source), "
          f"{sum(len(v['jump_cuts']) for v in t.values())} jump cuts (ignored), {sum(len(v['gradual']) for v in t.values())} gradual, {sum(v['flashes'] for v in t.values())} flashes -> {a.out}")
