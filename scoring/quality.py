"""Weight-free technical quality of a clip, on a few sampled frames.

- sharpness: variance of the Laplacian of the gray frame (Pech-Pacheco et al. 2000), at a fixed
  analysis size (long side 512) so clips of different resolution compare;
- brightness / contrast: mean / standard deviation of luma, scaled to 0..1;
- colorfulness: Hasler & Suesstrunk (2003), M = sigma_rgyb + 0.3 mu_rgyb (0 for gray images).
Each is the mean over the sampled frames.
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


class QualityParams(Strict):
    enabled: bool = True
    frames: int = Field(3, ge=1)
    max_side: int = Field(512, ge=32)


def colorfulness(rgb: np.ndarray) -> float:
    r, g, b = (rgb[..., c].astype(np.float64) for c in range(3))
    rg = r - g
    yb = 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


class QualityScorer(StageBase):
    name: ClassVar[str] = "quality"
    order: ClassVar[int] = 30
    Params: ClassVar[type] = QualityParams
    resources: ClassVar[Resources] = Resources(num_cpus=1, batch_size=16)
    output_fields: ClassVar[tuple[pa.Field, ...]] = (
        pa.field(schema.QUALITY_SHARPNESS, pa.float32()),
        pa.field(schema.QUALITY_BRIGHTNESS, pa.float32()),
        pa.field(schema.QUALITY_CONTRAST, pa.float32()),
        pa.field(schema.QUALITY_COLORFULNESS, pa.float32()),
    )

    @classmethod
    def plans(cls, params: QualityParams) -> list[SamplePlan]:
        n = params.frames
        positions = tuple((k + 0.5) / n for k in range(n))  # centred: away from the clip's edges
        return [SamplePlan(cls.name, positions=positions, min_frames=1, max_side=params.max_side)]

    def setup(self) -> None:
        pass

    def score(self, frames: np.ndarray) -> dict:
        import cv2

        sharp, bright, contrast, colour = [], [], [], []
        for f in frames:
            gray = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
            sharp.append(float(cv2.Laplacian(gray, cv2.CV_64F).var()))
            bright.append(float(gray.mean()) / 255.0)
            contrast.append(float(gray.std()) / 255.0)
            colour.append(colorfulness(f))
        return {
            schema.QUALITY_SHARPNESS: float(np.mean(sharp)),
            schema.QUALITY_BRIGHTNESS: float(np.mean(bright)),
            schema.QUALITY_CONTRAST: float(np.mean(contrast)),
            schema.QUALITY_COLORFULNESS: float(np.mean(colour)),
        }
