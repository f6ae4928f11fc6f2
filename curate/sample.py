"""Decode each clip once for every scorer: the sampling plan and the `sample` stage.

Each scorer states which frames it needs as a SamplePlan (a rate or positions in the clip, and a
size). The sample stage takes the union of the frame indices of all plans, decodes the clip once,
and stores per plan an (N, H, W, 3) uint8 RGB array in the in-flight `_samples` column (npz bytes,
loaded without pickle). No scorer opens a video file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from curate import schema
from curate import stage as _stage
from curate.config import SampleParams  # noqa: F401 - the sample step's settings (a config section)
from curate.stage import pack_plans


@dataclass(frozen=True)
class SamplePlan:
    name: str  # the scorer's name; the key of its frames
    fps: float | None = None  # frames at this rate from the clip start ...
    positions: tuple[float, ...] = ()  # ... or at these fractions of the clip (0 = first, 1 = last)
    min_frames: int = 1
    short_side: int | None = None  # resize so the short side is this ...
    max_side: int | None = None  # ... or so the long side is at most this (never upscaled)

    def indices(self, n_frames: int, fps: float) -> list[int]:
        if n_frames <= 0:
            return []
        if self.fps:
            step = max(1.0, fps / self.fps)
            idx = [int(round(k * step)) for k in range(int((n_frames - 1) / step) + 1)]
        else:
            idx = [int(round(p * (n_frames - 1))) for p in self.positions]
        if len(set(idx)) < self.min_frames:
            idx = [int(round(x)) for x in np.linspace(0, n_frames - 1, min(self.min_frames, n_frames))]
        return sorted(set(i for i in idx if 0 <= i < n_frames))

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        if self.short_side:
            scale = self.short_side / min(width, height)
        elif self.max_side:
            scale = min(1.0, self.max_side / max(width, height))
        else:
            scale = 1.0
        return max(1, int(round(width * scale))), max(1, int(round(height * scale)))

    def nbytes(self, width: int, height: int, n_frames: int, fps: float) -> int:
        """Bytes of this plan's frames of a clip, as curate.stage.pack_plans stores them."""
        w, h = self.size_for(width, height)
        return w * h * 3 * len(self.indices(n_frames, fps))


class DecodeError(Exception):
    pass


def _decode_pyav(path: str, wanted: set[int]) -> dict[int, np.ndarray]:
    import av

    out: dict[int, np.ndarray] = {}
    last = max(wanted)
    with av.open(path) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(c.decode(stream)):
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    return out


