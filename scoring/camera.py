"""Camera motion apart from object motion, weight-free: a similarity model of the camera fitted
to the dense flow of each pair of sampled frames, robust to what moves in the scene (RANSAC).

Per pair of frames (sampled at `fps`, long side `max_side`): DIS optical flow (`ultrafast`, each
pair started from the previous pair's flow); the camera's motion is the similarity (translation,
scale, rotation) that the most flow vectors agree with (cv2.estimateAffinePartial2D, RANSAC over
the textured points of a lattice on the flow); the object motion is what is left when it is
removed. Units do not depend on the resolution or the frame rate: translation and
motion in frame widths per second, zoom in log-scale per second, roll in degrees per second.

Columns, per clip (medians over its pairs unless said):
- `camera_motion`: one label. `static` when no component passes its threshold; else the one
  that does: `pan_left` / `pan_right` (the camera turns left: the scene moves right in the frame),
  `tilt_up` / `tilt_down` (the camera turns up: the scene moves down), `zoom_in` / `zoom_out`
  (the scene grows / shrinks), `roll`; `complex` when several do at once (a pan while zooming);
  `shaky` when the camera's translation changes direction from pair to pair by more than it
  moves on average (hand-held jitter), whatever else holds.
- `camera_speed`: how fast the camera model moves the picture: the mean displacement of the
  frame's points under it, in frame widths per second.
- `object_motion`: the flow left after the camera model is removed, mean magnitude, frame
  widths per second (a static camera over walking people: high; a pan over a still landscape: low).
- `motion_patch_min` / `motion_patch_max`: over a 4x4 grid of the frame, the least and the most
  moving patch (raw flow at the lattice's points in it, frame widths per second): "static except
  one corner" has a low min and a high max.
SVD's `flow_mean` (scoring/flow.py) is left as it is.
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

CAMERA_MOTION = "camera_motion"
CAMERA_SPEED = "camera_speed"
OBJECT_MOTION = "object_motion"
PATCH_MIN, PATCH_MAX = "motion_patch_min", "motion_patch_max"
LABELS = ("static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "roll", "shaky", "complex")


PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}  # cv2.DISOPTICAL_FLOW_PRESET_*
EYE = np.eye(2)
# Two frames whose every pixel is within this many grey levels are the same picture re-encoded: on
# ../shared/data a third of the pairs (still photos, slides, fixed cameras on still scenes), on
# which DIS finds at most 0.3 px of noise
NOISE = 2


class CameraParams(Strict):
    enabled: bool = True
    preset: Literal["ultrafast", "fast", "medium"] = "ultrafast"
    fps: float = Field(4.0, gt=0, description="pairs of frames this many times a second")
    max_side: int = Field(160, ge=32, description="analysis size (long side)")
    grid: int = Field(12, ge=4, description="flow vectors per side fed to the robust fit")
    # thresholds (see the module docstring and bench/README.md "Camera motion")
    pan: float = Field(0.04, gt=0, description="translation, frame widths per second, for a pan or tilt")
    zoom: float = Field(0.06, gt=0, description="|log scale| per second for a zoom")
    roll: float = Field(3.0, gt=0, description="degrees per second for a roll")
    shake: float = Field(1.0, gt=0, description="shaky: mean change of translation between pairs / its mean")
    shake_min: float = Field(0.03, gt=0, description="... when that change is at least this (frame widths per second)")


class CameraScorer(StageBase):
    name: ClassVar[str] = "camera"
    order: ClassVar[int] = 15  # (after flow, before OCR: order only matters for timing)
    Params: ClassVar[type] = CameraParams
    resources: ClassVar[Resources] = Resources(num_cpus=1, batch_size=16)
    output_fields: ClassVar[tuple[pa.Field, ...]] = (
        pa.field(CAMERA_MOTION, pa.string()),
        pa.field(CAMERA_SPEED, pa.float32()),
        pa.field(OBJECT_MOTION, pa.float32()),
        pa.field(PATCH_MIN, pa.float32()),
        pa.field(PATCH_MAX, pa.float32()),
    )

    def __init__(self, params: CameraParams):
        super().__init__(params)
        self._dis = None
        self._grids: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def setup(self) -> None:
        import cv2

        # DIS (Kroeger et al. 2016): `ultrafast`, each pair started from the previous pair's flow
        # (a camera moves smoothly), is nearly as good on the generated truth as `fast` from
        # nothing, in a third of the time (bench/README "Camera motion")
        self._dis = cv2.DISOpticalFlow_create(PRESETS[self.params.preset])

    @classmethod
    def plans(cls, params: CameraParams) -> list[SamplePlan]:
        return [SamplePlan(cls.name, fps=params.fps, min_frames=3, max_side=params.max_side)]

    def inputs(self, batch: pa.Table) -> list:
        """Per row its frames, their indices in the clip and the clip's frame rate."""
        fps = batch.column(schema.FPS).to_pylist() if schema.FPS in batch.column_names else [None] * batch.num_rows
        return [(*got, rate) if got is not None and rate else None for got, rate in zip(frames_and_indices(batch, self.name), fps)]

    def score_batch(self, items: list) -> list[dict]:
        return [self.score(*item) for item in items]

    def pair(self, a: np.ndarray, b: np.ndarray, dt: float, init: np.ndarray) -> tuple[dict, np.ndarray]:
        """The camera model between two gray frames `dt` seconds apart, per second, and the flow,
        computed from `init` (the previous pair's flow, or zeros) and in its place. Never None:
        OpenCV's DIS then starts from what its last call left (a score would depend on the rows
        before it) and, after frames of another size, crashes."""
        import cv2

        h, w = a.shape
        if cv2.norm(a, b, cv2.NORM_INF) <= NOISE:  # nothing moved (a still picture, a slide): no flow to find
            init[:] = 0
            return _held_still(0.0, np.zeros(16)), init
        flow = self._dis.calc(a, b, init)
        src, at, at_small = self._grid(w, h)
        grid_flow = flow.reshape(-1, 2)[at]
        sq = (grid_flow * grid_flow).sum(1)
        # only where the picture has texture: on a flat wall the flow is zero whatever the camera
        # does (the aperture problem), and those points would outvote the rest for "static".
        # Texture at a quarter of the size: the scale DIS's finest level works at
        eig = cv2.cornerMinEigenVal(cv2.resize(a, self._small(w, h), interpolation=cv2.INTER_AREA), 3).ravel()[at_small]
        keep = eig >= 0.01 * max(float(eig.max()), 1e-9)
        if np.count_nonzero(keep) >= 6:
            src, f, f_sq = src[keep], grid_flow[keep], sq[keep]
        else:
            f, f_sq = grid_flow, sq
        # a camera that holds still wins over a model of what moves in front of it (a hand, a
        # face) whenever the still part of the picture is nearly as large (4/5) as the model's
        # inliers; no fit has more inliers than points, so a picture that is mostly still skips it
        tol = max(1.0, w / 160)
        still = np.count_nonzero(f_sq < tol * tol)
        per_s = 1.0 / (w * dt)  # pixels between the two frames -> frame widths per second
        # the 4x4 grid's cells: the mean flow of the lattice points in each
        patches = cv2.resize(np.sqrt(sq).reshape(self.params.grid, -1), (4, 4), interpolation=cv2.INTER_AREA).ravel() * per_s
        if still < 0.8 * len(f):
            m, inliers = cv2.estimateAffinePartial2D(src, src + f, method=cv2.RANSAC, ransacReprojThreshold=tol)
            if m is not None and still < 0.8 * np.count_nonzero(inliers):
                rot = m[:, :2]
                centre = np.array([w / 2, h / 2])
                t = m[:, 2] + rot @ centre - centre  # the similarity about the frame's centre
                moved = src @ (rot - EYE).T + m[:, 2]  # each point's motion under the model
                resid = f - moved
                return {"tx": t[0] * per_s, "ty": t[1] * per_s, "zoom": np.log(max(np.hypot(rot[0, 0], rot[1, 0]), 1e-6)) / dt,
                        "roll": np.degrees(np.arctan2(rot[1, 0], rot[0, 0])) / dt,
                        "speed": np.sqrt((moved * moved).sum(1)).sum() / len(f) * per_s,
                        "object": np.sqrt((resid * resid).sum(1)).sum() / len(f) * per_s, "patches": patches}, flow  # fmt: skip
        return _held_still(np.sqrt(f_sq).sum() / len(f) * per_s, patches), flow

    def _grid(self, w: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The fit's points, per frame size (once): the centres of a grid x grid lattice over a
        w x h frame as (x, y) pairs, their flat indices in the frame and in the frame at a quarter
        of its size."""
        key = (w, h)
        if key not in self._grids:
            g = self.params.grid
            ys, xs = np.mgrid[0:g, 0:g]
            px, py = ((xs + 0.5) * w / g).ravel(), ((ys + 0.5) * h / g).ravel()
            ix, iy = px.astype(int), py.astype(int)
            sw, sh = self._small(w, h)
            at_small = np.minimum(iy * sh // h, sh - 1) * sw + np.minimum(ix * sw // w, sw - 1)
            self._grids[key] = (np.stack([px, py], 1).astype(np.float32), iy * w + ix, at_small)
        return self._grids[key]

    @staticmethod
    def _small(w: int, h: int) -> tuple[int, int]:
        return max(1, w // 4), max(1, h // 4)

    def score(self, frames: np.ndarray, indices: np.ndarray, fps: float) -> dict:
        import cv2

        if len(frames) < 2:
            raise ValueError("needs at least 2 frames")
        n, h, w = frames.shape[:3]
        gray = cv2.cvtColor(frames.reshape(n * h, w, 3), cv2.COLOR_RGB2GRAY).reshape(n, h, w)  # (one call for all)
        pairs, flow = [], np.zeros((h, w, 2), np.float32)
        for k in range(1, n):
            got, flow = self.pair(gray[k - 1], gray[k], max(1, int(indices[k] - indices[k - 1])) / fps, flow)
            pairs.append(got)
        keys = ("tx", "ty", "zoom", "roll", "speed", "object")
        med = dict(zip(keys, np.median([[p[k] for k in keys] for p in pairs], axis=0).tolist()))
        patches = np.median([p["patches"] for p in pairs], axis=0)
        return {CAMERA_MOTION: self.label(med, pairs), CAMERA_SPEED: med["speed"], OBJECT_MOTION: med["object"],
                PATCH_MIN: float(patches.min()), PATCH_MAX: float(patches.max())}  # fmt: skip

    def label(self, med: dict, pairs: list[dict]) -> str:
        p = self.params
        if len(pairs) >= 3:
            t = np.array([[q["tx"], q["ty"]] for q in pairs])
            jitter = float(np.linalg.norm(np.diff(t, axis=0), axis=1).mean())
            if jitter >= p.shake_min and jitter > p.shake * max(float(np.linalg.norm(t.mean(0))), 1e-9):
                return "shaky"
        found = []
        if abs(med["tx"]) >= p.pan:
            found.append("pan_left" if med["tx"] > 0 else "pan_right")  # the scene moves right: the camera turned left
        if abs(med["ty"]) >= p.pan:
            found.append("tilt_up" if med["ty"] > 0 else "tilt_down")  # the scene moves down: the camera turned up
        if abs(med["zoom"]) >= p.zoom:
            found.append("zoom_in" if med["zoom"] > 0 else "zoom_out")
        if abs(med["roll"]) >= p.roll:
            found.append("roll")
        return "static" if not found else found[0] if len(found) == 1 else "complex"


def _held_still(object_motion: float, patches: np.ndarray) -> dict:
    """A pair's figures when the camera held still: all the flow there is is the objects'."""
    return {"tx": 0.0, "ty": 0.0, "zoom": 0.0, "roll": 0.0, "speed": 0.0, "object": object_motion, "patches": patches}
