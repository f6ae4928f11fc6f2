"""`curate verify OUT`: is this output whole? Read-only; the check to run before training on it.

Checks, against the commit log (the source of truth):
- every committed part is in `shards/` and parses; no stray part files; no duplicate clip ids;
- every row's clip file exists, with the recorded frame count and size (local OUT: read from the
  file's index with PyAV; object storage: existence and a non-zero size, unless `deep`);
- no clip file that no row names (an orphan);
- manifest.json and quarantine.parquet agree with the commits.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curate import schema
from curate.dataset import DatasetError, open_out
from curate.shards import (CLIP_RE, CLIPS, COMMITS, DAMAGED, MANIFEST_FILE, PART_RE, QUARANTINE_FILE, REPAIR, SHARDS, TMP,
                           lost_records, read_records, rescore_in_progress, resolve_clip_uris)
from curate.sample import clip_frames


@dataclass
class Report:
    checked_rows: int = 0
    checked_files: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what happened to OUT and was repaired (not a problem now)

    @property
    def ok(self) -> bool:
        return not self.problems


def _clip_facts(path: str) -> tuple[int, int, int]:
    """(frames, width, height) of a clip from its container index (no decode)."""
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        frames = s.frames or sum(1 for p in c.demux(s) if p.size)
        return frames, s.codec_context.width, s.codec_context.height


def verify(out: str, deep: bool = False) -> Report:
    rep = Report()
    bad = rep.problems.append
    try:
        store, manifest = open_out(out)
    except DatasetError as e:
        bad(str(e))
        return rep
    good, damaged = read_records(store)
    records = [rec for _, rec in good]
    for name in lost_records(good, damaged):
        what = "is damaged (empty, cut off or not a commit record)" if name in damaged else "is missing (a lost commit record)"
        bad(f"{COMMITS}/{name} {what}: `curate run` with OUT's config rebuilds what it held from the rows")
    for rec in records:
        if rec.get("kind") == REPAIR:
            what = [f"records {', '.join(rec.get('repairs') or [])} lost" if rec.get("repairs") else "",
                    f"parts {', '.join(rec.get('damaged') or [])} damaged (in {DAMAGED}/)" if rec.get("damaged") else "",
                    f"{sum(1 for v in rec['videos'] if v.get('rebuilt'))} inputs rebuilt from their rows"]
            rep.notes.append("a run repaired this OUT: " + "; ".join(w for w in what if w))
    half = rescore_in_progress(records)
    if half:
        bad(half)
    removed = {p for r in records for p in r.get("removes", [])}
    live = list(dict.fromkeys(p for r in records for p in r.get("parts", []) if p not in removed))
    on_disk = set(store.list(SHARDS))
    for p in live:
        if p not in on_disk:
            where = " (still in shards/.tmp: run `curate run` again to finish the commit)" if store.exists(SHARDS, TMP, p) else ""
            bad(f"committed part shards/{p} is missing{where}")
    for p in sorted(on_disk - set(live)):
        if p.endswith(".parquet"):
            bad(f"shards/{p} is not part of any commit" + ("" if PART_RE.match(p) else " (not a name curate writes: "
                "readers of OUT ignore it; move it out of shards/)"))  # fmt: skip
    rows = []
    for p in live:
        if p not in on_disk:
            continue
        try:
            rows += resolve_clip_uris(store, pq.read_table(store.path(SHARDS, p), filesystem=store.fs)).to_pylist()
        except Exception as e:  # noqa: BLE001 -- any reader failure is the finding
            bad(f"shards/{p} does not parse: {str(e).splitlines()[0]}")
    rep.checked_rows = len(rows)
    dups = [cid for cid, n in Counter(r[schema.CLIP_ID] for r in rows).items() if n > 1]
    for cid in dups[:20]:
        bad(f"clip {cid} has {sum(r[schema.CLIP_ID] == cid for r in rows)} rows")
    clips_cfg = (manifest.get("config") or {}).get("clips", {})
    extract = clips_cfg.get("extract", True) and clips_cfg.get("mode") != "deferred"  # deferred: spans, no files
    named: set[str] = set()
    for r in rows:
        uri = r[schema.CLIP_URI]
        if not uri:
            if extract:
                bad(f"clip {r[schema.CLIP_ID]} has no clip file ({'; '.join(r[schema.ERRORS] or []) or 'no error recorded'})")
            continue
        named.add(uri)
        rep.checked_files += 1
        want = (clip_frames(r), r[schema.WIDTH], r[schema.HEIGHT])
        if store.local:
            if not os.path.isfile(uri):
                bad(f"clip file {uri} is missing")
                continue
            if not os.path.getsize(uri):
                bad(f"clip file {uri} is empty")
                continue
            try:
                got = _clip_facts(uri)
            except Exception as e:  # noqa: BLE001
                bad(f"clip file {uri} does not open: {str(e).splitlines()[0]}")
                continue
        else:
            fs, path = pafs.FileSystem.from_uri(uri)
            info = fs.get_file_info(path)
            if info.type != pafs.FileType.File or not info.size:
                bad(f"clip file {uri} is missing or empty")
                continue
            if not deep:
                continue
            with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
                with fs.open_input_stream(path) as src:
                    tmp.write(src.read())
                tmp.flush()
                got = _clip_facts(tmp.name)
        if got != want:
            bad(f"clip file {uri} has {got[0]} frames at {got[1]}x{got[2]}, its row says {want[0]} at {want[1]}x{want[2]}")
    for info in store.fs.get_file_info(pafs.FileSelector(store.path(CLIPS), recursive=True, allow_not_found=True)):
        if info.is_file and CLIP_RE.match(os.path.basename(info.path)):
            uri = store.uri_of(*info.path[len(store.root) + 1:].split("/"))
            if uri not in named:
                bad(f"orphan clip file {uri}: no committed row names it")
    latest: dict[str, dict] = {}
    srcs = []
    for r in records:
        for v in r.get("videos", []):
            prev = latest.pop(v["source_uri"], None)
            if prev is not None and not (prev.get("quarantine") or {}).get("retry") and r.get("kind") != REPAIR:
                srcs.append(v["source_uri"])  # committed again although the first was final
            latest[v["source_uri"]] = v
    videos = list(latest.values())
    quarantined = [v for v in videos if v.get("quarantine")]
    c = manifest.get("counts", {})
    expect = {"inputs": len(videos), "clips": len(rows), "shards": len(live), "quarantined": len(quarantined)}
    for k, v in expect.items():
        if c.get(k) != v:
            bad(f"{MANIFEST_FILE} counts.{k} = {c.get(k)}, the commits say {v}")
    for s in sorted(set(srcs))[:20]:
        bad(f"input {s} is committed {srcs.count(s) + 1} times")
    try:
        q = pq.read_table(store.path(QUARANTINE_FILE), filesystem=store.fs).num_rows
        if q != len(quarantined):
            bad(f"{QUARANTINE_FILE} has {q} rows, the commits quarantine {len(quarantined)} inputs")
    except Exception as e:  # noqa: BLE001
        bad(f"{QUARANTINE_FILE} cannot be read: {str(e).splitlines()[0]}")
    return rep
