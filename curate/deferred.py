"""The deferred clip mode (`clips.mode: deferred`): one decode per input, rows that record clip
spans in their source, the scorers' frames and a small moving preview, and no clip file.
`curate export --materialize` encodes the clips a subset keeps (curate.materialize).

One ffmpeg process decodes the input once and hands on the cut analysis's small frames (stdout)
and, where scorers want frames, on a second pipe every frame at the stored clip size through the
extraction's own filters (scale, yuv420p, RGB: the pixels an `exact` clip of any span is encoded
from); where none does, the analysis's frames are also what the spill keeps, for the previews.
The cuts are analysed as the frames come (curate.cuts.CutAnalysis); a clip is planned as soon as
the cuts before it are final (clips.plan_clips, open_end) and its frames are read back from a
spill of those frames on local disk, which is dropped as planning moves past it:
memory and disk stay bounded by a clip's length, whatever the input's. At the end the plan is
checked against the one the final cuts give: a span planned early that the final plan lacks is
dropped, one not sampled yet is sampled from the spill, or (its frames gone: a cut later than
the analysis's declared lag) left to the sample step, which decodes it from the source
(clips.sample_spans) as `curate rescore` does.
"""

from __future__ import annotations

import io
import os
import queue
import shutil
import tempfile
import threading

import numpy as np

from curate import schema
from curate.clips import (SAMPLE_BUDGET_BYTES, ClipSpan, Geometry, geometry, kept_frames, plan_clips, plan_input,
                          read_exact, sample_spans, span_row, stored_size_filter)
from curate.config import ClipsParams, CutsParams
from curate.cuts import CutAnalysis
from curate.faults import fault
from curate.record import InputRecord, Quarantine, VideoInfo
from curate.stage import pack_plans
from curate.video import DecodeTimeout, ffmpeg_exe, ffmpeg_run, read_chunks, scaled_size, seek_args

SPILL_FRAMES = 32  # frames per spill file: the unit in which the spill is dropped
CHUNK_FRAMES, READ_AHEAD = 64, 4  # analysis frames per read, and reads queued ahead of the analysis
AHEAD = (READ_AHEAD + 3) * CHUNK_FRAMES  # frames spilled ahead of the analysis, at most
# The spill holds at most a clip (max_s), the analysis's lag and its read-ahead: not the input.
PREVIEW_SIDE = 128  # long side of a preview frame ...
PREVIEW_FRAMES = 8  # ... and how many, evenly over the clip


