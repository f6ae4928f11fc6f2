"""caption_vlm's CPU cost per clip with the tiny Qwen2-VL the tests use (what a CI machine pays
to exercise the stage; a real model's cost is bench/gpu.py's), against a bare decode of the same
clip measured in the same run: captions (16-frame windows at 2 fps, the stage's defaults, merged
by the model when a clip has two) and the six-question rubric of the svd_vlm recipe.
Run: python bench/vlm.py [--clips 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=4)
    args = ap.parse_args()
    import av
    import pyarrow as pa

    from curate import schema
    from curate.config import load_config
    from curate.sample import SampleParams, SampleStage
    from curate.synth import Scene, make_video
    from curate.video import probe
    from scoring.caption_vlm import VlmCaptioner
    from tests.tiny_models import qwen2vl

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = [make_video(str(tmp / f"c{k}.mp4"), [Scene("moving", 4.0 + 4 * (k % 2), seed=k, speed_px=2.0)], size=(640, 360)).path
                 for k in range(args.clips)]  # fmt: skip
        questions = load_config("svd_vlm").scorers.caption_vlm.questions
        for label, qs in (("captions", {}), ("captions + 6-question rubric", questions)):
            cfg = load_config(None, ["scorers.caption_vlm.enabled=true", f"scorers.caption_vlm.model={qwen2vl(tmp)}"])
            params = cfg.scorers.caption_vlm.model_copy(update={"questions": qs})
            s = VlmCaptioner(params)
            s.setup()
            n = [probe(p).n_frames for p in paths]
            table = pa.table({schema.CLIP_URI: paths, schema.START_FRAME: [0] * len(paths), schema.END_FRAME: n,
                              schema.FPS: [24.0] * len(paths), schema.ERRORS: [[] for _ in paths]})  # fmt: skip
            t0 = time.perf_counter()
            for p in paths:
                with av.open(p) as c:
                    for _ in c.decode(video=0):
                        pass
            decode = (time.perf_counter() - t0) / len(paths)
            t0 = time.perf_counter()
            sampled = SampleStage(SampleParams(), s.plans(s.params))(table)
            sample = (time.perf_counter() - t0) / len(paths)
            t0 = time.perf_counter()
            rows = s(sampled).to_pylist()
            score = (time.perf_counter() - t0) / len(paths)
            assert all(r["caption_vlm"] for r in rows), rows[0]["errors"]
            tokens = sum(r["caption_vlm_tokens"] for r in rows) / len(rows)
            print(f"{label}: {len(paths)} clips of 4-8 s 640x360: bare decode {1000 * decode:.0f} ms/clip; sample {1000 * sample:.0f} ms; "
                  f"tiny Qwen2-VL {1000 * score:.0f} ms/clip ({tokens:.0f} tokens); stage / decode {score / decode:.2f}x", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
