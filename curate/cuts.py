"""Multi-FPS scene-cut detection with PySceneDetect's detectors over one downscaled decode.

SVD detects cuts "in a cascaded manner at three different FPS levels": at the native rate a hard
cut is one big frame difference; at 1-4 fps a slow fade or dissolve also becomes one big jump.
Every level reads the same decoded frames (a level at fps f sees every k-th frame), so the video
is decoded exactly once, by ffmpeg, already scaled. Cuts found at a low level are moved to the
native frame with the largest luma change inside the gap they span, then all levels are unioned:
cuts closer than `merge_tolerance_s` are one cut, and the most precise level wins.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction

import cv2
import numpy as np

from curate.config import (
    AdaptiveDetectorParams,
    ContentDetectorParams,
    CutsParams,
    DetectorParams,
    ThresholdDetectorParams,
)
from curate.video import VideoInfo, iter_frames, scaled_size


@dataclass
class CutResult:
    cuts: list[int]  # first frame of each new scene (frame 0 never listed)
    n_frames: int  # frames that decoded
    by_level: dict[str, list[int]] = field(default_factory=dict)  # before the union, for analysis
    seconds: float = 0.0


def make_detector(p: DetectorParams, min_scene_len: int):
    from scenedetect.detectors import AdaptiveDetector, ContentDetector, ThresholdDetector

    if isinstance(p, ContentDetectorParams):
        return ContentDetector(threshold=p.threshold, min_scene_len=min_scene_len, luma_only=p.luma_only)
    if isinstance(p, AdaptiveDetectorParams):
        return AdaptiveDetector(
            adaptive_threshold=p.threshold,
            min_scene_len=min_scene_len,
            min_content_val=p.min_content_val,
            window_width=p.window_width,
            luma_only=p.luma_only,
        )
    if isinstance(p, ThresholdDetectorParams):
        return ThresholdDetector(threshold=p.threshold, min_scene_len=min_scene_len, fade_bias=p.fade_bias)
    raise TypeError(f"unknown detector params {type(p).__name__}")


class _Level:
    def __init__(self, name: str, stride: int, fps: float, detectors: list):
        self.name = name
        self.stride = stride
        self.rate = Fraction(fps).limit_denominator(100000)
        self.detectors = detectors
        self.count = 0  # frames this level has seen
        self.found: list[int] = []  # cuts in this level's frame numbers (x stride = native)

    def feed(self, frame: np.ndarray) -> None:
        from scenedetect import FrameTimecode

        tc = FrameTimecode(self.count, fps=self.rate)
        for det in self.detectors:
            for cut in det.process_frame(tc, frame):
                self.found.append(cut.frame_num)
        self.count += 1

    def finish(self) -> None:
        from scenedetect import FrameTimecode

        if self.count == 0:
            return
        tc = FrameTimecode(self.count - 1, fps=self.rate)
        for det in self.detectors:
            for cut in det.post_process(tc):
                self.found.append(cut.frame_num)


def detect_cuts(path: str, info: VideoInfo, params: CutsParams, deadline_s: float | None = None) -> CutResult:
    """Cuts of one video from a single scaled decode: the classical cascade, TransNetV2 on every
    frame, or the hybrid (TransNetV2 judges the cascade's proposals on windows around them)."""
    t0 = time.perf_counter()
    model = stream = spool = None
    if params.detector != "classical":
        from curate import transnet

        model = transnet.load_model(params.transnet_device)
        if params.detector == "transnetv2":
            stream = transnet.Stream(model, params.transnet_batch)
        else:  # the 48x27 frames go to disk, read back around the proposals: memory stays flat
            spool = tempfile.TemporaryFile()
    use_levels = params.detector != "transnetv2"
    width, height = scaled_size(info.coded_width, info.coded_height, params.analysis_size)
    native = info.fps
    levels: list[_Level] = []
    for lv in params.levels:
        stride = 1 if lv.fps is None or lv.fps >= native else max(1, int(round(native / lv.fps)))
        level_fps = native / stride
        min_len = max(1, int(round(params.min_scene_len_s * level_fps)))
        name = "native" if stride == 1 and lv.fps is None else f"{lv.fps:g}fps"
        dets = [make_detector(d, min_len) for d in lv.detectors]
        levels.append(_Level(name, stride, level_fps, dets))

    # Per-frame mean absolute luma change against each of the last `lags` frames: lag 1 places
    # low-level cuts exactly; the longer lags tell a flash (the picture comes back) from a cut.
    # The flash filter also compares contrast-normalised frames, so two dark frames of a fade
    # through black (alike in raw luma, different pictures) are not taken for the same picture.
    lags = params.flash_frames + 1
    dists: list[np.ndarray] = [np.full((2, lags), np.inf, np.float32)]
    recent: list[tuple[np.ndarray, np.ndarray]] = []  # the last `lags` (luma, normalised luma)
    index = 0
    # Skipping the in-loop deblocking filter makes H.264/HEVC decoding cheaper, but only on frames
    # nothing refers to: skipped on reference frames, the error accumulates over a GOP and resets at
    # the next keyframe, which on a still slide is a jump big enough to cut (the splice set showed it).
    fast = ("-skip_loop_filter", "noref") if params.fast_decode else ()
    frames = iter_frames(path, width, height, threads=params.decode_threads, deadline_s=deadline_s, extra_input_args=fast)
    for chunk in frames:
        luma = cv2.cvtColor(chunk.reshape(-1, width, 3), cv2.COLOR_BGR2GRAY).reshape(len(chunk), height, width)
        for j in range(len(chunk)):
            norm = luma[j].astype(np.float32)
            norm = (norm - norm.mean()) / max(float(norm.std()), 1.0)
            if recent:
                d = np.full((2, lags), np.inf, np.float32)
                for k, (old, old_norm) in enumerate(reversed(recent)):
                    d[0, k] = cv2.absdiff(luma[j], old).mean()
                    d[1, k] = cv2.absdiff(norm, old_norm).mean()
                dists.append(d)
            recent = (recent + [(luma[j], norm)])[-lags:]
            frame = chunk[j]
            if model is not None:
                thumb = transnet.thumbnail(frame)
                if stream is not None:
                    stream.push(thumb)
                else:
                    spool.write(np.ascontiguousarray(thumb).tobytes())
            if use_levels:
                for level in levels:
                    if index % level.stride == 0:
                        level.feed(frame)
            index += 1
    n_frames = index
    if use_levels:
        for level in levels:
            level.finish()

    dist_arr = np.stack(dists[:n_frames]) if n_frames else np.zeros((0, 2, lags), np.float32)
    diff_arr = dist_arr[:, 0, 0].astype(np.float64) if n_frames else np.zeros(0)
    if n_frames:
        diff_arr[0] = 0.0
    candidates: list[tuple[int, int, float]] = []  # (frame, precision rank, strength)
    by_level: dict[str, list[int]] = {}
    flashes: set[int] = set()
    for rank, level in enumerate(sorted(levels, key=lambda lv: lv.stride)):
        placed = []
        for j in level.found:
            f = _refine(j * level.stride, level.stride, diff_arr)
            if 0 < f < n_frames and is_flash(f, dist_arr, params.flash_frames, params.flash_ratio):
                flashes.add(f)
            elif 0 < f < n_frames:
                placed.append(f)
        by_level[level.name] = sorted(set(placed))
        candidates += [(f, level.stride, float(diff_arr[f])) for f in by_level[level.name]]

    tol = max(1, int(round(params.merge_tolerance_s * native)))
    min_len = max(1, int(round(params.min_scene_len_s * native)))
    if flashes:
        by_level["flash"] = sorted(flashes)  # what the flash filter removed, for analysis
    if stream is not None:  # transnetv2: every frame scored while decoding
        found = [_place(c, diff_arr) for c in transnet.cuts_from(stream.finish(), params.transnet_threshold)]
        by_level["transnetv2"] = found
        cuts = _union([(f, 1, float(diff_arr[f])) for f in found if 0 < f < n_frames], tol, min_len, n_frames)
    elif spool is not None:  # hybrid: the network judges the proposals
        with spool:
            cuts = _hybrid(candidates, flashes, diff_arr, spool, model, params, tol, min_len, n_frames, by_level)
    else:
        cuts = _union(candidates, tol, min_len, n_frames)
    return CutResult(cuts=cuts, n_frames=n_frames, by_level=by_level, seconds=time.perf_counter() - t0)


def _place(cut: int, diffs: np.ndarray, reach: int = 1) -> int:
    """TransNetV2 marks the frames of a transition; a hard cut is placed on the frame of the
    largest luma change next to where the marked run ends (it marks either side of a hard cut)."""
    lo, hi = max(1, cut - reach - 1), min(len(diffs), cut + reach + 1)
    return lo + int(np.argmax(diffs[lo:hi])) if hi > lo else cut


def proposals(candidates, flashes: set[int], diffs: np.ndarray, flash_frames: int) -> list[int]:
    """What the hybrid shows the network: every level's cut, and every frame whose luma change
    stands far out of its surroundings (high recall, so the network can find what the thresholds
    missed, such as a text-only slide change), except where the flash filter has spoken."""
    out = {f for f, _, _ in candidates}
    if len(diffs) > 2:
        pad = np.pad(diffs, 12, mode="edge")
        local = np.median(np.lib.stride_tricks.sliding_window_view(pad, 25), axis=1)
        out |= {int(f) for f in np.nonzero((diffs >= 4.0 * np.maximum(local, 0.5)) & (diffs >= 3.0))[0] if f > 0}
    near_flash = {f + d for f in flashes for d in range(-flash_frames - 1, flash_frames + 2)}
    return sorted(out - near_flash)


def _hybrid(candidates, flashes, diffs, spool, model, params: CutsParams, tol, min_len, n_frames, by_level) -> list[int]:
    from curate import transnet

    props = proposals(candidates, flashes, diffs, params.flash_frames)
    by_level["proposed"] = props
    if not props:
        return []
    w, h = transnet.SIZE
    frames = np.memmap(spool, dtype=np.uint8, mode="r", shape=(n_frames, h, w, 3)) if n_frames else None
    ranges: list[list[int]] = []
    for f in props:  # the frames around each proposal, overlapping stretches merged
        lo, hi = max(0, f - tol - 2), min(n_frames, f + tol + 3)
        if ranges and lo <= ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], hi)
        else:
            ranges.append([lo, hi])
    probs = transnet.predict_ranges(model, lambda a, b: np.asarray(frames[a:b]), n_frames, ranges, params.transnet_batch)
    strength = {f: (stride, s) for f, stride, s in candidates}
    kept = []
    for f in props:
        near = [k for k in range(f - 2, f + 3) if probs.get(k, 0.0) > params.transnet_threshold]
        if not near:
            continue
        stride, s = strength.get(f, (1, float(diffs[f])))
        kept.append((f, stride, s))
    by_level["hybrid"] = sorted(f for f, _, _ in kept)
    return _union(kept, tol, min_len, n_frames)


