"""`curate dedup OUT... -o DIR`: near-duplicate groups over the clips of one or several OUTs.

Reads the committed shards (clip_id, phash columns, clip_embedding, duration), finds duplicate
pairs (curate.dedup: LSH over the perceptual hashes, verified; SemDeDup on the embeddings when
filled), and writes DIR/dedup.parquet, one row per clip: `dup_group` (the group's representative,
its smallest clip_id), `group_size`, `dup_distance` (hash distance F to the representative) and
`dup_cosine` (embedding cosine to it), plus DIR/dedup.json (parameters, counts).

A separate output rather than a step that rewrites OUT: grouping is a pure function of the
committed hashes, cheap next to decoding (a million clips in about a minute here), and spans
several OUTs, so "resuming" is re-running it; the files are written to a temp name and renamed,
so a killed run leaves the previous result or none, never half of one, and a rerun gives the same
bytes (idempotent). On Ray, the shards are read with Ray Data and each LSH table is a task.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from curate import registry, schema
from curate.dedup import N_CROPS, components, frame_distance, masks, semdedup_edges, table_edges
from curate.errors import UserError
from curate.params import Strict

DEDUP_FILE = "dedup.parquet"
SUMMARY_FILE = "dedup.json"
DUP_GROUP, GROUP_SIZE, DUP_DISTANCE, DUP_COSINE, OUT_COLUMN = "dup_group", "group_size", "dup_distance", "dup_cosine", "out"
COLUMNS = [schema.CLIP_ID, schema.DURATION_S, schema.PHASH_FRAMES, schema.PHASH_COLOR, schema.CLIP_EMBEDDING]


class DedupError(UserError, ValueError):
    pass


class DedupParams(Strict):
    max_mean: int = Field(8, ge=0, le=64, description="mean-frame hash distance (bits of 64, best crop)")
    max_frames: float = Field(10.0, ge=0, le=64, description="frame chamfer distance (bits of 64, best crop)")
    tables: int = Field(48, ge=1, le=512, description="LSH tables (more: higher recall, slower)")
    bits: int = Field(24, ge=8, le=48, description="bits per LSH key (more: fewer random candidates)")
    window: int = Field(8, ge=1, description="neighbours paired inside one bucket (sorted order)")
    max_color: float = Field(8.0, ge=0, le=255, description="mean chroma (Cb, Cr) difference at most (levels of 255)")
    max_group: float = Field(10.0, ge=0, le=64, description="a group member's frame distance to its representative at most")
    embedding: bool = Field(True, description="also group by clip_embedding (SemDeDup) where it is filled")
    eps: float = Field(0.03, gt=0, lt=1, description="SemDeDup: duplicates have cosine >= 1 - eps")
    seed: int = 0


def load(outs: list[str]) -> pa.Table:
    """The columns dedup needs from each OUT, with the OUT it came from."""
    from curate.dataset import open_out
    from curate.shards import read_shards

    tables = []
    for out in outs:
        store, _ = open_out(out)
        t = registry.conform(read_shards(out)).select(COLUMNS)
        tables.append(t.append_column(OUT_COLUMN, pa.array([store.uri] * t.num_rows, pa.string())))
    return pa.concat_tables(tables)


def hash_arrays(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows with hashes, mean (m, N_CROPS), frames (m, K, N_CROPS), colour (m, 3), NaN where
    unknown); shorter rows padded with their last frame, so padding never makes two clips closer."""
    lists = table.column(schema.PHASH_FRAMES).to_pylist()
    colors = table.column(schema.PHASH_COLOR).to_pylist() if schema.PHASH_COLOR in table.column_names else [None] * len(lists)
    rows = np.array([i for i, h in enumerate(lists) if h and len(h) >= 2 * N_CROPS and len(h) % N_CROPS == 0], np.int64)
    color = np.array([colors[i] if colors[i] and len(colors[i]) == 3 else [np.nan] * 3 for i in rows], np.float32).reshape(-1, 3)
    if not len(rows):
        return rows, np.zeros((0, N_CROPS), np.uint64), np.zeros((0, 1, N_CROPS), np.uint64), color
    k = max(len(lists[i]) // N_CROPS - 1 for i in rows)
    mean = np.empty((len(rows), N_CROPS), np.uint64)
    frames = np.empty((len(rows), k, N_CROPS), np.uint64)
    for r, i in enumerate(rows):
        h = np.asarray(lists[i], np.uint64).reshape(-1, N_CROPS)
        mean[r] = h[0]
        f = h[1:]
        frames[r, : len(f)] = f
        frames[r, len(f):] = f[-1]
    return rows, mean, frames, color


def hash_edges(mean: np.ndarray, frames: np.ndarray, p: DedupParams, executor: str = "local",
               address: str | None = None, color: np.ndarray | None = None) -> np.ndarray:
    """Verified duplicate pairs over all LSH tables (indices into mean/frames), sorted, unique."""
    ms = masks(p.tables, p.bits, p.seed)
    if not len(mean):
        return np.zeros((0, 2), np.int64)
    if executor == "ray":
        import ray

        from pipelines.graph import init_ray

        init_ray(address)
        mref, fref, cref = ray.put(mean), ray.put(frames), ray.put(color)
        task = ray.remote(num_cpus=1)(_table_task)
        parts = ray.get([task.remote(int(m), mref, fref, p.max_mean, p.max_frames, p.window, cref, p.max_color) for m in ms])
    else:
        parts = [table_edges(m, mean, frames, p.max_mean, p.max_frames, p.window, color, p.max_color) for m in ms]
    edges = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
    return np.unique(edges, axis=0) if len(edges) else edges


def _table_task(mask: int, mean: np.ndarray, frames: np.ndarray, max_mean: int, max_frames: float, window: int,
                color: np.ndarray | None, max_color: float) -> np.ndarray:
    return table_edges(mask, mean, frames, max_mean, max_frames, window, color, max_color)


def group(table: pa.Table, p: DedupParams, executor: str = "local", address: str | None = None) -> tuple[pa.Table, dict]:
    n = table.num_rows
    t0 = time.perf_counter()
    rows, mean, frames, color = hash_arrays(table)
    h_edges = hash_edges(mean, frames, p, executor, address, color)
    edges = [rows[h_edges]] if len(h_edges) else []
    t_hash = time.perf_counter() - t0
    emb_list = table.column(schema.CLIP_EMBEDDING).to_pylist()
    emb_rows = np.array([i for i, e in enumerate(emb_list) if e], np.int64)
    emb = None
    s_edges = np.zeros((0, 2), np.int64)
    if p.embedding and len(emb_rows) >= 2:
        emb = np.asarray([emb_list[i] for i in emb_rows], np.float32)
        s_edges = semdedup_edges(emb, p.eps, seed=p.seed)
        if len(s_edges):
            edges.append(emb_rows[s_edges])
    all_edges = np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)
    ids = table.column(schema.CLIP_ID).to_pylist()
    pos = np.full(n, -1, np.int64)
    pos[rows] = np.arange(len(rows))
    label = components(n, all_edges)
    rep = _stars(label, ids, pos, frames, p.max_group)
    label = rep  # a group is its representative's star
    size = np.bincount(label, minlength=n)[label]
    # distances to the representative, where both have hashes / embeddings
    dist = np.full(n, np.nan, np.float32)
    both = np.nonzero((pos >= 0) & (pos[rep] >= 0))[0]
    if len(both):
        dist[both] = frame_distance(frames, pos[both], pos[rep[both]])
    cos = np.full(n, np.nan, np.float32)
    if emb is not None:
        epos = np.full(n, -1, np.int64)
        epos[emb_rows] = np.arange(len(emb_rows))
        x = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        ok = np.nonzero((epos >= 0) & (epos[rep] >= 0))[0]
        cos[ok] = np.einsum("ij,ij->i", x[epos[ok]], x[epos[rep[ok]]])
    assessed = np.zeros(n, bool)
    assessed[rows] = True
    if emb is not None:
        assessed[emb_rows] = True
    out = pa.table({
        schema.CLIP_ID: ids, OUT_COLUMN: table.column(OUT_COLUMN),
        DUP_GROUP: pa.array([ids[rep[i]] if assessed[i] else None for i in range(n)], pa.string()),
        GROUP_SIZE: pa.array(np.where(assessed, size, 0).astype(np.int32)),
        DUP_DISTANCE: pa.array(dist, pa.float32(), mask=np.isnan(dist)),
        DUP_COSINE: pa.array(cos, pa.float32(), mask=np.isnan(cos)),
    })  # fmt: skip
    in_groups = (size > 1) & assessed
    n_groups = len(np.unique(label[in_groups]))
    summary = {
        "clips": n, "with_hashes": int(len(rows)), "with_embeddings": int(len(emb_rows)),
        "hash_pairs": int(len(h_edges)), "embedding_pairs": int(len(s_edges)),
        "groups_with_duplicates": n_groups, "clips_in_groups": int(in_groups.sum()),
        "removable": int(in_groups.sum()) - n_groups,
        "hash_seconds": round(t_hash, 3), "params": p.model_dump(mode="json"),
    }  # fmt: skip
    return out.sort_by(schema.CLIP_ID), summary


