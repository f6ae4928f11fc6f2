"""Multi-FPS scene-cut detection with PySceneDetect's detectors over one downscaled decode.

SVD detects cuts "in a cascaded manner at three different FPS levels": at the native rate a hard
cut is one big frame difference; at 1-4 fps a slow fade or dissolve also becomes one big jump.
Every level reads the same decoded frames (a level at fps f sees every k-th frame), so the video
is decoded exactly once, by ffmpeg, already scaled. Cuts found at a low level are moved to the
native frame with the largest luma change inside the gap they span, then all levels are unioned:
cuts closer than `merge_tolerance_s` are one cut, and the most precise level wins.
"""

from __future__ import annotations

import functools
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction

import cv2
import numpy as np

from curate import schema
from curate.config import AdaptiveDetectorParams, ContentDetectorParams, CutsParams, DetectorParams, ThresholdDetectorParams
from curate.record import InputRecord, Quarantine
from curate.video import DecodeTimeout, VideoInfo, iter_frames, scaled_size, seek_args


@dataclass
class CutResult:
    cuts: list[int]  # first frame of each new scene (frame 0 never listed)
    n_frames: int  # frames that decoded
    by_level: dict[str, list[int]] = field(default_factory=dict)  # before the union, for analysis
    seconds: float = 0.0


def make_detector(p: DetectorParams, min_scene_len: int):
    from scenedetect.detectors import ThresholdDetector

    content, adaptive = _scored_detectors()
    if isinstance(p, ContentDetectorParams):
        return content(threshold=p.threshold, min_scene_len=min_scene_len, luma_only=p.luma_only)
    if isinstance(p, AdaptiveDetectorParams):
        return adaptive(adaptive_threshold=p.threshold, min_scene_len=min_scene_len, min_content_val=p.min_content_val,
                        window_width=p.window_width, luma_only=p.luma_only)  # fmt: skip
    if isinstance(p, ThresholdDetectorParams):
        return ThresholdDetector(threshold=p.threshold, min_scene_len=min_scene_len, fade_bias=p.fade_bias)
    raise TypeError(f"unknown detector params {type(p).__name__}")


@functools.cache
def _scored_detectors():
    """PySceneDetect's content and adaptive detectors, fed the HSV differences of a whole decoded
    chunk at once instead of converting and differencing each frame in Python: at analysis size
    that per-frame work was most of the cut stage, and three detectors at the native rate did it
    three times. Decisions (thresholds, adaptive ratio, flash filter, min_scene_len) stay theirs;
    the score is the same number (`_calculate_frame_score`'s formula, tested equal)."""
    from scenedetect.detectors import AdaptiveDetector, ContentDetector

    class _Fed:
        components: tuple[float, float, float, float] | None = None  # set by _Level before each frame

        def _calculate_frame_score(self, timecode, frame_img):
            if self._weights.delta_edges != 0 or self.stats_manager is not None:
                return super()._calculate_frame_score(timecode, frame_img)  # edges: not precomputed
            if self.components is None:  # the first frame this level sees
                return 0.0
            return sum(c * w for c, w in zip(self.components, self._weights, strict=True)) / sum(
                abs(w) for w in self._weights)

    class FedContent(_Fed, ContentDetector):
        pass

    class FedAdaptive(_Fed, AdaptiveDetector):
        pass

    return FedContent, FedAdaptive


