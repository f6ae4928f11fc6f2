"""Scene -> clip planning and frame-accurate clip extraction with the ffmpeg binary.

Every ffmpeg call is an argument list (never a shell), so file names cannot inject anything.
Three extraction modes:
- copy:  stream copy from the keyframe at or before the clip start (fast, lossless); the start
         moves back to that keyframe and the real start frame is what the row records.
- exact: re-encode to H.264 from the exact start frame (frame-accurate, costs a full encode).
- smart: re-encode only the partial GOPs at both ends and stream-copy the whole GOPs between,
         concatenated as MPEG-TS (in-band parameter sets, so the differently encoded pieces stay
         decodable) and remuxed to mp4: frame-accurate at a fraction of the encode cost.
All outputs are H.264 mp4 starting on a keyframe; copy and smart fall back to exact where they
cannot promise that (non-H.264 source, odd frame size, non-4:2:0, rotation), and record it.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
import time
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from curate import schema
from curate.config import ClipsParams
from curate.stage import pack_plans
from curate.storage import is_transient  # a full disk, a network fault: the next run retries
from curate.record import InputRecord, Quarantine
from curate.video import DecodeTimeout, VideoInfo, ffmpeg_exe, ffmpeg_run, seek_args


class ExtractError(Exception):
    pass


class ExtractTimeout(ExtractError):
    """ffmpeg outlived the input's time budget: the input is a `timeout`, not a failed clip."""


@dataclass(frozen=True)
class ClipSpan:
    start: int  # first frame
    end: int  # exclusive


def plan_clips(info: VideoInfo, cuts: list[int], n_frames: int, params: ClipsParams,
               open_end: bool = False) -> tuple[list[ClipSpan], int, int]:
    """Split the scenes between cuts into clips of [min_s, max_s] seconds.

    A scene shorter than min_s (after trimming `trim_s` at both ends) is dropped; a long scene is
    cut into consecutive pieces of at most max_s and a remainder shorter than min_s is dropped.
    Durations are measured on the real frame timestamps, so variable frame rate inputs get true
    durations. A single frame shown longer than max_s (a slideshow, a held screen) is a span of
    its own that no clip can hold: it is dropped and counted, and planning moves past it, so it
    always terminates. Where the piece from a frame is too short because the next frame is held
    long, planning tries from the next frame (five 1/8 s frames, one of 1 s, one of 2.5 s: a clip
    of 3.875 s from the third frame, where pieces from the first gave none). Returns the clips,
    the scenes dropped as too short, and the held frames dropped as longer than max_s.

    `open_end`: frames from `n_frames` on are not decoded yet and the last scene goes on past it
    (the deferred mode plans while it decodes, curate.deferred): its clips are those that end
    before `n_frames` whatever comes next, and the counts are not final.
    """
    # open: the true times of frames past n_frames too (they exist, only not decoded yet)
    times = list(info.frame_times[:n_frames + 1 if open_end else n_frames])
    frame_dur = info.duration_s - info.frame_times[-1] if info.frame_times else 1.0 / info.fps
    end_time = (times[-1] + frame_dur) if times else 0.0

    def t(i: int) -> float:
        return times[i] if i < len(times) else end_time

    eps = 1e-6
    bounds = [0, *sorted({c for c in cuts if 0 < c < n_frames}), n_frames]
    trim = int(round(params.trim_s * info.fps))
    clips: list[ClipSpan] = []
    dropped = held = 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        a, b = a + trim, b - trim
        if open_end and b + trim == n_frames:  # the scene goes on: a cut from n_frames on ends it
            clips += _scene(a, b, t, params, eps, open_end=True)[0]
            break
        if b <= a or t(b) - t(a) < params.min_s - eps:
            dropped += 1
            continue
        pieces, n_held = _scene(a, b, t, params, eps)
        clips += pieces
        held += n_held
    return clips, dropped, held