def _stars(label: np.ndarray, ids: list[str], pos: np.ndarray, frames: np.ndarray, max_group: float) -> np.ndarray:
    """Each clip's representative. A component's representative is its smallest clip_id; members
    farther than `max_group` from it (by hash; members without hashes stay) leave, and the
    leavers form groups the same way among themselves. Without this, one chance edge between two
    groups (two slides of one talk under the same logo) would merge them whole through the chain."""
    n = len(label)
    rep = np.arange(n)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(int(label[i]), []).append(i)
    todo = [m for m in members.values() if len(m) > 1]
    while todo:
        group = sorted(todo.pop(), key=lambda i: ids[i])
        r = group[0]
        hashed = [i for i in group[1:] if pos[i] >= 0] if pos[r] >= 0 else []
        far = set()
        if hashed:
            d = frame_distance(frames, pos[np.array(hashed)], np.full(len(hashed), pos[r]))
            far = {i for i, x in zip(hashed, d) if x > max_group}
        for i in group:
            if i not in far:
                rep[i] = r
        if len(far) > 1:
            todo.append(sorted(far))
    return rep


def run_dedup(outs: list[str], dest: str | Path, p: DedupParams, executor: str = "local", address: str | None = None) -> dict:
    if not outs:
        raise DedupError("no OUT given")
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise DedupError(f"-o {dest}: exists and is not a directory")
    from curate.storage import refuse_inside_output

    refuse_inside_output(str(dest))  # an OutError (a ValueError): one line from the CLI
    if dest.is_dir() and any(dest.iterdir()) and not (dest / SUMMARY_FILE).is_file():
        raise DedupError(f"-o {dest}: not empty and not a dedup output; choose a new directory")
    table = load(outs)
    result, summary = group(table, p, executor, address)
    summary["outs"] = list(outs)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".{DEDUP_FILE}.tmp"
    pq.write_table(result, tmp)
    os.replace(tmp, dest / DEDUP_FILE)  # the commit point: the whole result or the previous one
    tmp = dest / f".{SUMMARY_FILE}.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, dest / SUMMARY_FILE)
    return summary


def read_groups(path: str | Path) -> pa.Table:
    """DIR/dedup.parquet (or the file itself)."""
    p = Path(path)
    f = p / DEDUP_FILE if p.is_dir() else p
    if not f.is_file():
        raise DedupError(f"--dedup {path}: no {DEDUP_FILE} (run `curate dedup OUT -o {path}` first)")
    return pq.read_table(f)
