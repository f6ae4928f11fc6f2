"""Atomic parquet shards, the commit protocol that makes runs resumable, and manifest.json.

Exactly-once by construction, for the one writer that holds OUT's lease (curate.lease). The
driver commits whole videos only:
  1. write each part file as `shards/.tmp/part-NNNNNN-<run>.parquet` (invisible to readers of
     `shards/*.parquet`; the run token makes a part name unique to its writer),
  2. create the commit record `_commits/commit-NNNNNN.json` exclusively: its parts, its videos
     and their quarantine rows. This is the commit point; a record is never overwritten, so a
     writer that lost its lease fails here instead of replacing someone's commit.
  3. move the parts to `shards/`.
Commits happen every `commit_every_s` seconds or `commit_every_videos` inputs (a kill loses
minutes, not a thousand clips); at the end of a run the small parts are compacted into parts of
up to `max_rows` rows by a commit of its own kind (`removes` names the parts it replaces).
On start, `recover()` rolls committed transactions forward (finishes step 3 and compactions) and
deletes what an uncommitted one left behind, touching only files named as curate names them, so
a kill at any instant leaves no duplicate, no loss, and no half-written file where readers look.
Inputs named in a commit record are done and skipped.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import platform
import re
import time
import uuid
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate import __version__, registry, schema
from curate.errors import UserError
from curate.faults import fault as _fault
from curate.record import VideoRecord
from curate.storage import AlreadyExists, OutputStore, is_transient, with_retries

log = logging.getLogger("curate")

SHARDS = "shards"
TMP = ".tmp"
COMMITS = "_commits"
CLIPS = "clips"
QUARANTINE_FILE = "quarantine.parquet"
MANIFEST_FILE = "manifest.json"
MARKER_FILE = "_curate"  # written when a run first claims OUT: "this directory is curate's"
PART_RE = re.compile(r"^part-\d{6}(-[0-9a-f]{8})?\.parquet$")
COMMIT_RE = re.compile(r"^commit-\d{6}\.json$")
RESCORE = "rescore"  # commit kinds: one rescored part ...
RESCORE_DONE = "rescore_done"  # ... and the end of a rescore (its config is OUT's from then on)
REPAIR = "repair"  # a commit that makes the log and the rows agree after damage (Committer._repair)
FENCE = "fence"  # a run that took over a lease closes the log to the previous holder (Committer._fence)
NO_ROWS_KINDS = (REPAIR, FENCE)  # records that add no scores: accepted whatever config wrote them
DAMAGED = "_damaged"  # where damaged parts are set aside
CLIP_RE = re.compile(r"^[0-9a-f]{16}-\d{7}-\d{7}\.mp4$|^\.[0-9a-f]{16}-\d{7}-\d{7}\.mp4\.part$")


class ConfigMismatch(UserError, RuntimeError):
    pass


def clip_key(uri: str | None) -> tuple[str, str] | None:
    """(video dir, file name) of a clip location curate wrote, whatever OUT it was written under.

    Rows name their clip by the URI it had when written; an OUT that was moved, copied, mounted
    elsewhere or synced to a bucket still holds the file at `clips/<video_id>/<clip_id>.mp4`, so
    curate resolves that tail against the OUT it is reading (`resolve_clip_uri`) instead of
    trusting the stored prefix. None for anything else (a location outside any OUT)."""
    if not uri:
        return None
    parts = uri.replace("\\", "/").rstrip("/").split("/")
    if len(parts) >= 3 and parts[-3] == CLIPS and CLIP_RE.match(parts[-1]) and parts[-1].startswith(parts[-2] + "-"):
        return parts[-2], parts[-1]
    return None


def resolve_clip_uri(store: OutputStore, uri: str | None) -> str | None:
    """Where the clip a row names is in this OUT now (see clip_key); other locations unchanged."""
    key = clip_key(uri)
    return store.uri_of(CLIPS, *key) if key else uri


def resolve_clip_uris(store: OutputStore, table: pa.Table) -> pa.Table:
    """`table` with its clip_uri column resolved against OUT as it is now."""
    if schema.CLIP_URI not in table.column_names:
        return table
    col = [resolve_clip_uri(store, u) for u in table.column(schema.CLIP_URI).to_pylist()]
    return table.set_column(table.column_names.index(schema.CLIP_URI), schema.CLIP_URI, pa.array(col, pa.string()))


def read_records(store: OutputStore) -> tuple[list[tuple[str, dict]], list[str]]:
    """(name, record) of every readable commit record, oldest first, and the names of those that
    are damaged (empty, cut off, not a JSON object: a disk or a sync tool lost their bytes)."""
    good, damaged = [], []
    for name in (n for n in store.list(COMMITS) if COMMIT_RE.match(n)):
        try:
            rec = json.loads(store.read_bytes(COMMITS, name))
            ok = isinstance(rec, dict) and isinstance(rec.get("parts"), list) and isinstance(rec.get("videos"), list) \
                and isinstance(rec.get("config_hash"), str)
        except (ValueError, UnicodeDecodeError):
            ok = False
        if ok:
            good.append((name, rec))
        else:
            damaged.append(name)
    return good, damaged


def lost_records(good: list[tuple[str, dict]], damaged: list[str]) -> list[str]:
    """Commit record names that are missing or damaged and that no repair record stands for."""
    readable = {int(n[7:13]) for n, _ in good}
    top = max(readable | {int(n[7:13]) for n in damaged}, default=-1)
    lost = [f"commit-{k:06d}.json" for k in range(top + 1) if k not in readable]
    repaired = {r for _, rec in good for r in rec.get("repairs", [])}
    return [n for n in lost if n not in repaired]


class OutNotOurs(UserError, RuntimeError):
    """OUT holds files that are not curate's."""