def _scene(a: int, b: int, t, params: ClipsParams, eps: float, open_end: bool = False) -> tuple[list[ClipSpan], int]:
    """The clips of scene [a, b) and its held frames. `open_end`: the scene's end is not known yet,
    so planning stops at the first step whose furthest end reaches `b` (it could go further)."""
    clips, held, start = [], 0, a
    while start < b:  # every pass moves start forward by at least one frame
        # the furthest end in (start, b] that keeps the clip within max_s
        end = start + bisect_right(range(start + 1, b + 1), t(start) + params.max_s + eps, key=t)
        if open_end and end >= b:
            break
        if end == start:
            held += 1  # frame `start` alone lasts longer than max_s
            start += 1
        elif t(end) - t(start) >= params.min_s - eps:
            clips.append(ClipSpan(start, end))
            start = end
        else:  # too short because frame `end` would pass max_s: a clip may still fit a frame later
            start += 1
    return clips, held


def _encode(ff: list[str], src: str, info: VideoInfo, start: int, n: int, params: ClipsParams,
            timeout: float | None, *out: str) -> None:
    """Re-encode `n` frames from frame `start` (frame-accurate: decoded from the seek)."""
    _run([*ff, *seek_args(info, start), "-i", src, *_common_out(n), "-c:v", "libx264", "-preset", params.preset,
          "-crf", str(params.crf), "-pix_fmt", "yuv420p", "-vf", "crop=trunc(iw/2)*2:trunc(ih/2)*2", *out], timeout)


def _copy(ff: list[str], src: str, info: VideoInfo, key: int, n: int, timeout: float | None, *out: str) -> None:
    """Stream-copy `n` frames from keyframe `key`, sought at its own time (+1 ms so rounding cannot
    land on the previous one)."""
    seek = ["-ss", f"{info.start_offset_s + info.frame_times[key] + 0.001:.6f}"] if key > 0 else []
    _run([*ff, *seek, "-i", src, *_common_out(n), "-c:v", "copy", *out], timeout)