class _Spill:
    """The spilled frames of the decode, read back by index as RGB and dropped a file at a time
    once no clip can need them: yuv420p at the stored size (as the encoder would get them), from
    the decode's second stream and a reader thread (`write_from`); or, where no scorer wants
    frames, the cut analysis's own bgr24 frames, appended as the analysis takes them (`append`)."""

    def __init__(self, directory: str, width: int, height: int, pix_fmt: str = "yuv420p"):
        self.dir, self.width, self.height, self.pix_fmt = directory, width, height, pix_fmt
        # a planar 4:2:0 frame as one array, or a packed BGR one
        self.shape = (height * 3 // 2, width) if pix_fmt == "yuv420p" else (height, width, 3)
        self.frame_bytes = int(np.prod(self.shape))
        self.cond = threading.Condition()
        self.count = 0  # frames written
        self.done = False
        self.released = 0  # files below this index are gone (or never written)
        self.analysed = 0  # frames the cut analysis has taken: the writer keeps within AHEAD of it
        self.peak = 0  # the most files it held at once (the bound the tests check)
        self._fh, self._seg = None, -1  # the file being written, and its index

    def _path(self, seg: int) -> str:
        return os.path.join(self.dir, f"{seg:08d}.rgb")

    def _put(self, frames) -> None:
        """Append whole frames (bytes, or a C-ordered array of them), file by file."""
        data = memoryview(frames).cast("B")
        n, at = len(data) // self.frame_bytes, 0
        while at < n:
            s = (self.count + at) // SPILL_FRAMES
            if s != self._seg:
                if self._fh:
                    self._fh.close()
                self._seg = s
                self._fh = open(self._path(s), "wb") if s >= self.released else None
                self.peak = max(self.peak, s + 1 - self.released)
            take = min(n - at, (s + 1) * SPILL_FRAMES - (self.count + at))
            if self._fh:
                self._fh.write(data[at * self.frame_bytes:(at + take) * self.frame_bytes])
            at += take
        with self.cond:
            self.count += n
            self.cond.notify_all()

    def close(self) -> None:
        """No more frames: what was never written reads as gone."""
        if self._fh:
            self._fh.close()
            self._fh = None
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def append(self, frames: np.ndarray) -> None:
        """Frames the caller holds (the analysis's chunk), before the analysis takes them."""
        self._put(np.ascontiguousarray(frames))

    def write_from(self, stream) -> None:
        try:
            while True:
                # Back-pressure: ffmpeg decodes for both streams at once, and a stream that is read
                # faster than the other has the other's frames pile up inside ffmpeg (4.3 GB of RSS
                # on a 25-minute 1080p input, bench/README.md): this one waits for the analysis.
                with self.cond:
                    waited = 0
                    while self.count - self.analysed > AHEAD and not self.done and waited < 30:
                        self.cond.wait(1.0)
                        waited += 1  # (never a deadlock: past 30 s it reads on)
                buf = read_exact(stream, self.frame_bytes)
                if buf is None:
                    break
                self._put(buf)
        finally:
            self.close()

    def took(self, n: int) -> None:
        """The cut analysis has taken `n` frames."""
        with self.cond:
            self.analysed = n
            self.cond.notify_all()

    def get(self, i: int) -> np.ndarray | None:
        """Frame i, RGB at the spill's size, waiting for it to be written; None when it is gone or
        never came. Converted here, for the few frames a clip's scorers and preview use: with
        FFmpeg's own conversion (PyAV's swscale), the pixels `format=rgb24` gives the other modes,
        bit for bit (tests/test_deferred.py), at a third of the bytes through the pipe and spill."""
        with self.cond:
            while self.count <= i and not self.done:
                self.cond.wait(1.0)
            if i >= self.count or i // SPILL_FRAMES < self.released:
                return None
        with open(self._path(i // SPILL_FRAMES), "rb") as fh:
            fh.seek((i % SPILL_FRAMES) * self.frame_bytes)
            frame = np.frombuffer(fh.read(self.frame_bytes), np.uint8).reshape(self.shape)
        if self.pix_fmt == "bgr24":
            return np.ascontiguousarray(frame[..., ::-1])
        import av

        return av.VideoFrame.from_ndarray(frame, format="yuv420p").to_ndarray(format="rgb24")

    def release_before(self, i: int) -> None:
        upto = i // SPILL_FRAMES  # files wholly before frame i
        with self.cond:
            first, self.released = self.released, max(self.released, upto)
        for seg in range(first, upto):
            try:
                os.unlink(self._path(seg))
            except FileNotFoundError:
                pass


def deferred_clips(rec: InputRecord, cuts_p: CutsParams, clips_p: ClipsParams, plans: list, min_frames: int = 1) -> list[dict]:
    """Cuts, clip spans and the scorers' frames of one input from one decode (the steps `cuts`
    and `clips` of the other modes): its clip rows."""
    info = rec.info
    geo = geometry(info, clips_p)
    analyse, aw, ah = _analysis_stream(info, cuts_p)
    analysis = CutAnalysis(info.fps, cuts_p, aw, ah)
    size, sw, sh, fmt = _spilled(info, geo, cuts_p, plans)
    work = tempfile.mkdtemp(prefix="curate-deferred-")
    spill = _Spill(work, sw, sh, fmt)
    # one filter thread: the decoder's frame threads already take the cores, and slice threads
    # beside them cost CPU time (the 1080p talk's ffmpeg side: 9.8-11.4 s against 12.7 s, wall)
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-threads", str(cuts_p.decode_threads),
           "-filter_complex_threads", "1", "-i", rec.local]  # fmt: skip
    out_a = ["-map", "[a]", "-an", "-sn", "-dn", "-fps_mode", "passthrough", "-f", "rawvideo", "pipe:1"]
    read_fd = write_fd = None
    if plans:  # a second stream, at the stored size, on a pipe of its own
        read_fd, write_fd = os.pipe()
        cmd += ["-filter_complex", f"[0:v]split=2[x][y];[x]{analyse}[a];[y]{size}[b]", *out_a,
                "-map", "[b]", "-fps_mode", "passthrough", "-f", "rawvideo", f"pipe:{write_fd}"]  # fmt: skip
    else:  # the analysis's frames are all a row takes (its preview): one stream
        cmd += ["-filter_complex", f"[0:v]{analyse}[a]", *out_a]
    left = rec.remaining_s()
    try:
        with ffmpeg_run(cmd, left, pass_fds=() if write_fd is None else (write_fd,)) as (proc, expired, _):
            if write_fd is not None:
                os.close(write_fd)
            return _decode_once(rec, proc, expired, read_fd, analysis, spill, clips_p, geo, plans, min_frames, left)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _decode_once(rec: InputRecord, proc, expired, read_fd: int | None, analysis: CutAnalysis, spill: _Spill,
                 clips_p: ClipsParams, geo, plans: list, min_frames: int, left: float | None) -> list[dict]:
    """Reads the streams of the one decode (a thread each), plans as the cuts become final.
    `read_fd`: the stored-size stream's pipe, or None where the spill takes the analysis's frames."""
    info, aw, ah = rec.info, analysis.width, analysis.height
    chunks: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
    stored = os.fdopen(read_fd, "rb") if read_fd is not None else None
    threads = [threading.Thread(target=read_chunks, args=(proc.stdout, (ah, aw, 3), CHUNK_FRAMES, chunks), daemon=True)]
    if stored is not None:
        threads.append(threading.Thread(target=spill.write_from, args=(stored,), daemon=True))
    for t in threads:
        t.start()
    clip = _ClipRows(rec, clips_p, geo, plans, spill.get)
    trim = int(round(clips_p.trim_s * info.fps))  # (a scene's clips start this far past its cut)
    try:
        while (chunk := chunks.get()) is not None:
            if stored is None:
                spill.append(chunk)
            analysis.feed(chunk)
            spill.took(analysis.n_frames)
            final_upto = analysis.n_frames - analysis.lag
            if final_upto > 0:
                cuts = [c for c in analysis.provisional() if c < final_upto]
                spans, _, _ = plan_clips(info, cuts, final_upto, clips_p, open_end=True)
                for span in spans:
                    clip.row(span)
                spill.release_before(max([clip.last_end] + [c + trim for c in cuts[-1:]]))
        proc.wait()  # (its exit status, as in the cut pass of the other modes: a decode error part-way
        for t in threads:  # keeps the frames that decoded; none at all is `undecodable` below)
            t.join()
        spill.close()  # (already, where its own reader wrote it)
        if expired.is_set():
            raise DecodeTimeout(f"decode exceeded {left:.0f}s")
        result = analysis.finish()
        rec.cuts, rec.n_frames = result.cuts, result.n_frames
        if result.n_frames < min_frames:
            raise Quarantine(schema.Q_UNDECODABLE, f"{result.n_frames} frames decode")
        spans = plan_input(rec, clips_p)
        clip.n_frames = result.n_frames
        rows = [clip.row(span) for span in spans]  # rows planned early are reused; a span no longer planned goes
        for index, row in enumerate(rows):
            row[schema.CLIP_INDEX] = index
        return rows
    finally:
        if proc.poll() is None:  # (ffmpeg_run kills it too, but the readers must see the pipes end first)
            proc.kill()
            proc.wait()
        for t in threads:
            t.join(5)
        if stored is not None:
            stored.close()


def deferred_span_rows(rec: InputRecord, cuts_p: CutsParams, clips_p: ClipsParams, plans: list,
                       only: tuple[int, int]) -> list[dict]:
    """The rows of the clips that start in frames `only` of an input whose cuts are known (a
    segment of a long input, curate.segments): one decode of their frames from the first of them,
    through the filters and spill `deferred_clips` uses (so the same pixels: the stored-size
    stream's, or where no scorer wants frames the analysis's)."""
    info = rec.info
    mine = [(i, span) for i, span in enumerate(plan_input(rec, clips_p)) if only[0] <= span.start < only[1]]
    if not mine:
        return []
    geo = geometry(info, clips_p)
    first, end = mine[0][1].start, mine[-1][1].end
    size, sw, sh, fmt = _spilled(info, geo, cuts_p, plans)
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-filter_threads", "1", *seek_args(info, first),
           "-i", rec.local, "-map", "0:v:0", "-an", "-sn", "-dn", "-fps_mode", "passthrough", "-frames:v",
           str(end - first), "-vf", size, "-f", "rawvideo", "pipe:1"]  # fmt: skip
    work = tempfile.mkdtemp(prefix="curate-deferred-")
    spill = _Spill(work, sw, sh, fmt)
    left = rec.remaining_s()
    try:
        with ffmpeg_run(cmd, left) as (proc, expired, _):
            writer = threading.Thread(target=spill.write_from, args=(proc.stdout,), daemon=True)
            writer.start()
            clip = _ClipRows(rec, clips_p, geo, plans, lambda i: spill.get(i - first))  # (the decode began at `first`)
            clip.n_frames = rec.n_frames
            rows = []
            try:
                for index, span in mine:
                    spill.took(span.end - first)  # the writer may go AHEAD frames past this clip
                    row = clip.row(span)
                    row[schema.CLIP_INDEX] = index
                    rows.append(row)
                    spill.release_before(span.end - first)
            finally:
                spill.took(end - first)  # (never leave the writer waiting)
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                writer.join()
            if expired.is_set():
                raise DecodeTimeout(f"decode exceeded {left:.0f}s")
            return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _analysis_stream(info: VideoInfo, cuts_p: CutsParams) -> tuple[str, int, int]:
    """(filter, width, height) of the cut analysis's frames, bgr24 (they come rotated, as clips
    store them)."""
    w, h = scaled_size(info.width, info.height, cuts_p.analysis_size)
    return f"scale={w}:{h}:flags=area,format=bgr24", w, h


def _spilled(info: VideoInfo, geo: Geometry, cuts_p: CutsParams, plans: list) -> tuple[str, int, int, str]:
    """(filter, width, height, pixel format) of the frames the spill holds. Where scorers want
    frames, every frame at the stored size (an `exact` clip's pixels: _extract_group's chain;
    which frames, a span's plans say only once its cuts are final), a second stream of the
    decode. Where none does, a row takes only its preview's few frames, and the cut analysis's
    own (128 px, as a preview) serve: the decode scales each frame once (a second scale cost a
    third of the bare decode on the 1080p talk: bench/README)."""
    if plans:
        return f"{stored_size_filter(geo)},format=yuv420p", geo.width, geo.height, "yuv420p"
    return (*_analysis_stream(info, cuts_p), "bgr24")


class _ClipRows:
    """Rows of the spans planned so far (each once), with their frames from the spill (`frame`:
    the input's frame i, RGB at the spill's size, or None)."""

    def __init__(self, rec: InputRecord, params: ClipsParams, geo, plans: list, frame):
        self.rec, self.params, self.geo, self.plans, self.frame = rec, params, geo, plans, frame
        self.rows: dict[tuple[int, int], dict] = {}
        self.carried = 0  # bytes of scorers' frames the rows carry (clips.SAMPLE_BUDGET_BYTES)
        self.last_end = 0
        self.n_frames: int | None = None  # known at the end of the decode

    def row(self, span: ClipSpan) -> dict:
        key = (span.start, span.end)
        if key in self.rows:
            return self.rows[key]
        geo = self.geo
        row = span_row(self.rec, span, geo, "deferred", self.n_frames)
        kept = kept_frames(span, geo.rate)
        per_plan = {p.name: p.indices(len(kept), geo.fps) for p in self.plans}
        preview_at = [int(round(x)) for x in np.linspace(0, len(kept) - 1, min(PREVIEW_FRAMES, len(kept)))]
        want = sorted(set().union(*per_plan.values(), preview_at)) if (self.plans or preview_at) else []
        frames = {j: f for j in want if (f := self.frame(kept[j])) is not None}
        if self.plans and self.carried < SAMPLE_BUDGET_BYTES and all(j in frames for p in per_plan.values() for j in p):
            row[schema.SAMPLES] = pack_plans(self.plans, per_plan, frames)
            self.carried += len(row[schema.SAMPLES])
        if preview_at and all(j in frames for j in preview_at):
            row[schema.PREVIEW] = preview([frames[j] for j in preview_at], row[schema.DURATION_S])
        self.rows[key] = row
        self.last_end = max(self.last_end, span.end)
        return row


def preview(frames: list[np.ndarray], duration_s: float) -> bytes:
    """A small moving preview of a clip: its frames at PREVIEW_SIDE, as an animated WebP (what the
    report shows where there is no clip file)."""
    import cv2
    from PIL import Image

    h, w = frames[0].shape[:2]
    scale = min(1.0, PREVIEW_SIDE / max(h, w))
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    images = [Image.fromarray(cv2.resize(f, size, interpolation=cv2.INTER_AREA)) for f in frames]
    buf = io.BytesIO()
    step_ms = max(40, int(1000 * duration_s / len(images)))
    images[0].save(buf, "WEBP", save_all=True, append_images=images[1:], duration=step_ms, loop=0, quality=60, method=2)
    return buf.getvalue()


def stored_geometry(row: dict) -> Geometry:
    """How a deferred row's clip is (to be) stored, from the row: what clips.geometry gave the run."""
    w, h, sw, sh = row[schema.WIDTH], row[schema.HEIGHT], row[schema.SOURCE_WIDTH], row[schema.SOURCE_HEIGHT]
    fps, src_fps = row[schema.FPS], row[schema.SOURCE_FPS]
    rate = fps / src_fps if fps < src_fps else None  # max_fps / the source's rate, as geometry() divides
    return Geometry(w, h, fps, rate, (w, h) != (sw - sw % 2, sh - sh % 2))


class SourceChanged(Exception):
    """A deferred row's source is gone, or is not the file the run read (another fingerprint)."""


def open_source(uri: str, video_id: str) -> tuple[str, VideoInfo]:
    """(a local path, the probe) of the source a deferred row was cut from, or SourceChanged."""
    from curate.storage import fingerprint, localize
    from curate.video import ProbeError, probe

    try:
        local = localize(uri)
        info = probe(local)
    except (OSError, ProbeError) as e:
        raise SourceChanged(f"source {uri} cannot be read ({str(e).splitlines()[0]})") from None
    if fingerprint(local, info.size_bytes) != video_id:
        raise SourceChanged(f"source {uri} changed since the run (its fingerprint is not {video_id})")
    return local, info


def sample_rows(rows: list[dict], plans: list) -> list[bytes | None | Exception]:
    """The scorers' frames of deferred rows of one source (the sample step's, `curate rescore`'s),
    decoded from the source: each a packed sample, or the exception that stopped it."""
    from curate.storage import release

    try:
        local, info = open_source(rows[0][schema.SOURCE_URI], rows[0][schema.VIDEO_ID])
    except SourceChanged as e:
        return [e] * len(rows)
    try:
        spans = [ClipSpan(r[schema.START_FRAME], r[schema.END_FRAME]) for r in rows]
        by_geo: dict[Geometry, list[int]] = {}
        for i, r in enumerate(rows):
            by_geo.setdefault(stored_geometry(r), []).append(i)
        out: list[bytes | None | Exception] = [None] * len(rows)
        for geo, idx in by_geo.items():
            try:
                got = sample_spans(local, info, [spans[i] for i in idx], geo, plans)
            except Exception as e:  # noqa: BLE001 - these rows say why
                got = [e] * len(idx)
            for i, g in zip(idx, got):
                out[i] = g
        return out
    finally:
        release(rows[0][schema.SOURCE_URI])


def materialize_source(rows: list[dict], clips_dir: str, params: ClipsParams,
                       resize: bool = False) -> dict[str, tuple[str, Geometry] | Exception]:
    """Encode the clip files of deferred rows of one source (`curate export --materialize`), as
    `exact` mode would have stored them: the same filters and encoder over the same spans (one
    decode per group of clips), at the rows' own size and rate, or at `params`' when `resize`.
    Each file lands at CLIPS_DIR/<video_id>/<clip_id>.mp4 by a rename, so a file there is whole:
    one that exists is kept (a resumed materialization), never made twice. Returns clip_id -> (its
    path, how it is stored), or the exception that refused it (a source that changed or vanished:
    SourceChanged)."""
    from curate.clips import extract_video
    from curate.storage import release

    vid = rows[0][schema.VIDEO_ID]
    final = {r[schema.CLIP_ID]: os.path.join(clips_dir, vid, f"{r[schema.CLIP_ID]}.mp4") for r in rows}
    todo = [r for r in rows if not os.path.isfile(final[r[schema.CLIP_ID]])]
    if not todo and not resize:
        return {r[schema.CLIP_ID]: (final[r[schema.CLIP_ID]], stored_geometry(r)) for r in rows}
    try:
        local, info = open_source(rows[0][schema.SOURCE_URI], vid)
    except SourceChanged as e:
        return {r[schema.CLIP_ID]: e for r in todo}
    geo_of = {r[schema.CLIP_ID]: geometry(info, params) if resize else stored_geometry(r) for r in rows}
    out: dict[str, tuple[str, Geometry] | Exception] = {cid: (final[cid], geo_of[cid]) for cid in final if os.path.isfile(final[cid])}
    os.makedirs(os.path.join(clips_dir, vid), exist_ok=True)
    work = tempfile.mkdtemp(prefix=".materialize-", dir=os.path.join(clips_dir, vid))  # beside: each file a rename
    try:
        by_geo: dict[Geometry, list[dict]] = {}
        for r in todo:
            by_geo.setdefault(geo_of[r[schema.CLIP_ID]], []).append(r)
        for k, (geo, group) in enumerate(by_geo.items()):
            spans = [ClipSpan(r[schema.START_FRAME], r[schema.END_FRAME]) for r in group]
            files = extract_video(local, info, spans, params, os.path.join(work, str(k)), geo=geo)
            for r, f in zip(group, files):
                cid = r[schema.CLIP_ID]
                if f.error is not None or f.path is None:
                    out[cid] = f.error or RuntimeError("no file")
                    continue
                os.replace(f.path, final[cid])
                out[cid] = (final[cid], geo)
                fault("materialize")  # crash tests: killed with some of the files made
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)
        release(rows[0][schema.SOURCE_URI])
