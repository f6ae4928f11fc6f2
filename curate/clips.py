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

import errno
import os
import subprocess
import tempfile
from bisect import bisect_right
from dataclasses import dataclass

from curate.config import ClipsParams
from curate.video import VideoInfo, ffmpeg_exe


class ExtractError(Exception):
    pass


@dataclass(frozen=True)
class ClipSpan:
    start: int  # first frame
    end: int  # exclusive


def plan_clips(info: VideoInfo, cuts: list[int], n_frames: int, params: ClipsParams) -> tuple[list[ClipSpan], int, int]:
    """Split the scenes between cuts into clips of [min_s, max_s] seconds.

    A scene shorter than min_s (after trimming `trim_s` at both ends) is dropped; a long scene is
    cut into consecutive pieces of at most max_s and a remainder shorter than min_s is dropped.
    Durations are measured on the real frame timestamps, so variable frame rate inputs get true
    durations. A single frame shown longer than max_s (a slideshow, a held screen) is a span of
    its own that no clip can hold: it is dropped and counted, and planning moves past it, so it
    always terminates. Returns the clips, the scenes dropped as too short, and the held frames
    dropped as longer than max_s.
    """
    times = list(info.frame_times[:n_frames])
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
        if b <= a or t(b) - t(a) < params.min_s - eps:
            dropped += 1
            continue
        start = a
        while start < b:  # every pass moves start forward by at least one frame
            # the furthest end in (start, b] that keeps the clip within max_s
            end = start + bisect_right(range(start + 1, b + 1), t(start) + params.max_s + eps, key=t)
            if end == start:
                held += 1  # frame `start` alone lasts longer than max_s
                start += 1
                continue
            if t(end) - t(start) >= params.min_s - eps:
                clips.append(ClipSpan(start, end))
            start = end
    return clips, dropped, held


def _seek_args(info: VideoInfo, frame: int) -> list[str]:
    """-ss halfway between the previous frame and `frame`: ffmpeg then starts exactly on `frame`."""
    if frame <= 0:
        return []
    ft = info.frame_times
    t = info.start_offset_s + (ft[frame - 1] + ft[frame]) / 2.0
    return ["-ss", f"{t:.6f}"]


def _encode_args(params: ClipsParams) -> list[str]:
    return [
        "-c:v", "libx264", "-preset", params.preset, "-crf", str(params.crf),
        "-pix_fmt", "yuv420p", "-vf", "crop=trunc(iw/2)*2:trunc(ih/2)*2",
    ]  # fmt: skip


def _run(cmd: list[str], timeout: float | None) -> None:
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ExtractError(f"ffmpeg timed out after {timeout:.0f}s") from None
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ExtractError(f"ffmpeg exited {proc.returncode}: {' | '.join(msg[-3:])}")


def _common_out(n_frames: int) -> list[str]:
    return ["-map", "0:v:0", "-an", "-sn", "-dn", "-map_metadata", "-1", "-frames:v", str(n_frames),
            "-fps_mode", "passthrough"]  # fmt: skip


def effective_mode(info: VideoInfo, mode: str) -> str:
    """The mode that can honour the output promise (H.264 mp4, keyframe at frame 0) for this input."""
    if mode == "exact":
        return "exact"
    if info.codec != "h264":
        return "exact"
    if mode == "smart" and (
        info.rotation or info.coded_width % 2 or info.coded_height % 2 or info.pix_fmt != "yuv420p"
    ):
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
            # Seek to the keyframe itself (+1 ms so rounding cannot land on the previous one).
            t = info.start_offset_s + info.frame_times[start] + 0.001 if start > 0 else None
            seek = ["-ss", f"{t:.6f}"] if t is not None else []
            _run([*ff, *seek, "-i", src, *_common_out(span.end - start), "-c:v", "copy",
                  "-avoid_negative_ts", "make_zero", "-movflags", "+faststart", "-f", "mp4", tmp], timeout)
        elif mode == "exact":
            _run([*ff, *_seek_args(info, start), "-i", src, *_common_out(span.end - start),
                  *_encode_args(params), "-movflags", "+faststart", "-f", "mp4", tmp], timeout)
        else:
            mode = _extract_smart(ff, src, tmp, info, span, params, timeout)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return start, mode


