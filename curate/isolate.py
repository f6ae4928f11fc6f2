"""The per-video chain (probe -> cuts -> clips) for one input, in a child process with a hard deadline.

`input_timeout_s` is checked cooperatively between steps and enforced on the ffmpeg children, but a
demuxer stuck inside PyAV, a decoder spinning on a hostile file, or a bug in a Python loop cannot be
interrupted from inside. So each input runs in its own process, forked from a forkserver (a clean,
single-threaded parent: safe inside a Ray worker full of threads, and cheap because the server
imported the decoders once). The child leads its own process group, so a kill also ends its ffmpeg
processes; it works in a private temp directory (local copies of remote inputs, clip temporaries)
that the parent removes whatever happened. An input that outlives its budget becomes a `timeout`
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
from curate.faults import fault

_PRELOAD = ["pyarrow", "numpy", "curate.video", "curate.cuts", "curate.clips"]


def grace_s(timeout_s: float) -> float:
    """Past the cooperative deadline, how long before the child is killed."""
    return 5.0 + 0.1 * timeout_s


def _chain(specs: list[tuple[type, tuple]], uri: str) -> pa.Table:
    table = pa.table({schema.SOURCE_URI: pa.array([uri], pa.string())})
    for cls, args in specs:
        s = cls(*args)
        s.setup()
        table = s(table)
    return table


def _child(specs, uri: str, workdir: str, env: dict, conn) -> None:
    os.setsid()  # its own process group: a kill reaches the ffmpeg processes it starts
    os.environ.clear()  # the caller's environment now, not the forkserver's at its start
    os.environ.update(env)
    tempfile.tempdir = workdir
    os.environ["TMPDIR"] = workdir
    try:
        table = _chain(specs, uri)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        conn.send_bytes(sink.getvalue().to_pybytes())
    except BaseException as e:  # noqa: BLE001 -- reported to the parent as this input's failure
        conn.send_bytes(json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
    finally:
        conn.close()


def quarantine_row(uri: str, reason: str, detail: str, seconds: float) -> pa.Table:
    """What ClipStage emits for an input without clips: one marker row carrying the summary."""
    from curate.clips import _rows_to_table

    summary = {"video_id": None, "clips": 0, "duration_s": 0.0, "clip_seconds": 0.0, "scenes": 0,
               "short_scenes_dropped": 0, "stage_seconds": {"watchdog": seconds},
               "quarantine": {"reason": reason, "detail": detail}}  # fmt: skip
    return _rows_to_table([{schema.SOURCE_URI: uri, schema.VIDEO_ID: "", schema.VIDEO_META: json.dumps(summary)}])


class VideoChain(_stage.StageBase):
    """Stage: source_uri rows in, clip rows (or one marker row per input) out, each input isolated."""

    name: ClassVar[str] = "video"
    Params: ClassVar[type] = dict  # built by the wiring from the probe/cuts/clips sections
    resources: ClassVar[_stage.Resources] = _stage.Resources(num_cpus=1, batch_size=1)
    output_columns: ClassVar[tuple[str, ...]] = ()

    def __init__(self, specs: list[tuple[type, tuple]], timeout_s: float, isolate: bool = True):
        self.specs = specs
        self.timeout_s = timeout_s
        self.isolate = isolate

    def setup(self) -> None:
        pass

    def __call__(self, batch: pa.Table) -> pa.Table:
        tables = []
        for uri in batch.column(schema.SOURCE_URI).to_pylist():
            tables.append(self._one(uri) if self.isolate else _chain(self.specs, uri))
        fault("worker")  # crash tests: the worker dies with its batch done but not delivered
        return pa.concat_tables(tables)

    def _one(self, uri: str) -> pa.Table:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        workdir = tempfile.mkdtemp(prefix="curate-video-")
        recv, send = ctx.Pipe(duplex=False)
        t0 = time.monotonic()
        proc = ctx.Process(target=_child, args=(self.specs, uri, workdir, dict(os.environ), send), daemon=True)
        try:
            proc.start()
            send.close()
            limit = self.timeout_s + grace_s(self.timeout_s)
            data = None
            if recv.poll(limit):
                try:
                    data = recv.recv_bytes()
                except EOFError:
                    data = None
            if data is None:
                _kill_group(proc.pid)
            proc.join(10)
            took = time.monotonic() - t0
            if data is None:
                if proc.exitcode is not None and proc.exitcode < 0 and took < limit:
                    name = signal.Signals(-proc.exitcode).name
                    return quarantine_row(uri, schema.Q_ERROR, f"the process working on it died ({name})", took)
                return quarantine_row(uri, schema.Q_TIMEOUT, f"watchdog: no result after {took:.0f}s "
                                      f"(input_timeout_s={self.timeout_s:g}); the process was killed", took)  # fmt: skip
            if data[:1] == b"{":
                return quarantine_row(uri, schema.Q_ERROR, json.loads(data)["error"][:2000], took)
            return pa.ipc.open_stream(data).read_all()
        finally:
            recv.close()
            if proc.is_alive():
                _kill_group(proc.pid)
                proc.join(5)
            shutil.rmtree(workdir, ignore_errors=True)


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