# Contrast-normalised frames of one shot a few frames apart differ by about 0.2-0.5 (unit std);
# two unrelated pictures by about 1.1 (the mean |x - y| of two independent unit normals).
ALIKE_NORMALISED = 0.6


def is_flash(f: int, dist: np.ndarray, flash_frames: int, ratio: float) -> bool:
    """Whether the change into frame `f` reverts: some frame before it (i < f) and some frame
    from `f` on (j >= f), at most `flash_frames` frames apart in between, show the same picture
    (raw luma within `ratio` of the jump at f, and alike once contrast-normalised), while the
    frames between them stood out from it. A cut changes the picture for good; a flash, a strobe
    or a few frames of lightning leave the frames either side of them alike. (PySceneDetect's
    flash filter only holds cuts back by min_scene_len, so a flash still cuts: #35, #217 there.)

    `dist[t, 0, k]` / `dist[t, 1, k]`: raw / normalised mean |luma| difference of frame t and t-k-1."""
    if flash_frames <= 0 or f <= 0 or f >= len(dist):
        return False
    jump = float(dist[f, 0, 0])
    if not np.isfinite(jump) or jump <= 0:
        return False
    for i in range(max(0, f - flash_frames), f):
        for j in range(f, min(len(dist), i + flash_frames + 2)):
            lag = j - i - 1
            if lag < 1 or dist[j, 0, lag] > ratio * jump or dist[j, 1, lag] > ALIKE_NORMALISED:
                continue
            # ... and the frames between stood out from frame i (not so in a hard cut between two
            # alike shots: the frames before the cut are frame i's own shot)
            excursion = max(float(dist[m, 0, m - i - 1]) for m in range(i + 1, j))
            if excursion >= 0.5 * jump and excursion >= 2.5 * float(dist[j, 0, lag]):
                return True
    return False