def _run(cmd: list[str], timeout: float | None) -> None:
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ExtractTimeout(f"ffmpeg timed out after {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise _failed_with(proc.returncode, proc.stderr)


def _failed_with(rc: int, stderr: bytes) -> ExtractError:
    return ExtractError(f"ffmpeg exited {rc}: {' | '.join(stderr.decode('utf-8', 'replace').strip().splitlines()[-3:])}")


MP4 = ("-movflags", "+faststart", "-f", "mp4")


def _common_out(n_frames: int) -> list[str]:
    return ["-map", "0:v:0", "-an", "-sn", "-dn", "-map_metadata", "-1", "-frames:v", str(n_frames),
            "-fps_mode", "passthrough"]  # fmt: skip


def effective_mode(info: VideoInfo, mode: str) -> str:
    """The mode that can honour the output promise (H.264 mp4, keyframe at frame 0) for this input."""
    if info.codec != "h264" or (mode == "smart" and (
            info.rotation or info.coded_width % 2 or info.coded_height % 2 or info.pix_fmt != "yuv420p")):
        return "exact"
    return mode


def copy_start(info: VideoInfo, start: int) -> int:
    """The keyframe at or before `start`, where a stream copy must begin."""
    i = bisect_right(info.keyframes, start) - 1
    return info.keyframes[max(0, i)]


def extract(src: str, dst: str, info: VideoInfo, span: ClipSpan, params: ClipsParams,
            timeout: float | None = None) -> tuple[int, str]:
    """Write the clip to `dst` atomically (temp file + rename). Returns (real start frame, mode)."""
    mode = effective_mode(info, params.mode)
    start = copy_start(info, span.start) if mode == "copy" else span.start
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    tmp = os.path.join(os.path.dirname(dst) or ".", f".{os.path.basename(dst)}.part")
    ff = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-y"]
    try:
        if mode == "copy":
            _copy(ff, src, info, start, span.end - start, timeout, "-avoid_negative_ts", "make_zero", *MP4, tmp)
        elif mode == "exact":
            _encode(ff, src, info, start, span.end - start, params, timeout, *MP4, tmp)
        else:
            mode = _extract_smart(ff, src, tmp, info, span, params, timeout)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return start, mode


def _extract_smart(ff: list[str], src: str, tmp: str, info: VideoInfo, span: ClipSpan,
                   params: ClipsParams, timeout: float | None) -> str:
    inner = sorted({k for k in info.keyframes if span.start <= k <= span.end})
    if len(inner) < 2:
        # No whole GOP inside the clip: nothing to copy, so re-encode it all.
        _encode(ff, src, info, span.start, span.end - span.start, params, timeout, *MP4, tmp)
        return "exact"
    k1, k2 = inner[0], inner[-1]
    with tempfile.TemporaryDirectory(dir=os.path.dirname(tmp) or ".", prefix=".smart-") as work:
        head, mid, tail = (os.path.join(work, f"{name}.ts") for name in ("head", "mid", "tail"))
        if k1 > span.start:
            _encode(ff, src, info, span.start, k1 - span.start, params, timeout, "-f", "mpegts", head)
        _copy(ff, src, info, k1, k2 - k1, timeout, "-bsf:v", "h264_mp4toannexb", "-f", "mpegts", mid)
        if span.end > k2:
            _encode(ff, src, info, k2, span.end - k2, params, timeout, "-f", "mpegts", tail)
        parts = [p for p, made in ((head, k1 > span.start), (mid, True), (tail, span.end > k2)) if made]
        listing = os.path.join(work, "parts.txt")
        with open(listing, "w") as fh:  # our own names: no quoting issues
            fh.writelines(f"file '{os.path.basename(p)}'\n" for p in parts)
        _run([*ff, "-f", "concat", "-safe", "0", "-i", listing, "-map", "0:v:0", "-c", "copy", *MP4, tmp], timeout)
    return "smart"


# --- one decode per input: every clip (and every scorer's frames) from one ffmpeg process -----

KEEP_EPS = 1e-9  # the frame-dropping rule below runs in Python and in ffmpeg's select: same doubles
GROUP_CLIPS = 64  # clips per ffmpeg process: bounds the select expressions evaluated on every frame
GROUP_GAP_S = 60.0  # a gap this long between two clips is seeked over instead of decoded
SAMPLE_BUDGET_BYTES = 128 << 20  # scorers' frames carried per input (see extract_video)


@dataclass(frozen=True)
class Geometry:
    """How an input's clips are stored: size, rate, and the share of frames kept."""

    width: int
    height: int
    fps: float
    rate: float | None  # kept frames per source frame when max_fps drops frames (None: all kept)
    scaled: bool


def geometry(info: VideoInfo, params: ClipsParams) -> Geometry:
    """The stored clip size: the source's (cropped to even sides for H.264 4:2:0), or scaled down
    to `short_side` / `max_side` with the aspect kept, never up; the rate capped at `max_fps`."""
    w, h = info.width, info.height
    scale = 1.0
    if params.short_side:
        scale = min(1.0, params.short_side / min(w, h))
    elif params.max_side:
        scale = min(1.0, params.max_side / max(w, h))
    even_w, even_h = w - w % 2, h - h % 2
    if scale < 1.0:
        out_w = min(even_w, max(2, 2 * round(w * scale / 2)))
        out_h = min(even_h, max(2, 2 * round(h * scale / 2)))
    else:
        out_w, out_h = even_w, even_h
    rate, fps = None, info.fps
    if params.max_fps and info.fps > params.max_fps * (1 + 1e-6):
        rate, fps = params.max_fps / info.fps, params.max_fps
    return Geometry(out_w, out_h, fps, rate, (out_w, out_h) != (even_w, even_h))


def stored_size_filter(geo: Geometry) -> str:
    """The ffmpeg filter that gives a clip's stored pixels (the extraction's, and the deferred
    mode's, which must be the same)."""
    return f"scale={geo.width}:{geo.height}:flags=area" if geo.scaled else f"crop={geo.width}:{geo.height}"


def kept_frames(span: ClipSpan, rate: float | None) -> list[int]:
    """The source frames of `span` a clip stores: frame n is kept when it starts a new cell of a
    grid of 1/rate source frames from the span start (even spacing, the first frame always kept).
    `_keep_expr` is the same rule for ffmpeg."""
    if rate is None:
        return list(range(span.start, span.end))
    cell = [math.floor((n - span.start) * rate + KEEP_EPS) for n in range(span.start - 1, span.end)]
    return [span.start + i for i in range(span.end - span.start) if cell[i + 1] > cell[i]]


def kept_count(span: ClipSpan, rate: float | None) -> int:
    n = span.end - span.start
    return n if rate is None else math.floor((n - 1) * rate + KEEP_EPS) + 1


def _keep_expr(a: int, b: int, rate: float | None) -> str:
    """ffmpeg select expression for the kept frames of [a, b) (n counts decoded frames)."""
    if rate is None:
        return f"between(n,{a},{b - 1})"
    r = repr(rate)
    return f"between(n,{a},{b - 1})*gt(floor((n-{a})*{r}+{KEEP_EPS}),floor((n-{a}-1)*{r}+{KEEP_EPS}))"


def _any_of(terms: list[str]) -> str:
    """The sum of `terms` as a balanced tree: ffmpeg's expression parser refuses a flat chain of
    more than 100 terms, and a balanced one stays log-deep however many clips or samples."""
    if not terms:
        return "0"
    if len(terms) == 1:
        return terms[0]
    mid = len(terms) // 2
    return f"({_any_of(terms[:mid])}+{_any_of(terms[mid:])})"


@dataclass
class ClipFile:
    """One clip of a one-pass extraction: its file (in the work dir), or why there is none, and the
    scorers' frames packed (curate.stage.pack_plans) when any were asked for."""

    path: str | None = None
    error: Exception | None = None
    sample: bytes | None = None


def groups(info: VideoInfo, spans: list[ClipSpan]) -> list[list[int]]:
    """Span indices per ffmpeg process: at most GROUP_CLIPS, split where a long gap is cheaper to seek."""
    out: list[list[int]] = []
    for i, span in enumerate(spans):
        gap = info.frame_times[span.start] - info.frame_times[spans[i - 1].end - 1] if i else 0.0
        if not out or len(out[-1]) >= GROUP_CLIPS or gap > GROUP_GAP_S:
            out.append([])
        out[-1].append(i)
    return out


def carried_clips(spans: list[ClipSpan], geo: Geometry, plans: list) -> int:
    """How many of an input's clips, from its first, carry the scorers' frames from the extraction
    (SAMPLE_BUDGET_BYTES of packed frames, reckoned from the plan: the same clips whether the input is one task
    or several segments, so a clip's scores never depend on how its input was split; the others'
    frames are decoded by the sample step from their files)."""
    if not plans:
        return 0
    total = 0
    for k, span in enumerate(spans):
        if total >= SAMPLE_BUDGET_BYTES:
            return k
        total += sum(p.nbytes(geo.width, geo.height, kept_count(span, geo.rate), geo.fps) for p in plans)
    return len(spans)


def extraction_groups(info: VideoInfo, spans: list[ClipSpan], carry: int) -> list[list[int]]:
    """The ffmpeg processes of an extraction (`groups`), also cut where the carrying clips end.
    A clip's encoded bytes depend on its group (the encoder's rate control looks across clips), so
    a segment of a long input extracts whole groups of the input's plan: its clips are the groups
    that start in its frames (make_clips)."""
    out = []
    for whole in groups(info, spans):
        out += [part for part in ([i for i in whole if i < carry], [i for i in whole if i >= carry]) if part]
    return out


def extract_video(src: str, info: VideoInfo, spans: list[ClipSpan], params: ClipsParams, workdir: str,
                  plans: list | None = None, deadline: float | None = None, geo: Geometry | None = None,
                  carry: int | None = None) -> list[ClipFile]:
    """Every clip of one input in one decode: per group of clips, one ffmpeg process decodes the
    range once, drops the frames between clips (and those `max_fps` drops), scales, and encodes
    one stream whose keyframes are forced onto the clip starts, which the segment muxer splits
    into one mp4 per clip (each a closed GOP from its first frame: frame-accurate by
    construction). When scorers ask for frames (`plans`), a second output of the same decode
    carries exactly those frames, at the stored size, as raw RGB on a pipe. Nothing is decoded
    twice and no process seeks per clip. `geo`: the stored size and rate, when not the params'."""
    geo = geo or geometry(info, params)
    results = [ClipFile() for _ in spans]
    # The samples travel with the input's rows: past a budget (a very long input) the rest of its
    # clips are sampled by the sample step instead, so memory stays flat in video length.
    # `carry`: how many of `spans` carry them (carried_clips of the input's whole plan).
    carry = carried_clips(spans, geo, plans or []) if carry is None else carry
    for gi, members in enumerate(extraction_groups(info, spans, carry)):
        left = None if deadline is None else deadline - time.time()
        group_plans = (plans or []) if members[0] < carry else []
        try:
            if left is not None and left <= 0:
                raise ExtractTimeout("ffmpeg timed out: time budget spent")
            _extract_group(src, info, [spans[i] for i in members], [results[i] for i in members], geo, params,
                           os.path.join(workdir, f"g{gi:05d}"), group_plans, left)  # fmt: skip
        except (ExtractError, OSError) as e:
            for i in members:
                if results[i].path is None and results[i].error is None:
                    results[i].error = e
    return results


def _extract_group(src: str, info: VideoInfo, spans: list[ClipSpan], results: list[ClipFile], geo: Geometry,
                   params: ClipsParams | None, workdir: str, plans: list, timeout: float | None, encode: bool = True) -> None:
    if encode:
        os.makedirs(workdir, exist_ok=True)
    s0 = spans[0].start
    counts = [kept_count(sp, geo.rate) for sp in spans]
    starts = [sum(counts[:k]) for k in range(len(spans))]  # each clip's first frame in the encoded stream
    keep = _any_of([_keep_expr(sp.start - s0, sp.end - s0, geo.rate) for sp in spans])
    setpts = "PTS-STARTPTS" if geo.rate is None else f"N/({geo.fps!r}*TB)"
    size = stored_size_filter(geo)
    # yuv420p pinned before the split: the encode gets exactly the scaled pixels and the scorers
    # the same pixels in RGB (left open, ffmpeg may scale straight to RGB and convert back)
    chain = f"[0:v]select='{keep}',setpts={setpts},{size},format=yuv420p"
    # which stored frames each scorer wants, per clip (indices within the clip, as the sample stage
    # computes them on the clip file) and where they are in this process's output
    per_plan = [{p.name: p.indices(n, geo.fps) for p in plans} for n in counts]
    wanted = [sorted(set().union(*pp.values())) if pp else [] for pp in per_plan]
    sample_at = [(k, j) for k in range(len(spans)) for j in wanted[k]]
    if sample_at:
        pick = _any_of([f"eq(n,{starts[k] + j})" for k, j in sample_at])
        graph = f"{chain},split=2[e][s0];[s0]select='{pick}',format=rgb24[s]" if encode else f"{chain},select='{pick}',format=rgb24[s]"
    else:
        graph = f"{chain}[e]"
    force = _any_of([f"eq(n,{x})" for x in starts])
    # Each output stops at its last frame, and ffmpeg with them: the select filter alone would let
    # it decode on to the end of the input (a group before the last, a segment of a long input)
    out = []
    if encode:
        out = ["-map", "[e]", "-an", "-sn", "-dn", "-map_metadata", "-1", "-fps_mode", "passthrough", "-frames:v",
               str(sum(counts)), "-c:v", "libx264", "-preset", params.preset, "-crf", str(params.crf), "-pix_fmt",
               "yuv420p", "-force_key_frames", f"expr:{force}", "-forced-idr", "1"]  # fmt: skip
        out += ["-f", "segment", "-segment_frames", ",".join(map(str, starts[1:])), "-reset_timestamps", "1",
                "-segment_format", "mp4", "-segment_format_options", "movflags=+faststart",
                os.path.join(workdir, "%05d.mp4")] if len(spans) > 1 else [*MP4, os.path.join(workdir, "00000.mp4")]  # fmt: skip
    if sample_at:
        out += ["-map", "[s]", "-fps_mode", "passthrough", "-frames:v", str(len(sample_at)), "-f", "rawvideo", "pipe:1"]
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-y", *seek_args(info, s0), "-i", src,
           "-filter_complex", graph, *out]  # fmt: skip

    with ffmpeg_run(cmd, timeout, subprocess.PIPE if sample_at else subprocess.DEVNULL) as (proc, expired, err):
        if sample_at:  # read while ffmpeg writes (it would block on a full pipe); pack clip by clip
            frame_bytes = geo.width * geo.height * 3
            got: dict[int, np.ndarray] = {}
            for n, (k, j) in enumerate(sample_at):
                buf = read_exact(proc.stdout, frame_bytes)
                if buf is None:
                    break
                got[j] = np.frombuffer(buf, np.uint8).reshape(geo.height, geo.width, 3)
                if n + 1 == len(sample_at) or sample_at[n + 1][0] != k:
                    results[k].sample = pack_plans(plans, per_plan[k], got)
                    got = {}
            proc.stdout.read()  # anything past what was asked: drain so ffmpeg can finish
        rc = proc.wait()
        if rc != 0:
            if expired.is_set():
                raise ExtractTimeout(f"ffmpeg timed out after {timeout:.0f}s")
            err.seek(0)
            raise _failed_with(rc, err.read())
    if not encode:
        return
    for k, res in enumerate(results):
        path = os.path.join(workdir, f"{k:05d}.mp4")
        frames = _frames_in(path)
        if frames == counts[k]:
            res.path = path
        else:
            res.error = ExtractError(f"the clip has {frames} frames, {counts[k]} planned (the stream ended early?)")


