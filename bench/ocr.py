"""OCR on real footage: agreement with a careful CRAFT reference, invented text, and cost.

For every clip of a curated OUT (e.g. `curate run demo -i ../shared/data/videos -o OUT`) it takes
the frames the OCR plan samples from the stored clip (what the pipeline's scorer sees, e.g. 320 px
for the demo recipe) and measures, per frame:
- the reference: EasyOCR's CRAFT detector (the detector SVD used), detection only, on the same
  frame decoded from the *source* video at source resolution (canvas up to --ref-side), union of
  its boxes; and CRAFT on the frame the scorer sees (`ref_stored`: what the stored clip can show;
  small text that a 320 px clip no longer resolves is in the first reference only);
- the raw rapidocr detectors (PP-OCRv4 mobile, PP-OCRv6 small) at 640 and 320, before any rule;
- the scorer as configured (`--backend`, `--det-model`, defaults otherwise): gate, detector,
  doubtful boxes read;
- the stroke-density gate's value.
and, per clip, a bare PyAV decode of the whole clip (the peer the OCR stage is priced against).
Writes a JSON of every frame to --json and prints the summary bench/README.md records.

Run: python bench/ocr.py OUT [--backend rapidocr|easyocr] [--det-model NAME] [--json ocr.json] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def resize(f, plan):
    import cv2

    size = plan.size_for(f.shape[1], f.shape[0])
    return f if size == (f.shape[1], f.shape[0]) else cv2.resize(f, size, interpolation=cv2.INTER_AREA)


def source_frames(rows: list[dict], picked: dict) -> dict:
    """The source video's frames at full resolution for every picked clip frame, one sequential
    decode per source (clip frame k is source frame start_frame + k when no fps cap dropped any)."""
    import av

    from curate import schema

    want: dict[str, dict[int, list]] = {}
    for r in rows:
        assert r[schema.NUM_FRAMES] == r[schema.END_FRAME] - r[schema.START_FRAME], "an fps cap: map by time"
        for k in picked[r[schema.CLIP_ID]]:
            want.setdefault(r[schema.SOURCE_URI], {}).setdefault(r[schema.START_FRAME] + k, []).append((r[schema.CLIP_ID], k))
    out = {}
    for uri, idx in want.items():
        last = max(idx)
        with av.open(uri) as c:
            for i, fr in enumerate(c.decode(video=0)):
                if i in idx:
                    a = fr.to_ndarray(format="rgb24")
                    for key in idx[i]:
                        out[key] = upright(a, fr.rotation, picked[key[0]][key[1]])
                if i >= last:
                    break
    return out


def upright(a, rotation: int, clip_frame):
    """The source frame as the clip shows it: ffmpeg applies the display rotation when it
    extracts; PyAV's arrays do not. Of the two quarter turns, the one that matches the clip."""
    import cv2
    import numpy as np

    if not rotation:
        return a
    h, w = clip_frame.shape[:2]
    turns = [np.ascontiguousarray(np.rot90(a, k)) for k in (1, -1)]
    diff = [np.abs(cv2.resize(t, (w, h), interpolation=cv2.INTER_AREA).astype(int) - clip_frame).mean() for t in turns]
    return turns[int(np.argmin(diff))]


