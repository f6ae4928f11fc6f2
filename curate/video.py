"""Probe, decode and sample video files.

Probing uses PyAV (no ffprobe binary needed): it demuxes the video stream once, without decoding,
for exact frame timestamps and keyframes, then decodes one frame to prove the stream decodes.
Full decodes for cut detection go through the ffmpeg binary from imageio-ffmpeg: it decodes with
its own threads and scales in C, so Python only sees small frames in large chunks.
"""

from __future__ import annotations

import contextlib
import os
import queue
import stat
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from typing import IO, Iterator

import numpy as np

from curate import schema
from curate.config import ProbeParams
from curate.faults import hang
from curate.record import InputRecord, Quarantine, VideoInfo


class ProbeError(Quarantine):
    """The input cannot be used; a missing file may appear, so the next run tries it again."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail, retry=reason == schema.Q_MISSING)


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def probe(path: str, max_pixels: int | None = None) -> VideoInfo:
    """Describe a local video file, or raise ProbeError with a quarantine reason."""
    import av

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ProbeError(schema.Q_MISSING, f"no such file: {path}") from None
    except OSError as e:
        raise ProbeError(schema.Q_UNREADABLE, f"cannot stat: {e}") from None
    size = st.st_size
    if stat.S_ISDIR(st.st_mode):
        raise ProbeError(schema.Q_UNREADABLE, "is a directory")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or device would block the demuxer forever: refuse before opening it.
        raise ProbeError(schema.Q_UNREADABLE, "not a regular file")
    if size == 0:
        raise ProbeError(schema.Q_EMPTY, "zero-length file")
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise ProbeError(schema.Q_UNREADABLE, f"cannot open container: {e}") from None
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise ProbeError(schema.Q_NO_VIDEO, f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        cc = stream.codec_context
        width, height = int(cc.width or 0), int(cc.height or 0)
        if width <= 0 or height <= 0:
            raise ProbeError(schema.Q_UNREADABLE, "video stream has no frame size")
        if max_pixels is not None and width * height > max_pixels:
            raise ProbeError(schema.Q_TOO_LARGE, f"{width}x{height} exceeds max_pixels={max_pixels}")
        tb = float(stream.time_base) if stream.time_base else 1.0 / 90000
        pts: list[int] = []
        key_pts: set[int] = set()
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the flush packet at the end
                t = packet.pts if packet.pts is not None else packet.dts
                if t is None:
                    continue
                pts.append(t)
                if packet.is_keyframe:
                    key_pts.add(t)
        except av.FFmpegError:
            pass  # truncated stream: keep what was demuxed; the decode decides what is usable
        if not pts:
            raise ProbeError(schema.Q_UNDECODABLE, "video stream has no packets")
        rotation = _first_frame_rotation(container, stream)
        container_start = (container.start_time or 0) / 1e6  # AV_TIME_BASE units
        rate = stream.guessed_rate or stream.average_rate
        codec = cc.codec.canonical_name  # the codec id name, as ffprobe reports it (not the decoder)
        pix_fmt = cc.format.name if cc.format is not None else ""

    pts.sort()
    times = np.asarray(pts, dtype=np.float64) * tb
    first = float(times[0])
    frame_times = (times - first).tolist()
    diffs = np.diff(times)
    diffs = diffs[diffs > 0]
    median = float(np.median(diffs)) if len(diffs) else 0.0
    variable = bool(len(diffs) and (diffs.max() > 1.5 * median or diffs.min() < 0.66 * median))
    # The container's nominal rate (r_frame_rate) is what a player and ffmpeg use; the median
    # interval is the fallback (and is wrong for ms-rounded Matroska timestamps).
    fps = float(rate) if rate else (1.0 / median if median > 0 else 25.0)
    if median <= 0:
        median = 1.0 / fps
    key_sorted = sorted(key_pts)
    index = {p: i for i, p in enumerate(pts)}
    keyframes = [index[p] for p in key_sorted if p in index] or [0]
    disp_w, disp_h = (height, width) if rotation % 180 else (width, height)
    return VideoInfo(
        codec=codec,
        pix_fmt=pix_fmt,
        width=disp_w,
        height=disp_h,
        coded_width=width,
        coded_height=height,
        rotation=rotation,
        fps=fps,
        variable_fps=variable,
        n_frames=len(frame_times),
        duration_s=frame_times[-1] + median,
        start_offset_s=max(0.0, first - container_start),
        frame_times=frame_times,
        keyframes=keyframes,
        size_bytes=size,
    )


def _first_frame_rotation(container, stream) -> int:
    """Decode the first frame (proof that the stream decodes) and read its display rotation."""
    import av

    with contextlib.suppress(av.FFmpegError):
        container.seek(0, stream=stream)
    try:
        for frame in container.decode(stream):
            return int(round(getattr(frame, "rotation", 0) or 0)) % 360
    except av.FFmpegError as e:
        raise ProbeError(schema.Q_UNDECODABLE, f"first frame does not decode: {e}") from None
    raise ProbeError(schema.Q_UNDECODABLE, "no frame decodes")


class DecodeTimeout(Exception):
    pass


def scaled_size(width: int, height: int, target: int) -> tuple[int, int]:
    """Even-sized frame whose longer side is `target` (never upscaled), same aspect ratio."""
    scale = min(1.0, target / max(width, height))
    return max(2, int(round(width * scale / 2.0)) * 2), max(2, int(round(height * scale / 2.0)) * 2)


@contextmanager
def ffmpeg_run(cmd: list[str], timeout: float | None, stdout=subprocess.PIPE,
               pass_fds: tuple[int, ...] = ()) -> Iterator[tuple[subprocess.Popen, threading.Event, IO[bytes]]]:
    """ffmpeg under a deadline: (the process, set when the deadline killed it, its stderr in a
    temp file). A timer kills it past `timeout` (None: no limit), so a stuck decode or a full pipe
    cannot outlive its budget; on leaving, the timer stops and a process still running is killed."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=err, pass_fds=pass_fds)
        expired = threading.Event()

        def _expire() -> None:
            expired.set()
            proc.kill()

        timer = threading.Timer(max(0.0, timeout), _expire) if timeout is not None else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            yield proc, expired, err
        finally:
            if timer:
                timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def seek_args(info: VideoInfo, frame: int) -> list[str]:
    """-ss halfway between the previous frame and `frame`: ffmpeg then starts exactly on `frame`."""
    if frame <= 0:
        return []
    ft = info.frame_times
    t = info.start_offset_s + (ft[frame - 1] + ft[frame]) / 2.0
    return ["-ss", f"{t:.6f}"]


