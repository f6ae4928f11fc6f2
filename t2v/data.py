"""Training data: rows from an OUT, a `curate select` subset or a `curate export`, clips decoded
with our decoder and cached; batches that are a function of (seed, step)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from curate.errors import UserError
from t2v.config import DataConfig


def load_rows(data: str | Path) -> list[dict]:
    """[{clip_id, caption, uri | bytes, start_frame, end_frame, fps}] from any curate output."""
    from curate import schema
    from curate.dataset import best_caption, read_rows
    from curate.sample import clip_frames

    rows = read_rows(data, "--data").to_pylist()  # an export: metadata now, clip bytes read lazily
    out = []
    for r in rows:
        if not (r.get("member") or r.get(schema.CLIP_URI)):
            continue
        out.append({"clip_id": r[schema.CLIP_ID], "caption": best_caption(r) or "", "uri": r.get(schema.CLIP_URI),
                    "member": r.get("member"), "n": clip_frames(r), "fps": r[schema.FPS]})  # fmt: skip
    if not out:
        if any(r.get(schema.CLIP_MODE) == "deferred" for r in rows):  # spans, no files: see datatools/export.py
            raise DataError(f"--data {data}: its clips are spans of a deferred run (no clip files): select a subset and "
                            "`curate export SUBSET -o DIR --materialize`, then train on DIR")  # fmt: skip
        raise DataError(f"--data {data}: no clips with a clip file ({len(rows)} rows): nothing to train or evaluate on")
    return sorted(out, key=lambda r: r["clip_id"])  # a stable order, whatever the source order


class DataError(UserError, ValueError):
    """Training data that cannot be used (missing, not curate's, empty)."""


def is_heldout(clip_id: str, frac: float) -> bool:
    return int(hashlib.sha1(clip_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < frac


def decode_clip(row: dict, frames: int, fps: float, size: int) -> np.ndarray:
    """(F, 3, size, size) float32 in [-1, 1]: F frames at `fps` from the clip start, centre crop."""
    import tempfile

    import cv2

    from curate.sample import decode_frames

    step = max(1.0, row["fps"] / fps)
    idx = [min(row["n"] - 1, int(round(k * step))) for k in range(frames)]
    if row.get("member"):  # an export with embedded clips: read just this clip's bytes
        from curate.dataset import read_member

        with tempfile.NamedTemporaryFile(suffix=".mp4") as fh:
            fh.write(read_member(row["member"]))
            fh.flush()
            got, _ = decode_frames(fh.name, set(idx), ["opencv", "pyav"])
    else:
        got, _ = decode_frames(row["uri"], set(idx), ["opencv", "pyav"])
    have = sorted(got)
    out = []
    for i in idx:  # a frame the decoder could not deliver: the nearest one before it (or the first)
        f = got[max((k for k in have if k <= i), default=have[0])]
        h, w = f.shape[:2]
        s = min(h, w)
        crop = f[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA))
    arr = np.stack(out).astype(np.float32) / 127.5 - 1.0
    return arr.transpose(0, 3, 1, 2)


class ClipSet:
    """Map-style dataset of decoded clips (with an in-memory cache for small sets)."""

    def __init__(self, rows: list[dict], cfg: DataConfig):
        self.rows, self.cfg = rows, cfg
        self._cache: dict[int, np.ndarray] = {}
        self._pending: dict = {}  # index -> Future of a background decode
        self._pool = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        if i in self._pending:
            return self._pending.pop(i).result()
        if i in self._cache:
            return self._cache[i]
        return self._decode_and_cache(i)

    def prefetch(self, indices: list[int]) -> None:
        """Decode the next step's clips in background threads (decoders release the GIL) while
        the current step trains; __getitem__ collects them."""
        if not self.cfg.workers:
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.cfg.workers, thread_name_prefix="decode")
        for i in indices:
            if i not in self._cache and i not in self._pending:
                self._pending[i] = self._pool.submit(self._decode_and_cache, i)

    def _decode_and_cache(self, i: int) -> np.ndarray:
        x = decode_clip(self.rows[i], self.cfg.frames, self.cfg.fps, self.cfg.size)
        if self.cfg.cache:
            self._cache[i] = x
        return x


def batch_indices(n: int, batch: int, seed: int, step: int) -> list[int]:
    """Rows of step `step`: epoch-wise permutations seeded by (seed, epoch). Stateless, so a
    resumed run draws exactly the batches an uninterrupted one would."""
    per_epoch = max(1, n // batch) if n >= batch else 1
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    if n < batch:
        return [int(perm[k % n]) for k in range(batch)]
    return [int(i) for i in perm[pos * batch:(pos + 1) * batch]]
