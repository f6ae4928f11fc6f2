"""Optical-flow motion score: dense flow between frames sampled at 2 fps, downscaled.

As SVD and video2dataset do it: OpenCV Farneback on frames whose short side is 16 px, sampled
at 2 fps. Each pair's mean flow magnitude is divided by the number of source frames between
the two samples, so the score is in pixels per frame at the analysis size whatever the clip's
frame rate. `flow_mean` / `flow_max` are the mean / max over pairs. DIS is the faster option.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate import schema
from curate.params import Strict
from curate.sample import SamplePlan
from curate.stage import Resources, StageBase, frames_and_indices


class FlowParams(Strict):
    enabled: bool = True
    method: Literal["farneback", "dis"] = "farneback"
    fps: float = Field(2.0, gt=0)
    short_side: int = Field(16, ge=8)
    # Farneback: pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags (SVD/video2dataset)
    farneback: tuple[float, int, int, int, int, float, int] = (0.5, 3, 15, 3, 5, 1.2, 0)


class FlowScorer(StageBase):
    name: ClassVar[str] = "flow"
    order: ClassVar[int] = 10
    Params: ClassVar[type] = FlowParams
    resources: ClassVar[Resources] = Resources(num_cpus=1, batch_size=16)
    output_fields: ClassVar[tuple[pa.Field, ...]] = (
        pa.field(schema.FLOW_MEAN, pa.float32()),
        pa.field(schema.FLOW_MAX, pa.float32()),
    )

    _dis = None  # loaded by setup()

    @classmethod
    def plans(cls, params: FlowParams) -> list[SamplePlan]:
        return [SamplePlan(cls.name, fps=params.fps, min_frames=2, short_side=params.short_side)]

    def setup(self) -> None:
        import cv2

        if self.params.method == "dis":
            self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        import cv2

        if self._dis is not None:
            return self._dis.calc(a, b, None)
        return cv2.calcOpticalFlowFarneback(a, b, None, *self.params.farneback)

    def score(self, frames: np.ndarray, indices: np.ndarray) -> dict:
        import cv2

        if len(frames) < 2:
            raise ValueError("needs at least 2 frames")
        gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        per_pair = []
        for k in range(1, len(gray)):
            flow = self.flow(gray[k - 1], gray[k])
            mag = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2)
            per_pair.append(float(mag.mean()) / max(1, int(indices[k] - indices[k - 1])))
        return {schema.FLOW_MEAN: float(np.mean(per_pair)), schema.FLOW_MAX: float(np.max(per_pair))}

    def inputs(self, batch: pa.Table) -> list:
        """Per row its frames and their indices in the clip (a gap of k frames is k frames of motion)."""
        return frames_and_indices(batch, self.name)

    def score_batch(self, items: list) -> list[dict]:
        return [self.score(frames, indices) for frames, indices in items]