def sample_spans(src: str, info: VideoInfo, spans: list[ClipSpan], geo: Geometry, plans: list,
                 deadline: float | None = None) -> list[bytes | None]:
    """The scorers' frames of clips that have no file (the deferred mode), decoded from the source
    through the extraction's own filters: the frames an `exact` clip of the span would have
    carried, bit for bit. None for a clip whose frames did not all come."""
    results = [ClipFile() for _ in spans]
    for members in groups(info, spans):
        left = None if deadline is None else deadline - time.time()
        if left is not None and left <= 0:
            raise ExtractTimeout("ffmpeg timed out: time budget spent")
        _extract_group(src, info, [spans[i] for i in members], [results[i] for i in members], geo, None, "", plans,
                       left, encode=False)  # fmt: skip
    return [r.sample for r in results]


def read_exact(stream, n: int) -> bytes | None:
    chunks, have = [], 0
    while have < n:
        b = stream.read(n - have)
        if not b:
            return None
        chunks.append(b)
        have += len(b)
    return b"".join(chunks)


def _frames_in(path: str) -> int:
    """Frames in an mp4 we wrote, from its index (no decode); 0 when there is no such file."""
    import av

    if not os.path.exists(path):
        return 0
    try:
        with av.open(path) as c:
            s = c.streams.video[0]
            return s.frames or sum(1 for p in c.demux(s) if p.size)
    except (av.FFmpegError, IndexError):
        return 0


