"""Near-duplicate clips: candidate pairs by LSH over perceptual hashes, exact verification,
connected components; and SemDeDup-style grouping on clip embeddings.

Hashes (scoring/phash.py): per clip, the pHash of its mean frame and of each sampled frame, each
under CROPS (the full frame and five crops), so a cropped re-upload matches its original on the
crop that lines up. Two clips are duplicates when their mean chroma differs by at most `max_color` (pHash sees luma
only) and
  D = min Hamming(full mean-frame hash of one, any crop of the other's mean frame) <= max_mean, and
  F = symmetric chamfer over the sampled frames (each frame's best match among the other clip's
      frames and crops, averaged) <= max_frames;
F is the distance reported. Calibrated on generated re-uploads of real clips (tests/test_dedup.py,
bench/README.md).

Scale: exact comparison is n^2, so candidates come from bit-sampling LSH (Indyk & Motwani):
`tables` tables, each keyed on a fixed random mask of `bits` of the 64 bits; a clip enters each
table under all its mean-frame crop hashes and a pair is a candidate when one clip's full hash
shares a key with any of the other's. Inside a bucket only the next `window` entries in sorted
order are paired, so a degenerate bucket (ten thousand black clips share one hash) costs linear
time and still ends up one component through the chain. Each table is an independent task (a Ray
task on a cluster, a loop in-process): the same function, so both give the same edges.
"""

from __future__ import annotations

import numpy as np

CROPS = ((0.0, 0.0, 1.0, 1.0), (0.04, 0.04, 0.96, 0.96), (0.0, 0.0, 0.93, 0.93), (0.07, 0.0, 1.0, 0.93),
         (0.0, 0.07, 0.93, 1.0), (0.07, 0.07, 1.0, 1.0))  # fmt: skip  (x0, y0, x1, y1) as shares
N_CROPS = len(CROPS)


def popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x)


def masks(tables: int, bits: int, seed: int = 0) -> np.ndarray:
    """One 64-bit mask of `bits` random bits per table (fixed by the seed: reproducible keys)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(tables, np.uint64)
    for t in range(tables):
        for b in rng.choice(64, size=bits, replace=False):
            out[t] |= np.uint64(1) << np.uint64(int(b))
    return out


def mean_distance(mean: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """D for pairs (a[i], b[i]); `mean` is (n, N_CROPS) uint64, column 0 the full frame."""
    ab = popcount(mean[a, :1] ^ mean[b, :]).min(axis=1)
    ba = popcount(mean[b, :1] ^ mean[a, :]).min(axis=1)
    return np.minimum(ab, ba).astype(np.int32)


def frame_distance(frames: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """F for pairs; `frames` is (n, K, N_CROPS) uint64 (K sampled frames, padded by repetition)."""
    out = np.empty(len(a), np.float32)
    for s in range(0, len(a), 4096):  # (chunk, K, K, crops) popcounts at a time
        fa, fb = frames[a[s:s + 4096]], frames[b[s:s + 4096]]
        ab = popcount(fa[:, :, None, :1] ^ fb[:, None, :, :]).min(axis=(2, 3)).mean(axis=1)
        ba = popcount(fb[:, :, None, :1] ^ fa[:, None, :, :]).min(axis=(2, 3)).mean(axis=1)
        out[s:s + 4096] = 0.5 * (ab + ba)
    return out


_CHROMA = np.array([[-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32)  # BT.601 Cb, Cr


def color_distance(color: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Largest difference of the clips' mean chroma (Cb, Cr of their mean R, G, B; 0..255 scale).
    Chroma, not RGB: a crop that drops a slide's white border changes its mean brightness by 25
    levels but its hue by under 5, while test cards of one layout in grey, red and green differ
    by 17 and more. NaN colours (unknown) count as 0."""
    ch = color @ _CHROMA.T
    return np.nan_to_num(np.abs(ch[a] - ch[b]).max(axis=1), nan=0.0)


