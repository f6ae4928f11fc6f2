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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from curate import schema
from curate.config import ClipsParams
from curate.dataset import CLIP_BYTES, INDEX_FILE, SUBSET_FILE


def _read_clip(uri: str) -> bytes:
    from curate.storage import is_remote

    if is_remote(uri):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(uri)
        with fs.open_input_stream(path) as fh:
            return fh.read()
    return Path(uri).read_bytes()


def _meta(row: dict) -> dict:
    """JSON-safe metadata of a row (embeddings and bytes left out)."""
    return {k: v for k, v in row.items() if k not in (CLIP_BYTES, schema.CLIP_EMBEDDING, schema.SAMPLES, schema.PREVIEW)}


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


@dataclass
class Materialize:
    """`--materialize`: encode the clip files of the subset's deferred rows (curate.deferred) into
    OUT/clips/, at the run's clip settings (`resize` off) or at `clips`' size and rate."""

    clips: ClipsParams | None = None  # encoder and size settings (default: the run's, from its OUT)
    resize: bool = False  # the size and rate of `clips`, not those the rows record
    executor: str = "local"  # or "ray"
    ray_address: str | None = None
    on_progress: Callable[[int, int], None] | None = None


def export(subset: str | Path, out: str | Path, fmt: Literal["parquet", "webdataset"] = "parquet",
           max_rows: int = 1000, max_bytes: int | None = None, embed: bool = True,
           materialize: Materialize | None = None, caption_template: str | None = None) -> dict:
    """`caption_template`: the training caption rewritten from the row's columns, scores and labels
    as conditions (Open-Sora's way), e.g. "{caption}. camera: {camera_motion}; motion: {object_motion:.2f}";
    recorded in index.json."""
    subset = Path(subset)
    path = subset / SUBSET_FILE if subset.is_dir() else subset
    if not path.is_file():
        raise FileNotFoundError(f"no subset at {path} (make one with `curate select`)")
    table = pq.read_table(path)
    if "caption" not in table.column_names:
        raise ValueError(f"{path} has no caption column: export a subset made by `curate select`")
    final = _claim(Path(out))
    rows = table.to_pylist()
    if materialize is None and embed and any(_deferred(r) for r in rows):
        raise ValueError(f"{path}: its clips were kept as spans (clips.mode deferred), with no file to export: add "
                         "--materialize to encode the ones this subset keeps")  # fmt: skip
    if caption_template is not None:
        rows = [{**r, "caption": _fill(caption_template, r)} for r in rows]
    extra: dict = {} if caption_template is None else {"caption_template": caption_template}  # index.json's too
    if materialize is not None:
        rows, refused = _materialize(rows, subset if subset.is_dir() else None, final / CLIPS_DIR, materialize)
        extra |= {"materialized": sum(1 for r in rows if r.get(schema.CLIP_MODE) == MATERIALIZED), "refused": refused}
    # Written aside and swapped in whole: a failure (a missing clip, a full disk, a kill) leaves
    # the previous export as it was, never a mix or a half.
    out = final.parent / f".{final.name}.export-{uuid.uuid4().hex[:8]}"
    out.mkdir()
    try:
        index = _write(rows, table.schema, out, fmt, max_rows, max_bytes, embed, path, extra)
        if materialize is not None and not embed and (final / CLIPS_DIR).is_dir():  # the shards name these files
            (final / CLIPS_DIR).rename(out / CLIPS_DIR)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    _swap_in(out, final)
    if embed:  # the clips are in the shards now
        shutil.rmtree(final / CLIPS_DIR, ignore_errors=True)
    return index


CLIPS_DIR = "clips"  # materialized clip files, OUT/clips/<video_id>/<clip_id>.mp4
MATERIALIZED = "exact"  # a materialized row's clip_mode: its file is what `exact` mode would have stored