# --- step 3 of an input (curate.per_video): clip rows and files ---------------------------------


def clip_id(video_id: str, start: int, end: int) -> str:
    """Deterministic: the same source content and frame range always give the same id."""
    return f"{video_id}-{start:07d}-{end:07d}"


def span_row(rec: InputRecord, span: ClipSpan, geo: Geometry, mode: str, n_frames: int | None) -> dict:
    """A clip's row before any file: its span, times, stored size and rate, and its source's facts.
    `n_frames`: the frames that decoded (a span may end at the last one's end), or None while the
    decode goes on (the deferred mode: a span planned early ends at a decoded frame)."""
    info, times = rec.info, rec.info.frame_times
    frame_dur = info.duration_s - times[-1]

    def t(i: int) -> float:
        return times[n_frames - 1] + frame_dur if n_frames is not None and i >= n_frames else times[i]

    return {
        schema.CLIP_ID: clip_id(rec.video_id, span.start, span.end), schema.VIDEO_ID: rec.video_id,
        schema.SOURCE_URI: rec.uri, schema.CLIP_URI: None, schema.START_FRAME: span.start, schema.END_FRAME: span.end,
        schema.START_S: t(span.start), schema.END_S: t(span.end), schema.DURATION_S: t(span.end) - t(span.start),
        schema.FPS: geo.fps, schema.WIDTH: geo.width, schema.HEIGHT: geo.height,
        schema.NUM_FRAMES: kept_count(span, geo.rate), schema.SOURCE_FPS: info.fps, schema.SOURCE_WIDTH: info.width,
        schema.SOURCE_HEIGHT: info.height, schema.CODEC: info.codec, schema.CLIP_MODE: mode, schema.ERRORS: [],
    }  # fmt: skip


