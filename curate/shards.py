"""Atomic parquet shards, the commit protocol that makes runs resumable, and manifest.json.

Exactly-once by construction. The driver commits whole videos only:
  1. write each part file as `shards/.tmp/part-NNNNNN.parquet` (invisible to `shards/*.parquet`),
  2. write the commit record `_commits/commit-NNNNNN.json` atomically: its parts, its videos and
     their quarantine rows. This is the commit point.
  3. move the parts to `shards/part-NNNNNN.parquet`.
On start, `recover()` rolls committed transactions forward (finishes step 3) and deletes what
an uncommitted one left behind, so a kill at any instant leaves no duplicate, no loss, and no
half-written file where readers look. Inputs named in a commit record are done and skipped.
"""

from __future__ import annotations

import io
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate import __version__, schema
from curate.storage import OutputStore

log = logging.getLogger("curate")

SHARDS = "shards"
TMP = ".tmp"
COMMITS = "_commits"
QUARANTINE_FILE = "quarantine.parquet"
MANIFEST_FILE = "manifest.json"


class ConfigMismatch(RuntimeError):
    pass


@dataclass
class VideoRecord:
    """What the committer keeps about a finished input (it goes into the commit record)."""

    source_uri: str
    video_id: str | None
    clips: int
    duration_s: float = 0.0
    clip_seconds: float = 0.0
    scenes: int = 0
    short_scenes_dropped: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    quarantine: dict[str, str] | None = None  # {"reason", "detail"}


class Committer:
    def __init__(self, store: OutputStore, config_hash: str, max_rows: int = 1000, compression: str = "zstd"):
        self.store = store
        self.config_hash = config_hash
        self.max_rows = max_rows
        self.compression = None if compression == "none" else compression
        self.records: list[dict[str, Any]] = []  # all commit records, oldest first
        self._pending_rows: list[pa.Table] = []
        self._pending_videos: list[VideoRecord] = []
        self._pending_count = 0
        self._next_part = 0
        self._next_commit = 0
        self.done_sources: set[str] = set()
        self.done_video_ids: dict[str, str] = {}  # video_id -> first source_uri

    # -- recovery ----------------------------------------------------------------------------
    def recover(self) -> set[str]:
        """Finish or undo whatever a previous run left; return the inputs already done."""
        names = [n for n in self.store.list(COMMITS) if n.startswith("commit-") and n.endswith(".json")]
        committed_parts: set[str] = set()
        for name in names:
            rec = json.loads(self.store.read_bytes(COMMITS, name))
            if rec["config_hash"] != self.config_hash:
                raise ConfigMismatch(
                    f"{self.store.uri} was written with config hash {rec['config_hash']}, this run's is "
                    f"{self.config_hash}: resume with the same config, or write to a new OUT"
                )
            for part in rec["parts"]:
                committed_parts.add(part)
                if not self.store.exists(SHARDS, part):
                    if not self.store.exists(SHARDS, TMP, part):
                        raise RuntimeError(f"commit {name} names {part}, which is neither in shards/ nor in shards/.tmp/")
                    self.store.move((SHARDS, TMP, part), (SHARDS, part))  # roll forward
            self.records.append(rec)
        for part in self.store.list(SHARDS, TMP):
            self.store.delete(SHARDS, TMP, part)  # never committed
        for part in self.store.list(SHARDS):
            if part.endswith(".parquet") and part not in committed_parts:
                log.warning("removing %s: not part of any commit", part)
                self.store.delete(SHARDS, part)
        self._next_commit = len(names)
        self._next_part = len(committed_parts)
        for rec in self.records:
            for v in rec["videos"]:
                self.done_sources.add(v["source_uri"])
                if v.get("video_id") and not v.get("quarantine"):
                    self.done_video_ids.setdefault(v["video_id"], v["source_uri"])
        return set(self.done_sources)

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
            self._pending_rows.append(schema.conform(rows))
            self._pending_count += rows.num_rows
        if self._pending_count >= self.max_rows:
            self.flush()

    def flush(self) -> None:
        if not self._pending_videos:
            return
        parts: list[str] = []
        if self._pending_rows:
            table = pa.concat_tables(self._pending_rows)
            for offset in range(0, table.num_rows, self.max_rows):
                name = f"part-{self._next_part:06d}.parquet"
                self._next_part += 1
                buf = io.BytesIO()
                pq.write_table(table.slice(offset, self.max_rows), buf, compression=self.compression)
                self.store.write_bytes(buf.getvalue(), SHARDS, TMP, name)
                parts.append(name)
        rec = {
            "config_hash": self.config_hash,
            "time": time.time(),
            "parts": parts,
            "videos": [v.__dict__ for v in self._pending_videos],
        }
        name = f"commit-{self._next_commit:06d}.json"
        self.store.write_bytes(json.dumps(rec).encode(), COMMITS, name)  # the commit point
        self._next_commit += 1
        for part in parts:
            self.store.move((SHARDS, TMP, part), (SHARDS, part))
        self.records.append(rec)
        self._pending_rows, self._pending_videos, self._pending_count = [], [], 0

    # -- summaries ---------------------------------------------------------------------------
    def videos(self) -> list[dict[str, Any]]:
        return [v for rec in self.records for v in rec["videos"]]

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
        reasons: dict[str, int] = {}
        for v in videos:
            if v.get("quarantine"):
                r = v["quarantine"]["reason"]
                reasons[r] = reasons.get(r, 0) + 1
        stage_s: dict[str, float] = {}
        for v in videos:
            for k, s in (v.get("stage_seconds") or {}).items():
                stage_s[k] = stage_s.get(k, 0.0) + s
        previous = {}
        if self.store.exists(MANIFEST_FILE):
            try:
                previous = json.loads(self.store.read_bytes(MANIFEST_FILE))
            except (ValueError, OSError):
                previous = {}
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
                "hours_in": sum(v.get("duration_s", 0.0) for v in ok) / 3600.0,
                "hours_out": sum(v.get("clip_seconds", 0.0) for v in ok) / 3600.0,
                "shards": sum(len(rec["parts"]) for rec in self.records),
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
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def read_shards(out: str) -> pa.Table:
    """All committed clip rows of OUT as one table (empty table with the schema when none)."""
    store = OutputStore(out)
    parts = [p for p in store.list(SHARDS) if p.endswith(".parquet")]
    if not parts:
        return schema.CLIP_SCHEMA.empty_table()
    return pa.concat_tables(
        [pq.read_table(store.path(SHARDS, p), filesystem=store.fs) for p in parts], promote_options="default"
    )
