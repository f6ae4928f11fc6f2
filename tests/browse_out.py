"""Generated OUTs for the browse tests and bench/browse.py: rows with known scores, written
through the committer as a run writes them (no video decoded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from curate import registry, schema
from curate.record import VideoRecord
from curate.shards import Committer
from curate.storage import OutputStore

LABELS = ("static", "pan_left", "zoom_in", "shaky")


def scores(n: int, seed: int = 0) -> pa.Table:
    """n clips of 40 sources: durations 2-8 s, flow and aesthetic scores (aesthetic null for one
    clip in 20), camera labels, and clip ids that sort apart from every score."""
    rng = np.random.default_rng(seed)
    videos = [f"{k:016x}" for k in rng.integers(0, 2**63, 40)]
    vid = [videos[i % 40] for i in range(n)]
    aest = rng.normal(5.0, 1.0, n).astype(np.float32)
    return pa.table({
        schema.CLIP_ID: [f"{v}-{10 * i:07d}-{10 * i + 9:07d}" for i, v in enumerate(vid)],
        schema.VIDEO_ID: vid,
        schema.SOURCE_URI: [f"/data/raw/{v}.mp4" for v in vid],
        schema.CLIP_INDEX: np.arange(n, dtype=np.int32),
        schema.DURATION_S: np.round(rng.uniform(2.0, 8.0, n), 3),
        "flow_mean": rng.gamma(2.0, 1.5, n).astype(np.float32),
        "aesthetic_score": pa.array(aest, mask=np.arange(n) % 20 == 7),
        "ocr_area_ratio": np.where(rng.random(n) < 0.7, 0.0, rng.uniform(0, 0.3, n)).astype(np.float32),
        "camera_motion": [LABELS[i] for i in rng.integers(0, len(LABELS), n)],
        schema.CAPTION_COCA: [f"a clip number {i}" for i in range(n)],
    })  # fmt: skip


def write_out(out: str | Path, table: pa.Table, max_rows: int = 50_000) -> Path:
    """An OUT holding `table`'s rows (one committed input per source video)."""
    store = OutputStore(str(out))
    c = Committer(store, "browse-test", max_rows=max_rows)
    rows = registry.conform(table)
    vids = rows.column(schema.VIDEO_ID).to_numpy(zero_copy_only=False)
    for v in dict.fromkeys(vids.tolist()):
        idx = np.flatnonzero(vids == v)
        part = rows.take(idx)
        c.add_video(VideoRecord(source_uri=part.column(schema.SOURCE_URI)[0].as_py(), video_id=v, clips=len(idx),
                                duration_s=float(np.sum(part.column(schema.DURATION_S).to_numpy()))), part)  # fmt: skip
    c.flush()
    c.write_manifest({}, {})
    return Path(out)