def plan_input(rec: InputRecord, params: ClipsParams) -> list[ClipSpan]:
    """The clips of an input whose cuts and frame count are known, and its scene counts into the record."""
    spans, rec.short_scenes_dropped, rec.held_frames_dropped = plan_clips(rec.info, rec.cuts, rec.n_frames, params)
    rec.scenes = len(rec.cuts) + 1
    return spans


def make_clips(rec: InputRecord, params: ClipsParams, store, plans: list | None = None,
               only: tuple[int, int] | None = None) -> list[dict]:
    """Step 3 of an input (curate.per_video): plan the clips, write their files, return their rows
    (with the scorers' frames for `plans`, when the extraction decoded them). `only`: the clips
    of the whole plan that start in frames [a, b) (a segment of a long input, curate.segments).
    A clip whose file cannot be written is not a row (counted in `rec.failed_clips`); a transient
    failure (a full disk) quarantines the input for the next run to retry."""
    info, n_frames, plans = rec.info, rec.n_frames, plans or []
    spans = plan_input(rec, params)
    mode = effective_mode(info, params.mode)
    # a stream copy keeps the source's frames, odd sizes included
    geo = Geometry(info.width, info.height, info.fps, None, False) if mode == "copy" else geometry(info, params)
    rows: list[dict] = []
    for index, span in enumerate(spans):
        start = copy_start(info, span.start) if mode == "copy" else span.start
        rows.append({**span_row(rec, ClipSpan(start, span.end), geo, mode, n_frames), schema.CLIP_INDEX: index})
    carry = None
    if only is not None:  # a segment: see extraction_groups
        if mode == "exact":  # whole groups of the input's plan, and its carrying clips
            whole = carried_clips(spans, geo, plans)
            mine = [i for g in extraction_groups(info, spans, whole) if only[0] <= spans[g[0]].start < only[1] for i in g]
            carry = sum(1 for i in mine if i < whole)
        else:
            mine = [i for i, span in enumerate(spans) if only[0] <= span.start < only[1]]
        spans, rows = [spans[i] for i in mine], [rows[i] for i in mine]
    if not params.extract or not rows:
        return rows
    if mode == "exact":
        return _one_pass(rec, spans, rows, params, store, plans, carry)
    kept = []
    for span, row in zip(spans, rows):
        left = rec.remaining_s()
        if left is not None and left <= 0:
            raise DecodeTimeout("time budget spent during extraction")
        try:
            row[schema.CLIP_URI], row[schema.CLIP_MODE] = extract_clip(store, rec.local, info, span, rec.video_id, row[schema.CLIP_ID], params, left)
        except (ExtractError, OSError) as e:
            _failed(rec, row[schema.CLIP_ID], e)
            continue
        kept.append(row)
    return kept