def ownership_problem(store: OutputStore) -> tuple[str, bool] | None:
    """Why OUT is not ours to write, and whether --force may override it; None when it is ours."""
    names = set(store.top_level())
    if not names:
        return None
    if MANIFEST_FILE in names:
        try:
            manifest = json.loads(store.read_bytes(MANIFEST_FILE))
            foreign = not (isinstance(manifest, dict) and "curate_version" in manifest)
        except (ValueError, OSError):
            foreign = True
        if foreign:
            return f"{store.uri} holds a {MANIFEST_FILE} that is not curate's; curate would overwrite it", False
    if names & {MARKER_FILE, COMMITS, MANIFEST_FILE, "_lease"}:  # _lease: a first run is starting
        return None
    shown = ", ".join(sorted(names)[:5]) + (" ..." if len(names) > 5 else "")
    return f"{store.uri} is not empty and not a curate output ({shown})", True


class Committer:
    def __init__(self, store: OutputStore, config_hash: str, max_rows: int = 1000, compression: str = "zstd",
                 *, every_s: float = float("inf"), every_videos: int | None = None, lease=None):
        self.store = store
        self.config_hash = config_hash
        self.max_rows = max_rows
        self.compression = None if compression == "none" else compression
        self.every_s = every_s
        self.every_videos = every_videos
        self.lease = lease
        self.token = uuid.uuid4().hex[:8]  # this writer's part names
        self.records: list[dict[str, Any]] = []  # all commit records, oldest first
        self.live_parts: list[str] = []  # committed parts not replaced by a compaction
        self._pending_rows: list[pa.Table] = []
        self._pending_videos: list[VideoRecord] = []
        self._pending_count = 0
        self._last_commit = time.monotonic()
        self._next_part = 0
        self._next_commit = 0
        self.done_sources: set[str] = set()
        self.done_video_ids: dict[str, str] = {}  # video_id -> first source_uri
        self.done_sizes: set[int] | None = set()  # sizes of the done inputs (None: an older record lacks it)
        self.also_accept: set[str] = set()  # a rescore in progress: the hash it rescores from

    # -- recovery ----------------------------------------------------------------------------
    def recover(self, check_clips: bool = False) -> set[str]:
        """Finish or undo whatever a previous run left; return the inputs already done.

        Damage is repaired, never trusted and never a crash: a lost or damaged commit record, a
        committed part that is missing or does not parse, a committed part that no record names,
        and (`check_clips`) a clip file that is missing or empty. Rows of a lost record are kept
        and its inputs rebuilt from them; an input that lost rows is redone by the next run (its
        remaining rows go in the same repair commit, so nothing is duplicated). See `_repair`."""
        good, damaged_records = read_records(self.store)
        names = [n for n, _ in good] + damaged_records
        fence = None
        if getattr(self.lease, "took_over", False):  # before anything is moved or deleted (see _fence)
            self._next_commit = max((int(n[7:13]) for n in names), default=-1) + 1
            fence = self._fence()
            if fence is None:
                return self._recover_again(check_clips)  # the old holder's commit landed first: read it
            names.append(f"commit-{self._next_commit - 1:06d}.json")
        records = [rec for _, rec in good]
        removed = {p for rec in records for p in rec.get("removes", [])}
        accepted = self.accepted_hashes(records)
        live: dict[str, None] = {}  # ordered set
        ever: set[str] = set()
        missing: list[str] = []
        for name, rec in good:
            if rec["config_hash"] not in accepted and rec.get("kind") not in NO_ROWS_KINDS:
                if rec.get("kind", "").startswith("rescore"):
                    half = rescore_in_progress(records)
                    raise ConfigMismatch(
                        f"{self.store.uri} was rescored (`curate rescore`) to config hash {rec['config_hash']}, this "
                        f"one's is {self.config_hash}: " + (half.replace("OUT", self.store.uri) if half else
                        "run with the config in its manifest.json"))  # fmt: skip
                raise ConfigMismatch(
                    f"{self.store.uri} was written with config hash {rec['config_hash']}, this run's is "
                    f"{self.config_hash}: resume with the same config, or write to a new OUT"
                )
            for part in rec["parts"]:
                ever.add(part)
                live[part] = None
                if part not in removed and not self.store.exists(SHARDS, part):
                    if self.store.exists(SHARDS, TMP, part):
                        self.store.move((SHARDS, TMP, part), (SHARDS, part))  # roll forward
                    else:
                        missing.append(part)  # lost: its rows are gone (repaired below)
            for part in rec.get("removes", []):  # a compaction: its inputs go once it is committed
                live.pop(part, None)
                self.store.delete(SHARDS, part)
            self.records.append(rec)
        for part in self.store.list(SHARDS, TMP):
            if PART_RE.match(part) or part.endswith(".tmp"):
                self.store.delete(SHARDS, TMP, part)  # never committed
        # A part in shards/ got there only after its record was created (step 3): one that no
        # record names had its record lost; its rows are adopted, never deleted.
        unnamed = [p for p in self.store.list(SHARDS) if PART_RE.match(p) and p not in ever and p not in removed]
        self.live_parts = list(live)
        self._next_commit = max((int(n[7:13]) for n in names), default=-1) + 1
        self._next_part = max((int(p[5:11]) for p in ever | set(unnamed)), default=-1) + 1
        if fence is not None:
            self.records.append(fence)
        unreadable = [p for p in self.live_parts if p not in missing and not self._readable(p)]
        lost = lost_records(good, damaged_records)
        if missing or unreadable or unnamed or lost or check_clips:
            self._repair(missing + unreadable, unnamed, lost, check_clips)
        for v in self.videos():
            if (v.get("quarantine") or {}).get("retry"):
                continue  # a missing input or a full disk: not done, the next run tries again
            self.done_sources.add(v["source_uri"])
            if v.get("video_id") and not v.get("quarantine"):
                self.done_video_ids.setdefault(v["video_id"], v["source_uri"])
                if not v.get("size_bytes"):
                    self.done_sizes = None  # a record from before sizes were kept: sizes unknown
                elif self.done_sizes is not None:
                    self.done_sizes.add(v["size_bytes"])
        return set(self.done_sources)

    def _fence(self) -> dict | None:
        """After taking over another run's lease, before recovery moves or deletes anything: create
        the next commit record ourselves, so that a commit the old holder still has in flight
        (stalled on the network past its lease) finds its name taken and fails ("stopped"), instead
        of landing while this run's recovery removes its uncommitted parts. None when the old
        holder's record got there first (then it is read like any other)."""
        name = f"commit-{self._next_commit:06d}.json"
        rec = {"config_hash": self.config_hash, "time": time.time(), "parts": [], "videos": [], "kind": FENCE,
               "owner": getattr(self.lease, "info", {}).get("owner")}  # fmt: skip
        try:
            self.store.create_exclusive(json.dumps(rec).encode(), COMMITS, name)
        except AlreadyExists:
            return None
        self._next_commit += 1
        self.lease.took_over = False
        return rec

    def _recover_again(self, check_clips: bool) -> set[str]:
        self.records, self.live_parts = [], []
        self.done_sources, self.done_video_ids, self.done_sizes = set(), {}, set()
        return self.recover(check_clips)

    def _readable(self, part: str) -> bool:
        return self._read_part(part, footer_only=True) is not None

    def _read_part(self, part: str, columns: list[str] | None = None, footer_only: bool = False):
        """A committed part's rows (or True for `footer_only`), or None when it is damaged. A
        network fault is not damage: it is retried, and raised if it lasts (the run stops, nothing
        is set aside)."""
        path = self.store.path(SHARDS, part)

        def read():
            if footer_only:
                return pq.ParquetFile(path, filesystem=self.store.fs).metadata is not None
            return pq.read_table(path, columns=columns, filesystem=self.store.fs)

        try:
            return read() if self.store.local else with_retries(read, f"{self.store.uri}: read {part}")
        except (pa.ArrowException, OSError, ValueError) as e:
            if is_transient(e) or isinstance(e, FileNotFoundError):
                raise
            return None

    def _repair(self, broken: list[str], unnamed: list[str], lost: list[str], check_clips: bool) -> None:
        """One commit of kind `repair` that makes the commit log and the rows agree again.

        - `broken` (committed parts missing or not parquet) are set aside in `_damaged/`; every
          input whose rows are not all in readable parts any more is redone by the next run;
        - `unnamed` parts (their record was lost) are adopted, less rows already committed;
        - inputs with rows but no record (a `lost` record) get a record rebuilt from their rows;
        - with `check_clips`, an input whose clip file is missing or empty is redone.
        An input that is redone has its remaining rows removed in the same commit, so its new rows
        never duplicate them. Idempotent: a kill before the commit leaves the same damage."""
        narrow = [schema.SOURCE_URI, schema.VIDEO_ID, schema.CLIP_ID, schema.CLIP_URI, schema.END_S, schema.DURATION_S]
        tables: dict[str, pa.Table] = {}  # the columns repair needs, per readable live part
        for part in self.live_parts:
            if part not in broken:
                t = self._read_part(part, narrow)
                if t is None:
                    broken.append(part)
                else:
                    tables[part] = t
        adopted: list[pa.Table] = []  # whole rows of unnamed parts that are not committed already
        seen = {cid for t in tables.values() for cid in t.column(schema.CLIP_ID).to_pylist()}
        for part in unnamed:
            t = self._read_part(part)
            if t is None:
                self._set_aside(part)
                continue
            t = t.filter(pa.array([cid not in seen for cid in t.column(schema.CLIP_ID).to_pylist()], pa.bool_()))
            seen |= set(t.column(schema.CLIP_ID).to_pylist())
            if t.num_rows:
                adopted.append(t)
        for part in broken:
            self._set_aside(part)
        rows_of: dict[str, list[dict]] = {}
        for t in [*tables.values(), *(a.select(narrow) for a in adopted)]:
            for r in t.to_pylist():
                rows_of.setdefault(r[schema.SOURCE_URI], []).append(r)
        latest = {v["source_uri"]: v for v in self.videos()}
        bad_clips = self._bad_clip_files(rows_of) if check_clips else {}
        redo: dict[str, str] = {}
        for src, v in latest.items():
            if v.get("quarantine"):
                continue
            have = len(rows_of.get(src, []))
            if have != v.get("clips", 0):
                redo[src] = (f"{v.get('clips', 0) - have} of its {v.get('clips', 0)} clip rows were lost with damaged "
                             f"shards ({', '.join(broken) or 'a lost commit'})")  # fmt: skip
            elif src in bad_clips:
                redo[src] = bad_clips[src]
        videos: list[dict] = []
        for src, rows in rows_of.items():
            if src not in latest and src not in redo:
                videos.append(VideoRecord(
                    source_uri=src, video_id=rows[0].get(schema.VIDEO_ID), clips=len(rows),
                    duration_s=max((r.get(schema.END_S) or 0.0) for r in rows),
                    clip_seconds=sum((r.get(schema.DURATION_S) or 0.0) for r in rows), rebuilt=True).__dict__)
        for src, why in redo.items():
            log.warning("%s: %s; it is processed again", src, why)
            videos.append(VideoRecord(source_uri=src, video_id=latest[src].get("video_id"), clips=0, quarantine={
                "reason": schema.Q_ERROR, "detail": f"{why}; run again to redo it", "retry": True}).__dict__)
        changed = [p for p, t in tables.items() if any(s in redo for s in t.column(schema.SOURCE_URI).to_pylist())]
        keep_rows = []
        for t in [*(self._read_part(p) for p in changed), *adopted]:
            t = t.filter(pa.array([s not in redo for s in t.column(schema.SOURCE_URI).to_pylist()], pa.bool_()))
            if t.num_rows:
                keep_rows.append(registry.conform(t))
        if not (videos or changed or adopted or broken or unnamed or lost):
            return
        parts = self._write_parts(pa.concat_tables(keep_rows, promote_options="default")) if keep_rows else []
        log.warning("%s: repaired the commit log (lost records: %s; damaged parts: %s; parts no record named: %s; "
                    "inputs rebuilt from their rows: %d; inputs to redo: %d)", self.store.uri, ", ".join(lost) or "none",
                    ", ".join(broken) or "none", ", ".join(unnamed) or "none",
                    sum(1 for v in videos if v.get("rebuilt")), len(redo))  # fmt: skip
        # unnamed parts are removed by this commit (their rows are in its parts or were live):
        # a kill before it leaves them unnamed, and the next recover adopts them again
        self._commit(parts, videos, removes=[*changed, *broken, *unnamed], kind=REPAIR, repairs=lost,
                     damaged=broken, adopted=unnamed)  # fmt: skip

    def _set_aside(self, part: str) -> None:
        """A damaged part leaves shards/ for `_damaged/` (kept for a person to look at)."""
        if self.store.exists(SHARDS, part):
            try:
                self.store.move((SHARDS, part), (DAMAGED, part))
            except AlreadyExists:
                self.store.delete(SHARDS, part)

    def _bad_clip_files(self, rows_of: dict[str, list[dict]]) -> dict[str, str]:
        """Inputs whose committed rows name a clip file that is missing or empty in this OUT."""
        sizes = {key: info.size for key, info in self._clip_files()}
        bad = {}
        for src, rows in rows_of.items():
            for r in rows:
                key = clip_key(r.get(schema.CLIP_URI))
                if key is not None and not sizes.get(key):
                    what = "is missing" if key not in sizes else "is empty"
                    bad[src] = f"its clip file clips/{key[0]}/{key[1]} {what}"
                    break
        return bad

    def _clip_files(self):
        """((video dir, file name), FileInfo) of every file at clips/<video_id>/<name> in OUT."""
        listing = self.store._r(lambda: self.store.fs.get_file_info(pafs_selector(self.store.path(CLIPS))), "list clips")
        for info in listing:
            rel = info.path[len(self.store.root) + 1:].split("/")
            if info.is_file and len(rel) == 3:
                yield (rel[1], rel[2]), info

    def accepted_hashes(self, records: list[dict]) -> set[str]:
        """This writer's config hash, and the hashes a finished `curate rescore` turned into it
        (transitively): rows written under those configs now carry this config's scores."""
        accepted = {self.config_hash, *self.also_accept}
        grew = True
        while grew:
            grew = False
            for rec in records:
                if rec.get("kind") == RESCORE_DONE and rec["config_hash"] in accepted and rec["from_hash"] not in accepted:
                    accepted.add(rec["from_hash"])
                    grew = True
        return accepted

    def committed_clip_keys(self) -> set[tuple[str, str]] | None:
        """The clips (clip_key) committed rows name; None when a committed part cannot be read
        (then no file can be proved an orphan)."""
        keys: set[tuple[str, str]] = set()
        for part in self.live_parts:
            t = self._read_part(part, [schema.CLIP_URI])
            if t is None:
                return None
            keys.update(k for k in map(clip_key, t.column(0).to_pylist()) if k)
        return keys

    def sweep_orphans(self) -> int:
        """Delete clip files no committed row names (left by a killed run, a quarantined input or
        a failed extraction). Only names curate gives its clips are touched, compared by their
        place under OUT (clips/<video_id>/<clip_id>.mp4), never by the prefix a row was written
        with: an OUT that was moved or copied keeps every clip. Call it only while no worker of
        this run is writing."""
        keep = self.committed_clip_keys()
        if keep is None:
            log.warning("%s: a committed part cannot be read; no clip file is removed", self.store.uri)
            return 0
        removed = 0
        for key, info in self._clip_files():
            if CLIP_RE.match(key[1]) and key not in keep:  # a temp `.part` never is
                self.store.fs.delete_file(info.path)
                removed += 1
        if self.store.local and os.path.isdir(self.store.path(CLIPS)):
            for d in os.listdir(self.store.path(CLIPS)):
                _remove_seg_dirs(self.store.path(CLIPS, d))
                with contextlib.suppress(OSError):
                    os.rmdir(self.store.path(CLIPS, d))  # only empty ones go
        if removed:
            log.info("removed %d clip files no commit refers to", removed)
        return removed

    # -- committing --------------------------------------------------------------------------
    def add_video(self, record: VideoRecord, rows: pa.Table | None) -> None:
        """Queue one finished input (its clip rows, or none) for the next commit."""
        if record.source_uri in self.done_sources:
            return  # a retried task delivered it twice: already committed
        if record.quarantine is None and record.video_id in self.done_video_ids:
            first = self.done_video_ids[record.video_id]
            record.quarantine = {"reason": schema.Q_DUPLICATE, "detail": f"same content as {first}"}
            record.clips, record.clip_seconds, rows = 0, 0.0, None
        self.done_sources.add(record.source_uri)
        if record.quarantine is None and record.video_id:
            self.done_video_ids[record.video_id] = record.source_uri
        self._pending_videos.append(record)
        if rows is not None and rows.num_rows:
            if schema.ERRORS in rows.column_names:
                record.clips_with_errors = sum(1 for e in rows.column(schema.ERRORS).to_pylist() if e)
            self._pending_rows.append(registry.conform(rows))
            self._pending_count += rows.num_rows
        if (self._pending_count >= self.max_rows
                or (self.every_videos and len(self._pending_videos) >= self.every_videos)
                or time.monotonic() - self._last_commit >= self.every_s):  # fmt: skip
            self.flush()

    def _write_parts(self, table: pa.Table) -> list[str]:
        parts = []
        for offset in range(0, table.num_rows, self.max_rows):
            name = f"part-{self._next_part:06d}-{self.token}.parquet"
            self._next_part += 1
            if parts:
                _fault("between_parts")
            buf = io.BytesIO()
            pq.write_table(table.slice(offset, self.max_rows), buf, compression=self.compression)
            self.store.write_bytes(buf.getvalue(), SHARDS, TMP, name)
            parts.append(name)
        return parts

    def _commit(self, parts: list[str], videos: list[dict], removes: list[str] = (), **extra: Any) -> None:
        rec = {"config_hash": self.config_hash, "time": time.time(), "parts": parts, "videos": videos}
        if removes:
            rec["removes"] = list(removes)
        rec.update(extra)
        if self.lease is not None:
            self.lease.check()  # a writer that lost OUT stops before its commit point
        _fault("before_record")
        name = f"commit-{self._next_commit:06d}.json"
        try:
            self.store.create_exclusive(json.dumps(rec).encode(), COMMITS, name)  # the commit point
        except AlreadyExists:
            from curate.lease import LeaseLost

            raise LeaseLost(f"{self.store.uri}: {COMMITS}/{name} was written by another run while this one "
                            "was writing; this run stopped without committing its last batch") from None  # fmt: skip
        self._next_commit += 1
        _fault("after_record")
        for k, part in enumerate(parts):
            if k:
                _fault("between_moves")
            self.store.move((SHARDS, TMP, part), (SHARDS, part))
        for part in removes:
            self.store.delete(SHARDS, part)
        self.records.append(rec)
        self.live_parts = [p for p in self.live_parts if p not in set(removes)] + parts
        self._last_commit = time.monotonic()

    def flush(self) -> None:
        if not self._pending_videos:
            return
        _fault("before_parts")
        parts = self._write_parts(pa.concat_tables(self._pending_rows) if self._pending_rows else pa.table({}))
        self._commit(parts, [v.__dict__ for v in self._pending_videos])
        self._pending_rows, self._pending_videos, self._pending_count = [], [], 0

    def replace_part(self, old: str, table: pa.Table, **extra: Any) -> None:
        """One committed part replaced by its rescored rows, atomically (one commit of its own)."""
        _fault("before_parts")
        self._commit(self._write_parts(registry.conform(table)), [], removes=[old], **extra)

    def mark(self, **extra: Any) -> None:
        """A commit with no parts and no videos: a fact about OUT (a finished rescore)."""
        self._commit([], [], **extra)

    def compact(self) -> None:
        """Merge the parts smaller than max_rows (frequent commits leave many) into full ones."""
        small = [part for part in self.live_parts
                 if pq.ParquetFile(self.store.path(SHARDS, part), filesystem=self.store.fs).metadata.num_rows < self.max_rows]
        if len(small) < 2:
            return
        table = pa.concat_tables([pq.read_table(self.store.path(SHARDS, p), filesystem=self.store.fs) for p in small])
        _fault("before_compaction")
        parts = self._write_parts(table)
        self._commit(parts, [], removes=small)

    # -- summaries ---------------------------------------------------------------------------
    def videos(self) -> list[dict[str, Any]]:
        """Every input's latest record (a retried input's new record replaces its old one)."""
        latest: dict[str, dict[str, Any]] = {}
        for rec in self.records:
            for v in rec["videos"]:
                latest.pop(v["source_uri"], None)
                latest[v["source_uri"]] = v
        return list(latest.values())

    def write_quarantine(self) -> int:
        rows = [
            {schema.SOURCE_URI: v["source_uri"], schema.VIDEO_ID: v.get("video_id"),
             schema.REASON: v["quarantine"]["reason"], schema.DETAIL: v["quarantine"].get("detail")}
            for v in self.videos() if v.get("quarantine")
        ]  # fmt: skip
        table = pa.Table.from_pylist(rows, schema=schema.QUARANTINE_SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.store.write_bytes(buf.getvalue(), QUARANTINE_FILE)
        return len(rows)

    def write_manifest(self, config: dict, run: dict, extra: dict | None = None) -> dict:
        videos = self.videos()
        ok = [v for v in videos if not v.get("quarantine")]
        reasons = Counter(v["quarantine"]["reason"] for v in videos if v.get("quarantine"))
        stage_s: Counter = Counter()  # (update keeps a 0.0, where `+` would drop it)
        for v in videos:
            stage_s.update(v.get("stage_seconds") or {})
        previous = {}
        with contextlib.suppress(ValueError, OSError):
            previous = json.loads(self.store.read_bytes(MANIFEST_FILE)) if self.store.exists(MANIFEST_FILE) else {}
        manifest = {
            "curate_version": __version__,
            "config": config,
            "config_hash": self.config_hash,
            "versions": package_versions(),
            "counts": {
                "inputs": len(videos),
                "videos_ok": len(ok),
                "quarantined": len(videos) - len(ok),
                "quarantine_reasons": dict(sorted(reasons.items())),
                "clips": sum(v["clips"] for v in ok),
                "scenes": sum(v.get("scenes", 0) for v in ok),
                "short_scenes_dropped": sum(v.get("short_scenes_dropped", 0) for v in ok),
                "held_frames_dropped": sum(v.get("held_frames_dropped", 0) for v in ok),
                "failed_clips": sum(len(v.get("failed_clips") or []) for v in ok),
                "clips_with_errors": sum(v.get("clips_with_errors", 0) for v in ok),
                "to_retry": sum(1 for v in videos if (v.get("quarantine") or {}).get("retry")),
                "hours_in": sum(v.get("duration_s", 0.0) for v in ok) / 3600.0,
                "hours_out": sum(v.get("clip_seconds", 0.0) for v in ok) / 3600.0,
                "shards": len(self.live_parts),
            },
            # Summed over workers (CPU-side cost per stage); the run's wall time is in `runs`.
            "stage_seconds": {k: round(v, 3) for k, v in sorted(stage_s.items())},
            "runs": [*previous.get("runs", []), run],
            **(extra or {}),
        }
        self.store.write_bytes(json.dumps(manifest, indent=2).encode(), MANIFEST_FILE)
        return manifest


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("ray", "av", "pyarrow", "scenedetect-headless", "opencv-python-headless", "imageio-ffmpeg", "numpy", "pydantic"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def pafs_selector(path: str):
    import pyarrow.fs as pafs

    return pafs.FileSelector(path, recursive=True, allow_not_found=True)


def rescore_in_progress(records: list[dict]) -> str | None:
    """What a `curate rescore` that stopped before its end left (some parts rescored, some not),
    and the command that finishes it; None when there is none."""
    finished = {rec["config_hash"] for rec in records if rec.get("kind") == RESCORE_DONE}
    started = [rec for rec in records if rec.get("kind") == RESCORE and rec["config_hash"] not in finished]
    if not started:
        return None
    last = started[-1]
    sets = " ".join(f"--set '{s}'" for s in last.get("overrides") or [])
    named = " ".join(f"--scorer {n}" for n in last.get("named") or [])
    command = " ".join(x for x in ("curate rescore OUT", sets, named) if x)
    done = len({p for rec in started if rec["config_hash"] == last["config_hash"] for p in rec["parts"]})
    return (f"a `curate rescore` to config hash {last['config_hash']} stopped before its end ({done} parts rescored, "
            f"the others still carry the scores of config {last.get('from_hash')}): finish it with `{command}`"
            + ("" if last.get("overrides") is not None else " and the settings it was started with"))


def committed_parts(store: OutputStore) -> list[str]:
    """The parts OUT's commit log says are live, oldest first (what readers read: a stray
    parquet file in shards/, or a part no record names, is not OUT's data)."""
    good, _ = read_records(store)
    removed = {p for _, rec in good for p in rec.get("removes", [])}
    return list(dict.fromkeys(p for _, rec in good for p in rec["parts"] if p not in removed))


class DamagedOut(UserError, ValueError):
    """A committed part of OUT cannot be read."""


def read_shards(out: str, columns: list[str] | None = None) -> pa.Table:
    """All committed clip rows of OUT as one table (empty table with the schema when none), with
    clip locations resolved against OUT as it is now (it may have been moved or copied)."""
    store = OutputStore(out, create=False)
    parts = []  # a committed part is in shards/, or still in shards/.tmp (a commit a kill cut short)
    for p in committed_parts(store):
        if store.exists(SHARDS, p):
            parts.append((SHARDS, p))
        elif store.exists(SHARDS, TMP, p):
            parts.append((SHARDS, TMP, p))
    if not parts:
        return registry.clip_schema().empty_table()
    tables = []
    for where in parts:
        p = where[-1]
        try:
            t = pq.read_table(store.path(*where), filesystem=store.fs)
        except (pa.ArrowException, OSError) as e:
            raise DamagedOut(f"{store.uri}/{SHARDS}/{p} cannot be read ({str(e).splitlines()[0]}): `curate verify "
                             f"{store.uri}` names the damage; `curate run` with OUT's config repairs it") from None  # fmt: skip
        tables.append(t.select([c for c in columns if c in t.column_names]) if columns else t)
    return resolve_clip_uris(store, pa.concat_tables(tables, promote_options="default"))


SEG_DIR_RE = re.compile(r"^\.seg-[A-Za-z0-9_]+$")  # curate.clips.SEG_PREFIX + mkdtemp's suffix
SEG_FILE_RE = re.compile(r"^g\d{5}$|^\d{5}\.mp4$")


def _remove_seg_dirs(video_dir: str) -> None:
    """The work dirs a killed one-pass extraction left (only curate's names, and only its files)."""
    if not os.path.isdir(video_dir):
        return
    for name in os.listdir(video_dir):
        top = os.path.join(video_dir, name)
        if not (SEG_DIR_RE.match(name) and os.path.isdir(top)):
            continue
        for root, dirs, files in os.walk(top, topdown=False):
            for f in files:
                if SEG_FILE_RE.match(f):
                    os.unlink(os.path.join(root, f))
            for d in dirs:
                if SEG_FILE_RE.match(d):
                    with contextlib.suppress(OSError):
                        os.rmdir(os.path.join(root, d))
        with contextlib.suppress(OSError):
            os.rmdir(top)