def _refine(frame: int, stride: int, diffs: np.ndarray) -> int:
    """A cut seen between samples frame-stride and frame: the native frame of largest change."""
    if stride <= 1 or len(diffs) == 0:
        return frame
    lo = max(1, frame - stride + 1)
    hi = min(len(diffs), frame + 1)
    if hi <= lo:
        return min(frame, len(diffs) - 1)
    return lo + int(np.argmax(diffs[lo:hi]))


def _union(candidates: list[tuple[int, int, float]], tol: int, min_len: int, n_frames: int) -> list[int]:
    """Merge cuts within `tol` frames (most precise level, then strongest change, wins), then drop
    cuts that would leave a scene shorter than `min_len` frames at the start."""
    if not candidates:
        return []
    candidates.sort()
    groups: list[list[tuple[int, int, float]]] = [[candidates[0]]]
    for c in candidates[1:]:
        if c[0] - groups[-1][-1][0] <= tol:
            groups[-1].append(c)
        else:
            groups.append([c])
    merged = sorted(min(g, key=lambda c: (c[1], -c[2]))[0] for g in groups)
    cuts: list[int] = []
    for f in merged:
        if f < min_len or (cuts and f - cuts[-1] < min_len):
            continue
        cuts.append(f)
    return cuts


# --- step 2 of an input (curate.per_video): cuts into the record ----------------------------------


from curate import schema  # noqa: E402
from curate.video import DecodeTimeout  # noqa: E402


def find_cuts(rec, params: CutsParams, min_frames: int = 1) -> None:
    """Step 2 of an input (curate.per_video): the cut list and the true decoded frame count."""
    left = rec.remaining_s()
    try:
        if left is not None and left <= 0:
            raise DecodeTimeout("time budget spent before cut detection")
        result = detect_cuts(rec.local, rec.info, params, deadline_s=left)
    except DecodeTimeout as e:
        return rec.set_quarantine(schema.Q_TIMEOUT, f"cuts: {e}")
    except Exception as e:  # noqa: BLE001
        return rec.set_quarantine(schema.Q_ERROR, f"cuts: {type(e).__name__}: {e}")
    if result.n_frames < min_frames:
        return rec.set_quarantine(schema.Q_UNDECODABLE, f"{result.n_frames} frames decode")
    rec.cuts, rec.n_frames, rec.cuts_by_level = result.cuts, result.n_frames, result.by_level
