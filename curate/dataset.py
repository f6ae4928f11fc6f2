"""What is at this path, and its rows: the one opener every verb asks.

curate writes five kinds of thing, each recognised by its own mark:
- an OUT (`curate run`): `manifest.json` holding `curate_version`, `_curate` or `_commits/`;
- a subset (`curate select`): `subset.parquet` (and `funnel.json`);
- an export (`curate export`): `index.json` and its shards;
- a training run (`curate train`): `config.json` and `ckpt.pt`;
- a lone `.parquet` file (a subset or shard someone moved).
`what_is` names the kind; `open_out` opens an OUT with its manifest (or says in one line why it
cannot); `read_rows` reads the clip rows of any of them. Also the caption preference, and the
reader of the export format (the writer is datatools/export.py; the trainer reads it).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from curate import schema
from curate.errors import UserError
from curate.shards import MANIFEST_FILE, MARKER_FILE
from curate.storage import OutputStore, is_output_dir, is_remote

OUT, SUBSET, EXPORT, TRAIN_RUN, PARQUET = "out", "subset", "export", "train_run", "parquet"
MISSING = "missing"  # nothing at all at the path
SUBSET_FILE = "subset.parquet"
INDEX_FILE = "index.json"
CLIP_BYTES = "clip_bytes"
TRAIN_CONFIG, TRAIN_CHECKPOINT = "config.json", "ckpt.pt"
# the training caption where no `curate select` chose one: the merged caption, then the
# video-language model's, then the image captioner's, then BLIP-2's over frames (also the CLIP
# scorer's default order)
CAPTION_PREFERENCE = (schema.CAPTION_LLM, schema.CAPTION_VLM, schema.CAPTION_COCA, schema.CAPTION_VBLIP)


class DatasetError(UserError, ValueError):
    """A path that is not the kind of curate data a verb needs (one line for the CLI)."""


def what_is(path: str | Path) -> str | None:
    """The kind of curate data at `path` (an OUT on object storage too): one of the kinds above,
    MISSING, or None for something curate did not write."""
    path, p = str(path), Path(path)
    if is_remote(path):
        store = OutputStore(path, create=False)
        return OUT if store.exists(MANIFEST_FILE) or store.exists(MARKER_FILE) else PARQUET if path.endswith(".parquet") else None
    if not p.exists():
        return MISSING
    if p.is_file():
        return PARQUET if p.suffix == ".parquet" else None
    marks = {SUBSET: (p / SUBSET_FILE).is_file(), EXPORT: (p / INDEX_FILE).is_file(),
             TRAIN_RUN: (p / TRAIN_CONFIG).is_file() and (p / TRAIN_CHECKPOINT).is_file(), OUT: is_output_dir(path)}  # fmt: skip
    return next((kind for kind, here in marks.items() if here), None)


def open_out(path: str, flag: str = "") -> tuple[OutputStore, dict]:
    """(OUT's store, its manifest) for a finished curate output, or DatasetError saying why not."""
    name = f"{flag} {path}".strip()
    store = OutputStore(path, create=False)
    if not store.exists(MANIFEST_FILE):
        raise DatasetError(f"{name} has no {MANIFEST_FILE}: not a curate output, or no run has finished on it")
    try:
        manifest = json.loads(store.read_bytes(MANIFEST_FILE))
        assert isinstance(manifest, dict) and "curate_version" in manifest and "counts" in manifest
        assert isinstance(manifest.get("config"), dict)
    except (ValueError, AssertionError, OSError):
        raise DatasetError(f"{name}/{MANIFEST_FILE} is not a curate manifest: not a curate output") from None
    return store, manifest


def read_rows(path: str | Path, flag: str = "", kinds: tuple[str, ...] = (OUT, SUBSET, EXPORT, PARQUET)) -> pa.Table:
    """The clip rows at `path` (committed rows of an OUT; an export without its clip bytes: each
    row's `member` says where they are, see read_member), or DatasetError naming `flag`."""
    kind, name = what_is(path), f"{flag} {path}".strip()
    names = {OUT: "a curate output", SUBSET: "a `curate select` subset", EXPORT: "an export", PARQUET: "a .parquet"}
    wanted = " or ".join(names[k] for k in kinds)
    if kind not in kinds:
        raise DatasetError(f"{name}: {'no such file or directory, so ' if kind == MISSING else ''}not {wanted}")
    if kind == OUT:
        from curate.shards import read_shards

        return read_shards(str(path))
    if kind == EXPORT:
        return _typed(list(index_samples(path)))
    file = Path(path, SUBSET_FILE) if kind == SUBSET else path
    return pq.read_table(file)


def _typed(records: list[dict]) -> pa.Table:
    """Records as a table, the shard columns typed as the schema says (a pHash is a uint64, which
    inference would take for an int64 and overflow on)."""
    from curate.registry import clip_schema

    known = {f.name: f.type for f in clip_schema()}
    names = dict.fromkeys(k for r in records for k in r)
    return pa.table({n: pa.array([r.get(n) for r in records], known.get(n)) for n in names})


def best_caption(row: dict) -> str | None:
    """The caption `select` chose, else the first present in CAPTION_PREFERENCE."""
    if row.get("caption") is not None:
        return row["caption"]
    return next((row[c] for c in CAPTION_PREFERENCE if row.get(c)), None)


# --- the export format, read back ----------------------------------------------------------------
def index_samples(directory: str | Path) -> Iterator[dict]:
    """Metadata of every sample of an export, without its clip bytes: each record's `member`
    says where the bytes are (tar offset and size, or parquet shard and row), for read_member.
    A loader can hold millions of these; the bytes are read one clip at a time."""
    directory = Path(directory)
    index = json.loads((directory / INDEX_FILE).read_text())
    for shard in index["shards"]:
        p = directory / shard["file"]
        if index["format"] == "parquet":
            pf = pq.ParquetFile(p)
            cols = [c for c in pf.schema_arrow.names if c != CLIP_BYTES]
            for i, rec in enumerate(pf.read(columns=cols).to_pylist()):
                rec["member"] = {"parquet": str(p), "row": i} if index["embedded"] else None
                yield rec
        else:
            with tarfile.open(p) as tar:
                members: dict[str, dict[str, tarfile.TarInfo]] = {}
                for m in tar.getmembers():
                    key, ext = m.name.rsplit(".", 1)
                    members.setdefault(key, {})[ext] = m
                for key, parts in members.items():
                    rec = json.loads(tar.extractfile(parts["json"]).read())
                    rec["caption"] = tar.extractfile(parts["txt"]).read().decode() or None
                    mp4 = parts.get("mp4")
                    rec["member"] = {"tar": str(p), "offset": mp4.offset_data, "size": mp4.size} if mp4 else None
                    yield rec


_parquet_shard: dict[str, list] = {}


def read_member(member: dict) -> bytes:
    """The clip bytes a record of index_samples points at."""
    if "tar" in member:
        with open(member["tar"], "rb") as fh:
            fh.seek(member["offset"])
            return fh.read(member["size"])
    path = member["parquet"]
    if path not in _parquet_shard:  # keep one shard's clip column: sequential readers hit it
        _parquet_shard.clear()
        _parquet_shard[path] = pq.read_table(path, columns=[CLIP_BYTES]).column(CLIP_BYTES).to_pylist()
    return _parquet_shard[path][member["row"]]


def iter_samples(directory: str | Path) -> Iterator[dict]:
    """Read an export back: dicts with the metadata, `caption` and `clip_bytes` (when embedded)."""
    for rec in index_samples(directory):
        member = rec.pop("member")
        if member is not None:
            rec[CLIP_BYTES] = read_member(member)
        yield rec