def _materialize(rows: list[dict], subset: Path | None, clips_dir: Path, m: Materialize) -> tuple[list[dict], list[dict]]:
    """The rows with their deferred clips encoded (clip_uri, size and rate set), and those refused."""
    from curate.clips import ClipSpan, kept_count
    from pipelines.materialize import materialize

    params = m.clips or run_clips(subset) or ClipsParams(mode="exact")
    settings = json.dumps({"resize": m.resize, "clips": params.model_dump(mode="json")}, sort_keys=True)
    mark = clips_dir / ".settings.json"
    if clips_dir.is_dir() and (not mark.is_file() or mark.read_text() != settings):
        shutil.rmtree(clips_dir)  # clips of other settings (a re-export at another size): not these
    clips_dir.mkdir(parents=True, exist_ok=True)
    mark.write_text(settings)
    for work in clips_dir.glob("*/.materialize-*"):  # a killed materialization's unfinished encodes
        shutil.rmtree(work, ignore_errors=True)
    deferred = [r for r in rows if _deferred(r)]
    got = materialize(deferred, str(clips_dir), params, m.resize, m.executor, m.ray_address, m.on_progress)
    kept, refused = [], []
    for r in rows:
        res = got.get(r[schema.CLIP_ID]) if _deferred(r) else None
        if isinstance(res, Exception):
            refused.append({schema.CLIP_ID: r[schema.CLIP_ID], "reason": f"{type(res).__name__}: {res}"})
            continue
        if res is not None:
            path, geo = res
            r = {**r, schema.CLIP_URI: path, schema.CLIP_MODE: MATERIALIZED, schema.WIDTH: geo.width,
                 schema.HEIGHT: geo.height, schema.FPS: geo.fps,
                 schema.NUM_FRAMES: kept_count(ClipSpan(r[schema.START_FRAME], r[schema.END_FRAME]), geo.rate)}  # fmt: skip
        kept.append(r)
    return kept, refused


def _fill(template: str, row: dict) -> str:
    """The template with the row's values; a column it names that the row lacks, or that is null
    where a format needs a number, is an error naming it (never a caption with "None" in it)."""
    import string

    names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    for name in names:
        if name not in row:
            raise ValueError(f"--caption-template: no column {name!r} in the subset")
    for name in names:
        if row[name] is None:
            raise ValueError(f"--caption-template: clip {row[schema.CLIP_ID]} has no {name} (null); select it away first")
    return template.format_map(row)


def _deferred(row: dict) -> bool:
    return not row.get(schema.CLIP_URI) and row.get(schema.CLIP_MODE) == "deferred"


def run_clips(subset: Path | None) -> ClipsParams | None:
    """The clip settings of the run whose OUT the subset was selected from (its manifest), if it
    can be found: materialized clips are then encoded as that run would have."""
    from curate.dataset import open_out

    try:
        source = json.loads((subset / "funnel.json").read_text())["source"]
        return ClipsParams.model_validate({**open_out(source)[1]["config"]["clips"], "mode": "exact"})
    except (TypeError, OSError, ValueError, KeyError):  # (a DatasetError, pydantic's errors: ValueErrors)
        return None


def _write(rows: list[dict], src_schema: pa.Schema, out: Path, fmt: str, max_rows: int, max_bytes: int | None,
           embed: bool, path: Path, extra: dict | None = None) -> dict:
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
            recs = [{**row, CLIP_BYTES: data} if embed else row for row, data in group]
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
    index = {"format": fmt, "embedded": embed, "rows": sum(s["rows"] for s in shards), "shards": shards, "source": str(path),
             **(extra or {})}  # fmt: skip
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return index


_SHARD_RE = re.compile(r"^shard-\d{6}\.(parquet|tar)$")


def _ours(name: str) -> bool:
    return bool(_SHARD_RE.match(name)) or name in (INDEX_FILE, CLIPS_DIR) or (name.startswith(".") and name.endswith(".tmp"))


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
        if set(names) - {CLIPS_DIR} and INDEX_FILE not in names:  # (clips/ alone: a killed --materialize)
            raise ValueError(f"-o {out}: not empty and not an earlier export (no {INDEX_FILE}); choose a new directory")
        foreign = [n for n in names if not _ours(n)]
        if foreign:
            raise ValueError(f"-o {out}: an earlier export that also holds {', '.join(sorted(foreign)[:3])}; move those "
                             "out or choose a new directory")  # fmt: skip
    return out


def _swap_in(new: Path, final: Path) -> None:
    """Put the complete export `new` at `final`, replacing an earlier one (two renames)."""
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)  # (a kill before this: _claim removes it)


def member_key(clip_id: str) -> str:
    """A tar member stem that is one plain name: no directories, no `..`, no dot (WebDataset
    splits key and extension at the first dot)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", clip_id or "") or "_"


def _export_schema(src: pa.Schema, embed: bool) -> pa.Schema:
    fields = [f for f in src if f.name != schema.CLIP_EMBEDDING]
    if embed:
        fields.append(pa.field(CLIP_BYTES, pa.binary()))
    return pa.schema(fields)