class _Level:
    def __init__(self, name: str, stride: int, fps: float, detectors: list, min_len: int = 1, start: int = 0):
        self.name, self.stride, self.min_len, self.detectors = name, stride, min_len, detectors
        self.rate = Fraction(fps).limit_denominator(100000)
        self.fed = [d for d in detectors if hasattr(d, "components")]
        # this level's number of the next frame it sees: it sees the frames of the whole video
        # whose index is a multiple of its stride, wherever the decode began (a segment)
        self.count = -(-start // stride)
        self.last_hsv: np.ndarray | None = None  # of the last frame it saw
        self.found: list[int] = []  # cuts in this level's frame numbers (x stride = native)

    def feed_chunk(self, chunk: np.ndarray, first_index: int) -> None:
        """The frames of a decoded chunk this level sees (every stride-th native frame)."""
        from scenedetect import FrameTimecode

        picks = [j for j in range(len(chunk)) if (first_index + j) % self.stride == 0]
        if not picks:
            return
        comps: list[tuple[float, float, float, float] | None] = [None] * len(picks)
        if self.fed:
            seen = chunk if self.stride == 1 else chunk[picks]  # (a view at the native rate)
            n, h, w, _ = seen.shape
            hsv = cv2.cvtColor(seen.reshape(n * h, w, 3), cv2.COLOR_BGR2HSV).reshape(n, h * w, 1, 3)
            npix = float(h * w)

            def put(k: int, diff: np.ndarray) -> None:
                # the mean |difference| per channel, as PySceneDetect's _mean_pixel_distance
                dh, ds, dl, _ = cv2.sumElems(diff)  # exact: integer sums far below 2**53
                comps[k] = (dh / npix, ds / npix, dl / npix, 0.0)

            if self.last_hsv is not None:  # the chunk's first frame against the last one seen
                put(0, cv2.absdiff(hsv[0], self.last_hsv))
            if n > 1:
                diffs = cv2.absdiff(hsv[1:].reshape(-1, 1, 3), hsv[:-1].reshape(-1, 1, 3)).reshape(n - 1, h * w, 1, 3)
                for k in range(n - 1):
                    put(k + 1, diffs[k])
            self.last_hsv = hsv[-1].copy()
        for k, j in enumerate(picks):
            tc = FrameTimecode(self.count, fps=self.rate)
            for det in self.fed:
                det.components = comps[k]
            for det in self.detectors:
                for cut in det.process_frame(tc, chunk[j]):
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


def detect_cuts(path: str, info: VideoInfo, params: CutsParams, deadline_s: float | None = None,
                first: int = 0, count: int | None = None) -> CutResult:
    """Cuts of one video from a single scaled decode: the classical cascade, TransNetV2 on every
    frame, or the hybrid (TransNetV2 judges the cascade's proposals on windows around them).
    `first`, `count`: decode only frames [first, first + count) (a segment's window, which
    curate.segments starts on a keyframe); cuts and n_frames are then counted from frame 0."""
    t0 = time.perf_counter()
    width, height = scaled_size(info.coded_width, info.coded_height, params.analysis_size)
    analysis = CutAnalysis(info.fps, params, width, height, start=first)
    # Skipping the in-loop deblocking filter makes H.264/HEVC decoding ~20% cheaper. The error it
    # leaves accumulates over a GOP and resets at the next keyframe: on a still slide that pop is
    # big enough for the sensitive detectors, and `min_changed` is what rules it out (no pixel of a
    # pop changes by STRONG_CHANGE; every real cut measured changes 8% of them or more).
    fast = ("-skip_loop_filter", "all") if params.fast_decode else ()
    seek = tuple(seek_args(info, first))
    for chunk in iter_frames(path, width, height, threads=params.decode_threads, deadline_s=deadline_s,
                             extra_input_args=fast + seek, max_frames=count):  # fmt: skip
        analysis.feed(chunk)
    result = analysis.finish()
    result.n_frames += first
    result.seconds = time.perf_counter() - t0
    return result


def _level_shape(level_fps: float | None, native_fps: float, params: CutsParams) -> tuple[int, int]:
    """(stride, min_scene_len in the level's frames) of a cascade level on a video of `native_fps`."""
    stride = 1 if level_fps is None or level_fps >= native_fps else max(1, int(round(native_fps / level_fps)))
    return stride, max(1, int(round(params.min_scene_len_s * (native_fps / stride))))


def analysis_lag(native_fps: float, params: CutsParams) -> int:
    """How far behind the newest frame a provisional cut is final (CutAnalysis.lag): a level's
    detectors hold a cut for up to its min_scene_len (PySceneDetect's flash filter merges within
    it) plus their windows, at its stride; then the flash check, the merge tolerance and the
    minimum length."""
    shapes = [_level_shape(lv.fps, native_fps, params) for lv in params.levels]
    tol = max(1, int(round(params.merge_tolerance_s * native_fps)))
    min_len = max(1, int(round(params.min_scene_len_s * native_fps)))
    return max([stride * (n + 4) for stride, n in shapes] or [0]) + params.flash_frames + tol + min_len + 2


class CutAnalysis:
    """The cut detection of one video, fed its analysis frames (BGR at `width` x `height`) a chunk
    at a time: `finish()` gives the cuts. `provisional()` gives the cuts of what it has seen so
    far; those more than `lag` frames behind the last frame fed are the final ones (the classical
    cascade: its detectors, the flash and pop filters and the merge each look a bounded way
    ahead), which is what lets the deferred clip mode (curate.deferred) plan clips while it
    decodes."""

    def __init__(self, native_fps: float, params: CutsParams, width: int, height: int, start: int = 0):
        """`start`: the video's frame index of the first frame fed (a segment of a long input,
        decoded from a keyframe before it: curate.segments); cuts are in the video's frame indices."""
        self.params, self.width, self.height, self.start = params, width, height, start
        self.model = self.stream = self.spool = None
        if params.detector != "classical":
            from curate import transnet

            self.model = transnet.load_model(params.transnet_device)
            if params.detector == "transnetv2":
                self.stream = transnet.Stream(self.model, params.transnet_batch)
            else:  # the 48x27 frames go to disk, read back around the proposals: memory stays flat
                self.spool = tempfile.TemporaryFile()
        self.use_levels = params.detector != "transnetv2"
        self.levels: list[_Level] = []
        for lv in params.levels:
            stride, min_len = _level_shape(lv.fps, native_fps, params)
            name = "native" if stride == 1 and lv.fps is None else f"{lv.fps:g}fps"
            detectors = [make_detector(d, min_len) for d in lv.detectors]
            self.levels.append(_Level(name, stride, native_fps / stride, detectors, min_len, start))
        self.signals = _Signals(params.flash_frames + 1, [lv.stride for lv in self.levels], start)
        self.tol = max(1, int(round(params.merge_tolerance_s * native_fps)))
        self.min_len = max(1, int(round(params.min_scene_len_s * native_fps)))
        self.lag = analysis_lag(native_fps, params)
        self.n_frames = 0

    def feed(self, chunk: np.ndarray) -> None:
        luma = cv2.cvtColor(chunk.reshape(-1, self.width, 3), cv2.COLOR_BGR2GRAY).reshape(len(chunk), self.height, self.width)
        self.signals.add(chunk, luma)
        if self.use_levels:
            for level in self.levels:
                level.feed_chunk(chunk, self.start + self.n_frames)
        if self.model is not None:
            from curate import transnet

            for frame in chunk:
                thumb = transnet.thumbnail(frame)
                if self.stream is not None:
                    self.stream.push(thumb)
                else:
                    self.spool.write(np.ascontiguousarray(thumb).tobytes())
        self.n_frames += len(chunk)

    def provisional(self) -> list[int]:
        """The cascade's cuts of the frames fed so far (classical only: the network's are known at
        the end); final where more than `lag` frames behind the newest."""
        if self.model is not None:
            raise ValueError("provisional cuts need cuts.detector: classical")
        return self._cuts(final=False).cuts

    def finish(self) -> CutResult:
        return self._cuts(final=True)

    def _cuts(self, final: bool) -> CutResult:
        params, n_frames = self.params, self.n_frames
        if final and self.use_levels:
            for level in self.levels:
                level.finish()
        dist_arr, changed = self.signals.result(n_frames)
        diff_arr = dist_arr[:, 0, 0].astype(np.float64)
        if n_frames:
            diff_arr[0] = 0.0
        candidates: list[tuple[int, int, float]] = []  # (frame, precision rank, strength)
        by_level: dict[str, list[int]] = {}
        flashes: set[int] = set()
        weak: set[int] = set()
        for level in sorted(self.levels, key=lambda lv: lv.stride):
            placed = []
            for j in level.found:
                at = j * level.stride - self.start  # (everything below in frames of this decode)
                f = _refine(at, level.stride, diff_arr)
                if not 0 < f < n_frames:
                    continue
                if is_flash(f, dist_arr, params.flash_frames, params.flash_ratio):
                    flashes.add(f)
                elif changed[level.stride][at] < params.min_changed and (
                        level.stride > 1 or dist_arr[f, 0, -1] < POP_SPAN):
                    weak.add(f)  # nothing in the picture changed strongly: a keyframe pop, noise
                else:
                    placed.append(f)
            by_level[level.name] = sorted(set(placed))
            candidates += [(f, level.stride, float(diff_arr[f])) for f in by_level[level.name]]
        tol, min_len = self.tol, self.min_len
        if flashes:
            by_level["flash"] = sorted(flashes)  # what the flash filter removed, for analysis
        if weak:
            by_level["weak"] = sorted(weak)
        if self.stream is not None:  # transnetv2: every frame scored while decoding
            from curate import transnet

            found = [_place(c, diff_arr) for c in transnet.cuts_from(self.stream.finish(), params.transnet_threshold)]
            by_level["transnetv2"] = found
            cuts = _union([(f, 1, float(diff_arr[f])) for f in found if 0 < f < n_frames], tol, min_len, n_frames)
        elif self.spool is not None:  # hybrid: the network judges the proposals
            with self.spool:
                cuts = _hybrid(candidates, flashes, dist_arr, self.spool, self.model, params, tol, min_len, n_frames, by_level)
        else:
            cuts = _union(candidates, tol, min_len, n_frames)
        if self.start:
            cuts = [c + self.start for c in cuts]
            by_level = {k: [c + self.start for c in v] for k, v in by_level.items()}
        return CutResult(cuts=cuts, n_frames=n_frames, by_level=by_level, seconds=0.0)


def _place(cut: int, diffs: np.ndarray, reach: int = 1) -> int:
    """TransNetV2 marks the frames of a transition; a hard cut is placed on the frame of the
    largest luma change next to where the marked run ends (it marks either side of a hard cut)."""
    lo, hi = max(1, cut - reach - 1), min(len(diffs), cut + reach + 1)
    return lo + int(np.argmax(diffs[lo:hi])) if hi > lo else cut


def proposals(candidates, flashes: set[int], diffs: np.ndarray, flash_frames: int) -> list[int]:
    """High-recall proposals: every level's cut, and every frame whose luma change stands far out
    of its surroundings (what the thresholds may have missed), except where the flash filter
    has spoken."""
    out = {f for f, _, _ in candidates}
    if len(diffs) > 2:
        pad = np.pad(diffs, 12, mode="edge")
        local = np.median(np.lib.stride_tricks.sliding_window_view(pad, 25), axis=1)
        # a mean luma change of 6 (of 255) at analysis size: below it, no proposal on the splice
        # set or ../shared/data was a cut (the ones TransNetV2 confirmed changed by 37); between
        # 3 and 6 there were 14 proposals, a third of the network's work, none of them a cut
        out |= {int(f) for f in np.nonzero((diffs >= 4.0 * np.maximum(local, 0.5)) & (diffs >= 6.0))[0] if f > 0}
    near_flash = {f + d for f in flashes for d in range(-flash_frames - 1, flash_frames + 2)}
    return sorted(out - near_flash)


def _hybrid(candidates, flashes, dist, spool, model, params: CutsParams, tol, min_len, n_frames, by_level) -> list[int]:
    """The cascade's cuts stand; TransNetV2 decides the proposals its thresholds turned down
    (a cut between two shots of one source, a weak change), on windows around them only.

    It never vetoes a cut of the cascade: at 48x27 it cannot see a text-only slide change (it
    gives the slide changes of a real talk 0.003 to 0.37), and flashes and keyframe pops are
    already ruled out by what they physically are (`is_flash`, `min_changed`)."""
    from curate import transnet

    diffs = dist[:, 0, 0].astype(np.float64)
    found = {f for f, _, _ in candidates}
    props = [f for f in proposals(candidates, flashes, diffs, params.flash_frames)
             if not any(abs(f - c) <= tol for c in found)]  # fmt: skip
    by_level["proposed"] = props
    kept = list(candidates)
    if props:
        w, h = transnet.SIZE
        frames = np.memmap(spool, dtype=np.uint8, mode="r", shape=(n_frames, h, w, 3))
        probs = transnet.predict_around(model, lambda a, b: np.asarray(frames[a:b]), n_frames, props, 2, params.transnet_batch)
        confirmed = [f for f in props if max(probs.get(k, 0.0) for k in range(f - 2, f + 3)) > params.transnet_threshold]
        by_level["hybrid"] = confirmed
        kept += [(f, 1, float(diffs[f])) for f in confirmed]
    return _union(kept, tol, min_len, n_frames)


# Contrast-normalised frames of one shot a few frames apart differ by about 0.2-0.5 (unit std);
# two unrelated pictures by about 1.1 (the mean |x - y| of two independent unit normals).
ALIKE_NORMALISED = 0.6
STRONG_CHANGE = 30  # a change of a colour channel (0-255) no compression noise or flicker makes
# ... and a native-rate change that is weak frame to frame is still a transition when the picture
# moved on by this much (mean |luma|) over the last few frames: the middle of a fade, not a pop
POP_SPAN = 3.0


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


class _Signals:
    """Per-frame change signals, a decoded chunk at a time (vectorised over the chunk):
    - `dist[t, 0, k]`: mean |luma| difference of frame t and frame t-k-1 (lag 1, at analysis size,
      places low-rate cuts exactly; the longer lags, at half that size, tell a flash, where the
      picture comes back, from a cut);
    - `dist[t, 1, k]`: the same on contrast-normalised luma, so the two dark frames either side of
      the black middle of a fade (alike in raw luma, different pictures) are not the same picture;
    - `changed[s][t]`: the share of pixels a colour channel of which changed by STRONG_CHANGE or
      more since frame t-s, for each level's stride s, at the frames that level sees (zero for a
      keyframe's compression pop on a still slide; NaN where not computed).
    Memory: the last max(lags, stride) frames, and a few floats per frame."""

    def __init__(self, lags: int, strides: list[int], start: int = 0):
        self.lags, self.strides = lags, sorted(set(strides) | {1})
        self.tail: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self.dist: list[np.ndarray] = []
        self.changed: dict[int, list[np.ndarray]] = {s: [] for s in self.strides}
        self.seen = start  # the video's index of this chunk's first frame (strides count from frame 0)

    def add(self, bgr: np.ndarray, luma: np.ndarray) -> None:
        n, h, w = luma.shape
        half = (max(1, w // 2), max(1, h // 2))
        small = np.stack([cv2.resize(f, half, interpolation=cv2.INTER_AREA) for f in luma]).reshape(n, -1)
        flat = small.astype(np.float32)
        norm = (flat - flat.mean(1, keepdims=True)) / np.maximum(flat.std(1, keepdims=True), 1.0)
        if self.tail is None:
            t, all_s, all_n, all_l, prev_b = 0, small, norm, luma, bgr[:0]
        else:
            t = len(self.tail[0])
            all_s, all_n = np.concatenate([self.tail[0], small]), np.concatenate([self.tail[1], norm])
            all_l, prev_b = np.concatenate([self.tail[2], luma]), self.tail[3]
        dist = np.full((n, 2, self.lags), np.inf, np.float32)
        size = all_s.shape[1]
        for k in range(1, self.lags + 1):
            first = max(0, k - t)  # the frames of this chunk that have a frame k before them
            if first >= n:
                continue
            a, b = slice(t + first, t + n), slice(t + first - k, t + n - k)
            if k > 1:  # lag 1 in raw luma is taken at full analysis size below
                dist[first:, 0, k - 1] = cv2.absdiff(all_s[a], all_s[b]).sum(1, dtype=np.uint32) / size
            dist[first:, 1, k - 1] = cv2.absdiff(all_n[a], all_n[b]).sum(1) / size
        m = len(all_l) - 1  # consecutive pairs available, the newest n (or n-1 at the start) are ours
        if m > 0:
            got = min(n, m)
            cur_l, prev_l = all_l[-got:], all_l[-got - 1:-1]
            dist[n - got:, 0, 0] = cv2.absdiff(cur_l.reshape(-1, w), prev_l.reshape(-1, w)).reshape(got, -1).sum(1, dtype=np.uint32) / (h * w)
        for s in self.strides:
            changed = np.full(n, np.nan, np.float32)
            # this chunk's frames that a level of stride s sees and that have a frame s before them
            i0 = next((i for i in range(n) if (self.seen + i) % s == 0 and len(prev_b) + i - s >= 0), n)
            if i0 < n:
                changed[i0::s] = _strong_share(bgr, prev_b, i0, s)
            self.changed[s].append(changed)
        self.dist.append(dist)
        self.seen += n
        keep = min(self.lags, len(all_s))
        back = max(self.strides)
        self.tail = (all_s[-keep:], all_n[-keep:], all_l[-1:],
                     bgr[-back:].copy() if n >= back else np.concatenate([prev_b, bgr])[-back:])

    def result(self, n_frames: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        if not self.dist:
            return np.zeros((0, 2, self.lags), np.float32), {s: np.zeros(0, np.float32) for s in self.strides}
        return np.concatenate(self.dist)[:n_frames], {s: np.concatenate(c)[:n_frames] for s, c in self.changed.items()}


def _strong_share(chunk: np.ndarray, before: np.ndarray, i0: int, s: int) -> np.ndarray:
    """For chunk frames i0, i0+s, ...: the share of pixels where some colour channel changed by
    STRONG_CHANGE or more since the frame s before (in the chunk, or in `before`, the frames that
    preceded it). Views of the chunk where it can (no copy at stride 1)."""
    n, h, w, _ = chunk.shape
    pairs = []
    if i0 - s < 0:  # its frame s before is in `before`
        pairs.append((chunk[i0:i0 + 1], before[len(before) + i0 - s:len(before) + i0 - s + 1]))
        i0 += s
    if i0 < n:
        pairs.append((chunk[i0::s], chunk[i0 - s:n - s:s]))
    out = []
    for cur, prev in pairs:
        k = len(cur)
        d = cv2.absdiff(np.ascontiguousarray(cur).reshape(-1, 1, 3), np.ascontiguousarray(prev[:k]).reshape(-1, 1, 3))
        # pixels where every channel changed by less than STRONG_CHANGE, in one C pass
        calm = cv2.inRange(d, (0, 0, 0), (STRONG_CHANGE - 1,) * 3).reshape(k, h * w)
        out.append((h * w - np.count_nonzero(calm, axis=1)) / (h * w))
    return np.concatenate(out)


def _refine(frame: int, stride: int, diffs: np.ndarray) -> int:
    """A cut seen between samples frame-stride and frame: the native frame of largest change."""
    if stride <= 1 or len(diffs) == 0:
        return frame
    lo, hi = max(1, frame - stride + 1), min(len(diffs), frame + 1)
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
        if f >= min_len and not (cuts and f - cuts[-1] < min_len):
            cuts.append(f)
    return cuts


# --- step 2 of an input (curate.per_video): cuts into the record ----------------------------------


def find_cuts(rec: InputRecord, params: CutsParams, min_frames: int = 1) -> None:
    """Step 2 of an input (curate.per_video): the cut list and the true decoded frame count."""
    left = rec.remaining_s()
    if left is not None and left <= 0:
        raise DecodeTimeout("time budget spent before cut detection")
    result = detect_cuts(rec.local, rec.info, params, deadline_s=left)
    if result.n_frames < min_frames:
        raise Quarantine(schema.Q_UNDECODABLE, f"{result.n_frames} frames decode")
    rec.cuts, rec.n_frames = result.cuts, result.n_frames
