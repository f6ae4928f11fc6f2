"""Training shards from a subset: parquet or WebDataset tar, sized by rows or bytes, indexed.

Each sample carries the clip (its mp4 bytes, or its URI with `--no-embed`), the training caption
and the scores, so the trainer streams shards without touching the curation output. Shards are
written atomically (temp + rename), and `index.json` lists them with their row counts, bytes and
clip ids, so a loader can shard work across readers without opening every file.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
import uuid
from pathlib import Path
from typing import Iterator, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from curate import schema
from curate.dataset import CLIP_BYTES, INDEX_FILE, SUBSET_FILE


def _read_clip(uri: str) -> bytes:
    from curate.storage import is_remote

    if is_remote(uri):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(uri)
        with fs.open_input_stream(path) as fh:
            return fh.read()
    with open(uri, "rb") as fh:
        return fh.read()


def _meta(row: dict) -> dict:
    """JSON-safe metadata of a row (embeddings and bytes left out)."""
    return {k: v for k, v in row.items() if k not in (CLIP_BYTES, schema.CLIP_EMBEDDING, schema.SAMPLES)}


def _groups(rows: Iterator[tuple[dict, bytes | None]], max_rows: int, max_bytes: int | None):
    group, size = [], 0
    for row, data in rows:
        n = len(data) if data else 0
        if group and (len(group) >= max_rows or (max_bytes and size + n > max_bytes)):
            yield group
            group, size = [], 0
        group.append((row, data))
        size += n
    if group:
        yield group


def export(subset: str | Path, out: str | Path, fmt: Literal["parquet", "webdataset"] = "parquet",
           max_rows: int = 1000, max_bytes: int | None = None, embed: bool = True) -> dict:
    subset = Path(subset)
    path = subset / SUBSET_FILE if subset.is_dir() else subset
    if not path.is_file():
        raise FileNotFoundError(f"no subset at {path} (make one with `curate select`)")
    table = pq.read_table(path)
    if "caption" not in table.column_names:
        raise ValueError(f"{path} has no caption column: export a subset made by `curate select`")
    final = _claim(Path(out))
    rows = table.to_pylist()
    # Written aside and swapped in whole: a failure (a missing clip, a full disk, a kill) leaves
    # the previous export as it was, never a mix or a half.
    out = final.parent / f".{final.name}.export-{uuid.uuid4().hex[:8]}"
    out.mkdir()
    try:
        index = _write(rows, table.schema, out, fmt, max_rows, max_bytes, embed, path)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    _swap_in(out, final)
    return index


def _write(rows: list[dict], src_schema: pa.Schema, out: Path, fmt: str, max_rows: int, max_bytes: int | None,
           embed: bool, path: Path) -> dict:
    def stream():
        for r in rows:
            data = None
            if embed:
                if not r.get(schema.CLIP_URI):
                    continue  # nothing to train on: the clip failed to extract
                try:
                    data = _read_clip(r[schema.CLIP_URI])
                except FileNotFoundError:
                    raise FileNotFoundError(f"clip {r[schema.CLIP_ID]}: its file {r[schema.CLIP_URI]} is missing (`curate "
                                            "verify` on its OUT, then `curate run` re-extracts it); nothing was "
                                            "exported and an earlier export is unchanged") from None  # fmt: skip
            yield r, data

    shards = []
    for k, group in enumerate(_groups(stream(), max_rows, max_bytes)):
        name = f"shard-{k:06d}.{'parquet' if fmt == 'parquet' else 'tar'}"
        tmp = out / f".{name}.tmp"
        if fmt == "parquet":
            recs = []
            for row, data in group:
                rec = dict(row)
                if embed:
                    rec[CLIP_BYTES] = data
                recs.append(rec)
            tbl = pa.Table.from_pylist(recs, schema=_export_schema(src_schema, embed))
            pq.write_table(tbl, tmp, compression="zstd" if not embed else "none")
        else:
            with tarfile.open(tmp, "w") as tar:
                for row, data in group:
                    key = member_key(row[schema.CLIP_ID])
                    members = {"json": json.dumps(_meta(row)).encode(), "txt": (row.get("caption") or "").encode()}
                    if embed:
                        members["mp4"] = data
                    for ext, payload in members.items():
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size = len(payload)
                        info.mtime = 0  # reproducible archives
                        tar.addfile(info, io.BytesIO(payload))
        os.replace(tmp, out / name)
        shards.append({"file": name, "rows": len(group), "bytes": (out / name).stat().st_size,
                       "first_clip_id": group[0][0][schema.CLIP_ID], "last_clip_id": group[-1][0][schema.CLIP_ID]})  # fmt: skip
    index = {"format": fmt, "embedded": embed, "rows": sum(s["rows"] for s in shards), "shards": shards, "source": str(path)}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return index


_SHARD_RE = re.compile(r"^shard-\d{6}\.(parquet|tar)$")


def _ours(name: str) -> bool:
    return bool(_SHARD_RE.match(name)) or name == INDEX_FILE or (name.startswith(".") and name.endswith(".tmp"))


def _claim(out: Path) -> Path:
    """OUT for an export: new, empty, or an earlier export holding only an export's files (it is
    replaced whole once the new one is complete, so no stale shard is left for a `*.tar` loader).
    Anything else is refused, as is a place inside a curate output."""
    from curate.storage import refuse_inside_output

    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {out}: exists and is not a directory")
    refuse_inside_output(str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.export-*"):  # a killed export's work
        shutil.rmtree(stale, ignore_errors=True)
    olds = sorted(out.parent.glob(f".{out.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not out.exists():
        olds.pop().rename(out)  # killed between the two renames of _swap_in: the previous export comes back
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)
    if out.is_dir():
        names = [p.name for p in out.iterdir()]
        if names and INDEX_FILE not in names:
            raise ValueError(f"-o {out}: not empty and not an earlier export (no {INDEX_FILE}); choose a new directory")
        foreign = [n for n in names if not _ours(n)]
        if foreign:
            raise ValueError(f"-o {out}: an earlier export that also holds {', '.join(sorted(foreign)[:3])}; move those "
                             "out or choose a new directory")  # fmt: skip
    return out


def _swap_in(new: Path, final: Path) -> None:
    """Put the complete export `new` at `final`, replacing an earlier one (two renames)."""
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        final.rename(old)
        new.rename(final)
        shutil.rmtree(old)
    else:
        new.rename(final)


def member_key(clip_id: str) -> str:
    """A tar member stem that is one plain name: no directories, no `..`, no dot (WebDataset
    splits key and extension at the first dot)."""
    key = re.sub(r"[^A-Za-z0-9_-]", "_", clip_id or "")
    return key or "_"


def _export_schema(src: pa.Schema, embed: bool) -> pa.Schema:
    fields = [f for f in src if f.name != schema.CLIP_EMBEDDING]
    if embed:
        fields.append(pa.field(CLIP_BYTES, pa.binary()))
    return pa.schema(fields)