def table_edges(mask: np.ndarray | int, mean: np.ndarray, frames: np.ndarray, max_mean: int, max_frames: float,
                window: int = 8, color: np.ndarray | None = None, max_color: float = 255.0) -> np.ndarray:
    """Verified duplicate pairs (m, 2) int64, i < j, found through one LSH table."""
    masked = (mean & np.uint64(mask)).ravel()  # entry e = clip e // N_CROPS, crop e % N_CROPS
    # Sort (key, entry) packed in one uint64 instead of an argsort (2-3x faster at millions): the
    # key is the masked hash mixed down to 32 bits (Fibonacci hashing; a rare false share of a key
    # is only an extra candidate, which verification drops).
    key32 = (masked * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    packed = np.sort((key32 << np.uint64(32)) | np.arange(len(masked), dtype=np.uint64))
    sk = packed >> np.uint64(32)
    order = (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
    pairs = []
    for d in range(1, window + 1):
        same = np.nonzero(sk[d:] == sk[:-d])[0]
        if not len(same):
            break
        e1, e2 = order[same], order[same + d]
        full = (e1 % N_CROPS == 0) | (e2 % N_CROPS == 0)  # one side's full hash meets the other's crop
        c1, c2 = e1[full] // N_CROPS, e2[full] // N_CROPS
        keep = c1 != c2
        pairs.append(np.stack([np.minimum(c1, c2)[keep], np.maximum(c1, c2)[keep]], axis=1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    cand = np.unique(np.concatenate(pairs).astype(np.int64), axis=0)
    if not len(cand):
        return cand
    ok = mean_distance(mean, cand[:, 0], cand[:, 1]) <= max_mean
    if color is not None:
        ok &= color_distance(color, cand[:, 0], cand[:, 1]) <= max_color
    cand = cand[ok]
    ok = frame_distance(frames, cand[:, 0], cand[:, 1]) <= max_frames
    return cand[ok]


def components(n: int, edges: np.ndarray) -> np.ndarray:
    """Component label per node: the smallest node index in its component."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(edges):
        return np.arange(n)
    g = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, label = connected_components(g, directed=False)
    first = np.full(label.max() + 1, n, np.int64)
    np.minimum.at(first, label, np.arange(n))
    return first[label]


def semdedup_edges(emb: np.ndarray, eps: float, clusters: int | None = None, seed: int = 0,
                   iters: int = 20) -> np.ndarray:
    """SemDeDup (Abbas et al. 2023): k-means on the normalised embeddings, then within each
    cluster the pairs with cosine >= 1 - eps. Returns edges (m, 2), i < j."""
    n = len(emb)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    x = emb.astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = clusters or max(1, int(round(np.sqrt(n / 2))))
    rng = np.random.default_rng(seed)
    centres = x[rng.choice(n, size=min(k, n), replace=False)]
    for _ in range(iters):
        assign = np.argmax(x @ centres.T, axis=1)
        new = np.zeros_like(centres)
        np.add.at(new, assign, x)
        norms = np.linalg.norm(new, axis=1, keepdims=True)
        empty = norms[:, 0] == 0
        new[~empty] /= norms[~empty]
        new[empty] = centres[empty]
        if np.allclose(new, centres):
            break
        centres = new
    assign = np.argmax(x @ centres.T, axis=1)
    edges = []
    for c in np.unique(assign):
        idx = np.nonzero(assign == c)[0]
        if len(idx) < 2:
            continue
        for s in range(0, len(idx), 2048):  # a cluster's similarity matrix in row blocks
            sim = x[idx[s:s + 2048]] @ x[idx].T
            i, j = np.nonzero(sim >= 1.0 - eps)
            i = idx[s + i]
            j = idx[j]
            keep = i < j
            edges.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(edges).astype(np.int64) if edges else np.zeros((0, 2), np.int64)