def _decode_opencv(path: str, wanted: set[int]) -> dict[int, np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise DecodeError("OpenCV cannot open the file")
    out: dict[int, np.ndarray] = {}
    try:
        last = max(wanted)
        for i in range(last + 1):
            if not cap.grab():  # grab() decodes without converting: cheap for skipped frames
                break
            if i in wanted:
                ok, bgr = cap.retrieve()
                if ok:
                    out[i] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()
    return out


DECODERS = {"pyav": _decode_pyav, "opencv": _decode_opencv}


def decode_frames(path: str, wanted: set[int], decoders: list[str]) -> tuple[dict[int, np.ndarray], str]:
    """The wanted frames (index -> RGB), from the first decoder that delivers all of them.

    A decoder that raises or returns fewer frames than asked is not trusted; the next one is tried,
    and the best partial result is returned only when no decoder delivers everything."""
    best: tuple[dict[int, np.ndarray], str] = ({}, "")
    errors = []
    for name in decoders:
        try:
            frames = DECODERS[name](path, wanted)
        except Exception as e:  # noqa: BLE001 - any decoder failure means: try the next
            errors.append(f"{name}: {type(e).__name__}: {e}")
            continue
        if len(frames) == len(wanted):
            return frames, name
        errors.append(f"{name}: {len(frames)} of {len(wanted)} frames")
        if len(frames) > len(best[0]):
            best = (frames, name)
    if not best[0]:
        raise DecodeError("; ".join(errors) or "no decoder")
    return best


def clip_frames(row: dict) -> int:
    """Frames in a row's clip file (rows written before `num_frames` existed: the source range)."""
    n = row.get(schema.NUM_FRAMES)
    return n if n is not None else row[schema.END_FRAME] - row[schema.START_FRAME]


class SampleStage(_stage.StageBase):
    """Adds `_samples`: every plan's frames, from one decode of the clip."""

    name: ClassVar[str] = "sample"
    Params: ClassVar[type] = SampleParams
    resources: ClassVar[_stage.Resources] = _stage.Resources(num_cpus=1, batch_size=4)
    output_columns: ClassVar[tuple[str, ...]] = (schema.ERRORS,)

    def __init__(self, params: SampleParams, plans: list[SamplePlan]):
        self.params = params
        self.wanted = plans  # not `plans`: that name is the hook every stage has

    def setup(self) -> None:
        pass

    def __call__(self, batch: pa.Table) -> pa.Table:
        from curate.storage import localize, release

        n = batch.num_rows
        errors = batch.column(schema.ERRORS).to_pylist() if schema.ERRORS in batch.column_names else [None] * n
        # rows the extraction decode already sampled (curate.clips.extract_video) keep their frames, in
        # Arrow: a batch's carried frames can be the whole 128 MB budget, so they are never copied out
        carried = batch.column(schema.SAMPLES).is_valid().to_pylist() if schema.SAMPLES in batch.column_names else [False] * n
        have: dict[int, pa.Buffer] = {}  # the frames sampled here, by row
        cols = [c for c in (schema.CLIP_URI, schema.START_FRAME, schema.END_FRAME, schema.FPS, schema.NUM_FRAMES,
                            schema.CLIP_MODE, schema.SOURCE_URI, schema.VIDEO_ID, schema.WIDTH, schema.HEIGHT,
                            schema.SOURCE_WIDTH, schema.SOURCE_HEIGHT, schema.SOURCE_FPS) if c in batch.column_names]  # fmt: skip
        rows = batch.select(cols).to_pylist()
        spans: dict[tuple[str, str], list[int]] = {}  # deferred rows without frames, per source: decoded from it
        for i, row in enumerate(rows):
            if not carried[i] and not row[schema.CLIP_URI] and row.get(schema.CLIP_MODE) == "deferred":
                spans.setdefault((row[schema.SOURCE_URI], row[schema.VIDEO_ID]), []).append(i)
        from curate.deferred import sample_rows  # (lazy: it brings the cut analysis, which only a deferred run needs)

        for idx in spans.values():
            for i, got in zip(idx, sample_rows([rows[i] for i in idx], self.wanted)):
                if isinstance(got, Exception) or got is None:
                    why = f"{type(got).__name__}: {got}" if got is not None else "its frames did not all decode"
                    errors[i] = _stage.add_error(errors[i], self.name, why)
                else:
                    have[i] = got
        for i, row in enumerate(rows):
            if carried[i] or i in have or not row[schema.CLIP_URI]:
                continue
            count = clip_frames(row)
            per_plan = {p.name: p.indices(count, row[schema.FPS]) for p in self.wanted}
            wanted = set().union(*per_plan.values()) if per_plan else set()
            try:
                path = localize(row[schema.CLIP_URI])
                try:
                    frames, _ = decode_frames(path, wanted, self.params.decoders)
                finally:
                    release(row[schema.CLIP_URI])
            except Exception as e:  # noqa: BLE001
                errors[i] = _stage.add_error(errors[i], self.name, f"{type(e).__name__}: {e}")
                continue
            have[i] = pack_plans(self.wanted, per_plan, frames)
        batch = batch.set_column(batch.column_names.index(schema.ERRORS), schema.ERRORS, pa.array(errors, pa.list_(pa.string())))
        if schema.SAMPLES not in batch.column_names:
            return batch.append_column(schema.SAMPLES, _stage.binary_column([have.get(i) for i in range(n)]))
        if not have:
            return batch
        k = batch.column_names.index(schema.SAMPLES)
        return batch.set_column(k, schema.SAMPLES, _stage.binary_column([have.get(i) for i in range(n)], batch.column(k)))