def _failed(rec: InputRecord, cid: str, e: Exception) -> None:
    if isinstance(e, ExtractTimeout):
        raise DecodeTimeout(str(e)) from None
    if is_transient(e):  # the whole input again on the next run, not a hole in it now
        raise Quarantine(schema.Q_ERROR, f"clips: {cid}: {e}", retry=True) from None
    rec.failed_clips.append(f"{cid}: {e}"[:500])  # no file, so not a clip: counted, not a row


def _one_pass(rec: InputRecord, spans: list[ClipSpan], rows: list[dict], params: ClipsParams, store, plans: list,
              carry: int | None = None) -> list[dict]:
    """All clips of the input from one decode (extract_video), moved into OUT under their names."""
    vid = rec.video_id
    if store.local:  # beside the clips, so each is a rename; a killed run's leftovers are swept
        os.makedirs(store.path("clips", vid), exist_ok=True)
        work = tempfile.mkdtemp(prefix=SEG_PREFIX, dir=store.path("clips", vid))
    else:
        work = tempfile.mkdtemp(prefix="curate-clips-")
    try:
        files = extract_video(rec.local, rec.info, spans, params, work, plans, rec.deadline, carry=carry)
        kept = []
        for span, row, f in zip(spans, rows, files):
            try:
                row[schema.CLIP_URI] = store_clip(store, f, span, vid, row[schema.CLIP_ID])
            except (ExtractError, OSError) as e:
                _failed(rec, row[schema.CLIP_ID], e)
                continue
            if f.sample is not None:
                row[schema.SAMPLES] = f.sample
            kept.append(row)
        return kept
    finally:
        shutil.rmtree(work, ignore_errors=True)