def main() -> None:
    import av
    import numpy as np

    from curate import schema
    from curate.sample import SamplePlan, decode_frames
    from curate.shards import read_shards
    from scoring.ocr import OcrParams, OcrScorer, stroke_density, union_area_ratio, _RapidOcr, _EasyOcr

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--backend", default="rapidocr", choices=["rapidocr", "easyocr"])
    ap.add_argument("--det-model", default="PP-OCRv4_mobile")
    ap.add_argument("--runtime", default="auto", choices=["auto", "onnxruntime", "openvino"])
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--ref-side", type=int, default=1280)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--json", default="ocr_bench.json")
    ap.add_argument("--reuse", help="a --json of an earlier run on the same OUT: its reference and raw "
                    "detector figures are taken from there (they do not change with the scorer's rules)")
    a = ap.parse_args()

    rows = sorted(read_shards(a.out).to_pylist(), key=lambda r: r[schema.CLIP_ID])[: a.limit or None]
    params = OcrParams(backend=a.backend, det_model=a.det_model, runtime=a.runtime, precision=a.precision)
    scorer = OcrScorer(params)
    scorer.setup()
    reference = _EasyOcr(OcrParams(backend="easyocr", det_limit_side=a.ref_side))
    raw = {f"{m}@{s}": _RapidOcr(OcrParams(det_model=m, det_limit_side=s))
           for m in ("PP-OCRv4_mobile", "PP-OCRv6_small") for s in (640, 320)}  # fmt: skip
    plan = SamplePlan("ocr", positions=params.positions, max_side=params.max_side)
    picked, decode_s = {}, 0.0
    for r in rows:  # the scorer's frames, from the stored clip, and a bare decode of the clip
        t0 = time.perf_counter()
        with av.open(r[schema.CLIP_URI]) as c:
            n = sum(1 for _ in c.decode(video=0))
        decode_s += time.perf_counter() - t0
        wanted = plan.indices(n, r[schema.FPS])
        full, _ = decode_frames(r[schema.CLIP_URI], set(wanted), ["pyav"])
        picked[r[schema.CLIP_ID]] = {k: resize(f, plan) for k, f in sorted(full.items())}
    sources = source_frames(rows, picked)
    before = {(d["clip"], d["frame"]): d for d in json.loads(Path(a.reuse).read_text())} if a.reuse else {}
    frames_out, score_s = [], 0.0
    for r in rows:
        small = picked[r[schema.CLIP_ID]]
        t0 = time.perf_counter()
        per_clip = scorer.score(np.stack(list(small.values())))
        score_s += time.perf_counter() - t0
        for k, g in small.items():
            f = sources[r[schema.CLIP_ID], k]
            d = {"clip": r[schema.CLIP_ID], "source": Path(r[schema.SOURCE_URI]).name, "frame": k}
            if (r[schema.CLIP_ID], k) in before:
                d.update({key: v for key, v in before[r[schema.CLIP_ID], k].items() if key.startswith("ref") or "@" in key})
            else:
                d["ref"] = union_area_ratio(reference.detect(f), f.shape[1], f.shape[0])
                for key, eng in raw.items():
                    d[key] = union_area_ratio(eng.detect(g), g.shape[1], g.shape[0])
            if "ref_stored" not in d:  # CRAFT on the frame the scorer sees (what the stored clip can show)
                d["ref_stored"] = union_area_ratio(reference.detect(g), g.shape[1], g.shape[0])
            boxes, _ = scorer.detect(g)
            d["scorer"] = union_area_ratio(boxes, g.shape[1], g.shape[0])
            d["density"] = stroke_density(g)
            frames_out.append(d)
        print(r[schema.CLIP_ID], Path(r[schema.SOURCE_URI]).name, round(per_clip[schema.OCR_AREA_RATIO], 3), flush=True)
    Path(a.json).write_text(json.dumps(frames_out))
    summarise(frames_out, decode_s, score_s, len(rows), a.backend)


def summarise(frames: list[dict], decode_s: float, score_s: float, clips: int, backend: str) -> None:
    text = [d for d in frames if d["ref"] > 0.005]
    clean = [d for d in frames if d["ref"] == 0.0]
    print(f"\n{clips} clips, {len(frames)} frames: {len(text)} with text in the reference, {len(clean)} without")
    for key in [k for k in frames[0] if "@" in k] + ["scorer"]:
        over = [d for d in clean if d[key] > 0.02]
        err = sorted(abs(d[key] - d["ref"]) for d in text)
        print(f"{key:22s} textless frames over 0.02: {len(over):3d} (max {max((d[key] for d in clean), default=0):.3f}); "
              f"text frames |diff| median {err[len(err) // 2] if err else 0:.3f}, p90 {err[int(0.9 * len(err))] if err else 0:.3f}")  # fmt: skip
    by_clip: dict[str, list[dict]] = {}
    for d in frames:
        by_clip.setdefault(d["clip"], []).append(d)
    got = {c: max(d["scorer"] for d in ds) for c, ds in by_clip.items()}
    for key, what in (("ref", "CRAFT at source resolution"), ("ref_stored", "CRAFT on the stored clip's frames")):
        ref = {c: max(d[key] for d in ds) for c, ds in by_clip.items()}
        textless = [c for c in by_clip if ref[c] == 0.0]
        texty = [c for c in by_clip if ref[c] > 0.005]
        close = [c for c in texty if abs(got[c] - ref[c]) <= 0.02]
        print(f"clips (max over frames) against {what}: {len(textless)} textless, {sum(got[c] > 0.02 for c in textless)} "
              f"of them above 0.02 (max {max((got[c] for c in textless), default=0):.3f}); {len(texty)} with text, "
              f"{len(close)} within 0.02; the others:")  # fmt: skip
        for c in sorted(set(texty) - set(close), key=lambda c: by_clip[c][0]["source"]):
            print(f"    {by_clip[c][0]['source']:45s} {c[-15:]}  reference {ref[c]:.3f}  scorer {got[c]:.3f}")
    gated = [d for d in frames if d["density"] < 0.1]
    print(f"gate: skips {len(gated)} of {len(frames)} frames; lowest density of a text frame "
          f"{min((d['density'] for d in text), default=0):.3f}")  # fmt: skip
    print(f"scorer ({backend}) {score_s:.1f} s against a bare decode of the same clips {decode_s:.1f} s: "
          f"{score_s / max(decode_s, 1e-9):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