def _extract_smart(ff: list[str], src: str, tmp: str, info: VideoInfo, span: ClipSpan,
                   params: ClipsParams, timeout: float | None) -> str:
    inner = [k for k in info.keyframes if span.start <= k <= span.end]
    k1 = inner[0] if inner else None
    k2 = inner[-1] if inner else None
    if k1 is None or k2 is None or k2 <= k1:
        # No whole GOP inside the clip: nothing to copy, so re-encode it all.
        _run([*ff, *_seek_args(info, span.start), "-i", src, *_common_out(span.end - span.start),
              *_encode_args(params), "-movflags", "+faststart", "-f", "mp4", tmp], timeout)
        return "exact"
    with tempfile.TemporaryDirectory(dir=os.path.dirname(tmp) or ".", prefix=".smart-") as work:
        parts = []
        if k1 > span.start:
            head = os.path.join(work, "head.ts")
            _run([*ff, *_seek_args(info, span.start), "-i", src, *_common_out(k1 - span.start),
                  *_encode_args(params), "-f", "mpegts", head], timeout)
            parts.append(head)
        mid = os.path.join(work, "mid.ts")
        t = info.start_offset_s + info.frame_times[k1] + 0.001 if k1 > 0 else None
        seek = ["-ss", f"{t:.6f}"] if t is not None else []
        _run([*ff, *seek, "-i", src, *_common_out(k2 - k1), "-c:v", "copy",
              "-bsf:v", "h264_mp4toannexb", "-f", "mpegts", mid], timeout)
        parts.append(mid)
        if span.end > k2:
            tail = os.path.join(work, "tail.ts")
            _run([*ff, *_seek_args(info, k2), "-i", src, *_common_out(span.end - k2),
                  *_encode_args(params), "-f", "mpegts", tail], timeout)
            parts.append(tail)
        listing = os.path.join(work, "parts.txt")
        with open(listing, "w") as fh:
            for p in parts:
                fh.write(f"file '{os.path.basename(p)}'\n")  # our own names: no quoting issues
        _run([*ff, "-f", "concat", "-safe", "0", "-i", listing, "-map", "0:v:0", "-c", "copy",
              "-movflags", "+faststart", "-f", "mp4", tmp], timeout)
    return "smart"


# --- step 3 of an input (curate.per_video): clip rows and files ---------------------------------


from curate import schema  # noqa: E402


def clip_id(video_id: str, start: int, end: int) -> str:
    """Deterministic: the same source content and frame range always give the same id."""
    return f"{video_id}-{start:07d}-{end:07d}"


def make_clips(rec, params: ClipsParams, store) -> list[dict]:
    """Step 3 of an input (curate.per_video): plan the clips, write their files, return their rows.
    A clip whose file cannot be written is not a row (counted in `rec.failed_clips`); a transient
    failure (a full disk) quarantines the input for the next run to retry."""
    try:
        return _clips(rec, params, store)
    except _Timeout as e:
        rec.set_quarantine(schema.Q_TIMEOUT, f"clips: {e}")
    except _Transient as e:
        rec.set_quarantine(schema.Q_ERROR, f"clips: {e}", retry=True)
    except Exception as e:  # noqa: BLE001
        rec.set_quarantine(schema.Q_ERROR, f"clips: {type(e).__name__}: {e}")
    return []


def _clips(rec, params: ClipsParams, store) -> list[dict]:
    info, n_frames, uri = rec.info, rec.n_frames, rec.uri
    spans, rec.short_scenes_dropped, rec.held_frames_dropped = plan_clips(info, rec.cuts, n_frames, params)
    rec.scenes = len(rec.cuts) + 1
    mode = effective_mode(info, params.mode)
    out_w = info.width - (info.width % 2 if mode != "copy" else 0)
    out_h = info.height - (info.height % 2 if mode != "copy" else 0)
    times = info.frame_times
    frame_dur = info.duration_s - times[-1]

    def t(i: int) -> float:
        return times[i] if i < n_frames else times[n_frames - 1] + frame_dur

    rows: list[dict] = []
    vid = rec.video_id
    for index, span in enumerate(spans):
        start = copy_start(info, span.start) if mode == "copy" else span.start
        cid = clip_id(vid, start, span.end)
        row = {
            schema.CLIP_ID: cid, schema.VIDEO_ID: vid, schema.SOURCE_URI: uri,
            schema.CLIP_URI: None, schema.CLIP_INDEX: index, schema.START_FRAME: start,
            schema.END_FRAME: span.end, schema.START_S: t(start), schema.END_S: t(span.end),
            schema.DURATION_S: t(span.end) - t(start), schema.FPS: info.fps,
            schema.WIDTH: out_w, schema.HEIGHT: out_h, schema.CODEC: info.codec,
            schema.CLIP_MODE: mode, schema.ERRORS: [],
        }  # fmt: skip
        if params.extract:
            left = rec.remaining_s()
            if left is not None and left <= 0:
                raise _Timeout("time budget spent during extraction")
            try:
                row[schema.CLIP_URI], row[schema.CLIP_MODE] = extract_clip(store, rec.local, info, span, vid, cid, params, left)
            except (ExtractError, OSError) as e:
                if "timed out" in str(e):
                    raise _Timeout(str(e)) from None
                if is_transient(e):  # the whole input again on the next run, not a hole in it now
                    raise _Transient(f"{cid}: {e}") from None
                rec.failed_clips.append(f"{cid}: {e}"[:500])  # no file, so not a clip: counted, not a row
                continue
        rows.append(row)
    return rows


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


class _Timeout(Exception):
    pass


class _Transient(Exception):
    pass


_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.ETIMEDOUT, errno.ECONNRESET, errno.EAGAIN}
_TRANSIENT_TEXT = ("No space left on device", "Disk quota exceeded")


def is_transient(e: Exception) -> bool:
    """A failure that says nothing about the input (a full disk, a dropped connection): retry it."""
    return getattr(e, "errno", None) in _TRANSIENT_ERRNOS or any(t in str(e) for t in _TRANSIENT_TEXT)

