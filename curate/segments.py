"""A long input as several segments (`segment_s`): its cuts and its clips computed in parallel,
with the cuts and clips a single pass gives.

`curate run` probes an input once; an input longer than `segment_s` (and cut by the classical
cascade) is then worked in two rounds of one task per segment (pipelines/run.py):
1. cuts: each segment decodes its own frames plus a look-back before them, from the keyframe at
   or before that, and a look-ahead after; the cascade's state (its detectors' windows and
   minimum lengths, the flash filter, the low-rate levels, which see the frames whose index is a
   multiple of their stride wherever the decode begins) has settled by the segment's first frame,
   and a cut before its last frame is final (CutAnalysis.lag), so a segment's cuts are those the
   whole decode finds in its frames. The driver joins them (and learns the true frame count from
   the last segment).
2. clips: each segment plans the clips of the whole input from the joined cuts (cheap, and the
   same plan everywhere: a clip's index and id are global) and extracts, scores and samples the
   clips that start in its frames, in any clip mode.
The input is committed once, when every segment of round 2 is in; a killed run redoes the whole
input (nothing of it was committed). Each segment has the input's time limit (`input_timeout_s`):
a long healthy input is never a `timeout`. TransNetV2 detectors score windows whose alignment
follows the decode's start, so inputs cut by them stay one task.
"""

from __future__ import annotations

import dataclasses
import json
from bisect import bisect_left, bisect_right

from curate.config import CutsParams
from curate.record import InputRecord, VideoInfo

LOOKBACK_S = 10.0  # decoded before a segment, at least (and at least twice the analysis's lag)
LOOKAHEAD_S = 1.0  # decoded past the analysis's lag after a segment


def split(info: VideoInfo, n_frames: int, segment_s: float) -> list[tuple[int, int]]:
    """Frame ranges [a, b) of about `segment_s` seconds each, covering the input; one range
    (no split) when it is not longer than 1.5 segments."""
    if segment_s <= 0 or info.duration_s <= 1.5 * segment_s or n_frames < 2:
        return [(0, n_frames)]
    n = max(2, round(info.duration_s / segment_s))
    times = info.frame_times[:n_frames]
    bounds = [0] + [bisect_left(times, info.duration_s * k / n) for k in range(1, n)] + [n_frames]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def window(info: VideoInfo, lag: int, a: int, b: int, n_frames: int) -> tuple[int, int]:
    """The frames [first, end) a segment [a, b) decodes for its cuts: from the keyframe at or
    before a - look-back (so its frames are those of a whole decode) to b + lag + look-ahead."""
    back = max(2 * lag, int(round(LOOKBACK_S * info.fps)))
    first = 0
    if a > 0:
        want = max(0, a - back)
        k = bisect_right(info.keyframes, want - 1) - 1
        # the frame after a keyframe: ffmpeg's seek to it lands on that keyframe, where a seek to
        # the keyframe itself (halfway from the frame before, curate.video.seek_args) lands a GOP earlier
        first = info.keyframes[k] + 1 if k >= 0 and info.keyframes[k] > 0 else 0
    end = n_frames if b >= n_frames else min(n_frames, b + lag + int(round(LOOKAHEAD_S * info.fps)) + 1)
    return first, end


def segment_cuts(rec: InputRecord, params: CutsParams, a: int, b: int, last: bool) -> dict:
    """Round 1 for one segment: the cuts in [a, b) (`last`: to the end of the input), how many
    frames decode (counted from frame 0; the last segment's is the input's), and the by-level
    detail in [a, b)."""
    from curate.cuts import analysis_lag, detect_cuts

    info = rec.info
    first, end = window(info, analysis_lag(info.fps, params), a, b, info.n_frames)
    result = detect_cuts(rec.local, info, params, rec.remaining_s(), first=first, count=None if last else end - first)
    hi = result.n_frames if last else b

    def inside(cuts: list[int]) -> list[int]:
        return [c for c in cuts if a <= c < hi]

    return {"cuts": inside(result.cuts), "n_frames": result.n_frames, "seconds": result.seconds,
            "by_level": {k: inside(v) for k, v in result.by_level.items()}}  # fmt: skip


def info_to_json(info: VideoInfo) -> str:
    return json.dumps(dataclasses.asdict(info))


def info_from_json(text: str) -> VideoInfo:
    return VideoInfo(**json.loads(text))
