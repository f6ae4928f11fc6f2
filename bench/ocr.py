"""OCR on real footage: agreement with a careful CRAFT reference, invented text, and cost.

For every clip of a curated OUT (e.g. `curate run demo -i ../shared/data/videos -o OUT`) it takes
the frames the OCR plan samples and measures, per frame:
- the reference: EasyOCR's CRAFT detector (the detector SVD used), detection only, on the frame
  at source resolution (canvas up to --ref-side), union of its boxes;
- the raw detectors at the scorer's size (rapidocr DBNet at 640 and 320), before any rule;
- the scorer as configured (`--backend`, defaults otherwise): gate, detector, doubtful boxes read;
- the stroke-density gate's value.
and, per clip, a bare PyAV decode of the whole clip (the peer the OCR stage is priced against).
Writes a JSON of every frame to --json and prints the summary bench/README.md records.

Run: python bench/ocr.py OUT [--backend rapidocr|easyocr] [--json ocr.json] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import cv2
    import numpy as np

    from curate import schema
    from curate.sample import SamplePlan, decode_frames
    from curate.shards import read_shards
    from scoring.ocr import OcrParams, OcrScorer, stroke_density, union_area_ratio, _RapidOcr, _EasyOcr

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--backend", default="rapidocr", choices=["rapidocr", "easyocr"])
    ap.add_argument("--ref-side", type=int, default=1280)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--json", default="ocr_bench.json")
    a = ap.parse_args()

    rows = sorted(read_shards(a.out).to_pylist(), key=lambda r: r[schema.CLIP_ID])[: a.limit or None]
    params = OcrParams(backend=a.backend)
    scorer = OcrScorer(params)
    scorer.setup()
    reference = _EasyOcr(OcrParams(backend="easyocr", det_limit_side=a.ref_side))
    raw = {s: _RapidOcr(OcrParams(det_limit_side=s)) for s in (640, 320)}
    plan = SamplePlan("ocr", positions=params.positions, max_side=params.max_side)
    frames_out, decode_s, score_s = [], 0.0, 0.0
    for r in rows:
        import av

        t0 = time.perf_counter()
        with av.open(r[schema.CLIP_URI]) as c:
            n = sum(1 for _ in c.decode(video=0))
        decode_s += time.perf_counter() - t0
        wanted = plan.indices(n, r[schema.FPS])
        full, _ = decode_frames(r[schema.CLIP_URI], set(wanted), ["pyav"])
        small = {k: cv2.resize(f, plan.size_for(f.shape[1], f.shape[0]), interpolation=cv2.INTER_AREA)
                 if plan.size_for(f.shape[1], f.shape[0]) != (f.shape[1], f.shape[0]) else f for k, f in full.items()}  # fmt: skip
        t0 = time.perf_counter()
        per_clip = scorer.score(np.stack([small[k] for k in sorted(small)]))
        score_s += time.perf_counter() - t0
        for k in sorted(full):
            f, g = full[k], small[k]
            d = {"clip": r[schema.CLIP_ID], "source": Path(r[schema.SOURCE_URI]).name, "frame": k}
            d["ref"] = union_area_ratio(reference.detect(f), f.shape[1], f.shape[0])
            for s, eng in raw.items():
                d[f"raw{s}"] = union_area_ratio(eng.detect(g), g.shape[1], g.shape[0])
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
    for key in ("raw640", "raw320", "scorer"):
        over = [d for d in clean if d[key] > 0.02]
        err = sorted(abs(d[key] - d["ref"]) for d in text)
        print(f"{key:7s} textless frames over 0.02: {len(over):3d} (max {max((d[key] for d in clean), default=0):.3f}); "
              f"text frames |diff| median {err[len(err) // 2] if err else 0:.3f}, p90 {err[int(0.9 * len(err))] if err else 0:.3f}")  # fmt: skip
    gated = [d for d in frames if d["density"] < 0.1]
    print(f"gate: skips {len(gated)} of {len(frames)} frames; lowest density of a text frame "
          f"{min((d['density'] for d in text), default=0):.3f}")  # fmt: skip
    print(f"scorer ({backend}) {score_s:.1f} s against a bare decode of the same clips {decode_s:.1f} s: "
          f"{score_s / max(decode_s, 1e-9):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