def iter_frames(
    path: str,
    width: int,
    height: int,
    *,
    pix_fmt: str = "bgr24",
    threads: int = 0,
    deadline_s: float | None = None,
    chunk_frames: int = 64,
    extra_input_args: tuple[str, ...] = (),
    max_frames: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield chunks (N, H, W, C) of every frame, decoded and scaled by ffmpeg, in display order.

    Frames come out as stored (no auto-rotation: cut detection does not care, and it is cheaper).
    `-fps_mode passthrough` keeps one output frame per decoded frame, so index i is frame i even
    for variable frame rate inputs. Raises DecodeTimeout if the decode runs past `deadline_s`.
    """
    channels = {"bgr24": 3, "rgb24": 3, "gray": 1}[pix_fmt]
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-noautorotate",
        "-threads", str(threads), *extra_input_args, "-i", path,
        "-map", "0:v:0", "-an", "-sn", "-dn", "-fps_mode", "passthrough",
        *(("-frames:v", str(max_frames)) if max_frames else ()),
        "-vf", f"scale={width}:{height}:flags=area,format={pix_fmt}",
        "-f", "rawvideo", "pipe:1",
    ]  # fmt: skip
    with ffmpeg_run(cmd, deadline_s or None) as (proc, timed_out, _):
        # A reader thread keeps ffmpeg decoding ahead while the caller analyses frames: the pipe
        # holds less than one frame, so reading inline would serialise decode and analysis.
        chunks: queue.Queue = queue.Queue(maxsize=4)
        reader = threading.Thread(target=read_chunks, args=(proc.stdout, (height, width, channels), chunk_frames, chunks),
                                  daemon=True)
        reader.start()
        try:
            while (chunk := chunks.get()) is not None:
                yield chunk
            proc.wait()
        finally:
            if proc.poll() is None:  # a caller that stopped early: end the decode before draining
                proc.kill()
                proc.wait()
            while reader.is_alive():  # unblock a reader waiting on a full queue
                with contextlib.suppress(queue.Empty):
                    chunks.get(timeout=0.1)
            reader.join()
        if timed_out.is_set():
            raise DecodeTimeout(f"decode exceeded {deadline_s:.0f}s")


def read_chunks(stream, shape: tuple[int, ...], chunk_frames: int, chunks: queue.Queue) -> None:
    """A raw video pipe's frames of `shape` into `chunks`, `chunk_frames` to an array, then None."""
    frame_bytes = int(np.prod(shape))
    try:
        while True:
            buf = stream.read(frame_bytes * chunk_frames)
            n = len(buf) // frame_bytes
            if n:
                chunks.put(np.frombuffer(buf, np.uint8, count=n * frame_bytes).reshape(n, *shape))
            if len(buf) < frame_bytes * chunk_frames:
                break
    finally:
        chunks.put(None)


# --- step 1 of an input (curate.per_video): probe into the record ---------------------------------


def fetch_input(rec: InputRecord) -> None:
    """A local copy of the input into the record (a remote one is downloaded); a missing file may
    appear, so it is a `missing` the next run tries again."""
    from curate.storage import localize

    try:
        rec.local = localize(rec.uri)
    except FileNotFoundError as e:
        raise Quarantine(schema.Q_MISSING, str(e), retry=True) from None


def probe_input(rec: InputRecord, params: ProbeParams) -> None:
    """Step 1 of an input (curate.per_video): a local copy, its identity (content fingerprint),
    geometry, timing and keyframes into the record; raises why the input cannot be used."""
    from curate.storage import fingerprint

    fetch_input(rec)
    hang("probe", rec.uri)  # crash tests: an input that never returns (the watchdog's case)
    rec.info = probe(rec.local, params.max_pixels)
    rec.video_id = fingerprint(rec.local, rec.info.size_bytes)
