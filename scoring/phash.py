"""Weight-free perceptual hash of a clip, for near-duplicate detection (curate/dedup.py).

`imagehash`'s pHash (Zauner 2010: the 8x8 low-frequency block of a 32x32 DCT of the gray frame,
thresholded at its median: 64 bits that survive re-encoding, rescaling, small overlays) on a few
frames the sample step already decodes (small ones: pHash looks at 32x32), and on their mean
frame. The frame hashes let a trimmed copy match by its best-aligned frames; the mean frame's
hash is the key the grouping buckets on (a trim of a second barely moves it). pHash reads luma
only: two test cards of one layout in red and in green hash alike, so the clip's mean colour is
kept beside it and checked too.
Each is taken on the full frame and on the five crops of curate.dedup.CROPS (a 4% border off, and
7% off two sides, each corner): a re-upload cropped by 5-10% lines up with one of them.
Chosen over PDQ (`pdqhash`, 256 bits) and `perception`'s video hashes by measurement:
bench/dedup.py and bench/README.md.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate import schema
from curate.params import Strict
from curate.sample import SamplePlan
from curate.stage import Resources, StageBase


class PHashParams(Strict):
    enabled: bool = True
    frames: int = Field(5, ge=1, le=32, description="frames hashed, evenly over the clip")
    max_side: int = Field(128, ge=32, description="frames are sampled at this long side (pHash reduces to 32x32)")


def phash64_many(grays: list[np.ndarray]) -> list[int]:
    """imagehash's pHash of each gray (uint8, 2-D) frame, bit for bit, as unsigned 64-bit integers
    (bit 63 = the first DCT cell): PIL's Lanczos reduction to 32x32 and scipy's DCT, as
    `imagehash.phash` does them, but one DCT and one median over the whole stack. A clip has 36
    (6 frames x 6 crops): one imagehash call each cost 2.4x this (bench/dedup.py), and
    tests/test_dedup.py checks the bits against imagehash itself on real frames."""
    import scipy.fftpack
    from PIL import Image

    pixels = np.stack([np.asarray(Image.fromarray(g).resize((32, 32), Image.LANCZOS)) for g in grays])
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=1), axis=2)[:, :8, :8]
    bits = dct > np.median(dct.reshape(len(grays), -1), axis=1)[:, None, None]
    return [int.from_bytes(row.tobytes(), "big") for row in np.packbits(bits.reshape(len(grays), -1), axis=1)]


def crops(gray: np.ndarray) -> list[np.ndarray]:
    """The gray frame under each of curate.dedup.CROPS (the first is the full frame)."""
    from curate.dedup import CROPS

    h, w = gray.shape[:2]
    return [np.ascontiguousarray(gray[int(y0 * h):max(int(y0 * h) + 1, int(y1 * h)),
                                      int(x0 * w):max(int(x0 * w) + 1, int(x1 * w))])
            for x0, y0, x1, y1 in CROPS]  # fmt: skip


class PHashScorer(StageBase):
    name: ClassVar[str] = "phash"
    order: ClassVar[int] = 35
    Params: ClassVar[type] = PHashParams
    resources: ClassVar[Resources] = Resources(num_cpus=1, batch_size=32)
    output_fields: ClassVar[tuple[pa.Field, ...]] = (
        pa.field(schema.PHASH, pa.uint64()),
        pa.field(schema.PHASH_FRAMES, pa.list_(pa.uint64())),
        pa.field(schema.PHASH_COLOR, pa.list_(pa.float32())),
    )

    @classmethod
    def plans(cls, params: PHashParams) -> list[SamplePlan]:
        n = params.frames
        return [SamplePlan(cls.name, positions=tuple((k + 0.5) / n for k in range(n)), max_side=params.max_side)]

    def score(self, frames: np.ndarray) -> dict:
        import cv2

        gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])  # ITU-R 601 luma, as PIL's "L"
        mean = gray.astype(np.float32).mean(axis=0).round().astype(np.uint8)
        hashes = phash64_many([c for f in (mean, *gray) for c in crops(f)])  # one stack: 6 frames x 6 crops
        # (frames of one size: the mean of the frame means; numpy's uint8 mean took 0.5 ms a clip, cv2's 17 us)
        color = np.mean([cv2.mean(f)[:3] for f in frames], axis=0).astype(np.float32).tolist()
        return {schema.PHASH: hashes[0], schema.PHASH_FRAMES: hashes, schema.PHASH_COLOR: color}