def store_clip(store, f: ClipFile, span: ClipSpan, vid: str, cid: str) -> str:
    """One clip of a one-pass extraction into OUT under its name (a rename on a local disk, an
    upload to object storage); raises why it has no file."""
    if f.error is not None:
        raise f.error
    rel = ("clips", vid, f"{cid}.mp4")
    if store.local:
        os.replace(f.path, store.path(*rel))
    else:
        store.put_file(f.path, *rel)
    return store.uri_of(*rel)


SEG_PREFIX = ".seg-"  # work dirs of a one-pass extraction inside OUT/clips/<video>/


def extract_clip(store, local: str, info: VideoInfo, span: ClipSpan, vid: str, cid: str, params: ClipsParams,
                 timeout: float | None) -> tuple[str, str]:
    """Write one clip into OUT (directly on a local disk, via a temp file to object storage)."""
    rel = ("clips", vid, f"{cid}.mp4")
    if store.local:
        _, mode = extract(local, store.path(*rel), info, span, params, timeout)
    else:
        with tempfile.TemporaryDirectory(prefix="curate-clip-") as tmpdir:
            tmp = os.path.join(tmpdir, f"{cid}.mp4")
            _, mode = extract(local, tmp, info, span, params, timeout)
            store.put_file(tmp, *rel)
    return store.uri_of(*rel), mode

