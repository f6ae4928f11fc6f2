"""Compare curated subsets by training small models on them, as SVD's Stage II did.

Every arm trains with the same config, steps, batch and seeds (several seeds per arm); every
model is evaluated on the same eval sets (the union of the arms' held-out clips, plus any given
set), with the same timesteps and noise. Arms are then ranked:
- per metric, paired bootstrap 95% intervals over eval clips (clips resampled jointly for all
  arms, so the intervals of a difference are honest);
- an Elo rating from pairwise per-clip comparisons (SVD's method: K=1, start 1000, averaged over
  1000 shuffled orderings of the games). Judges are pluggable: the automatic metrics, and a file
  of human votes (JSON lines {"a": ARM, "b": ARM, "winner": ARM | "tie"}).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from pipelines.train_t2v import TrainConfig, is_heldout, load_rows, train


def elo(games: list[tuple[str, str, float]], players: list[str], k: float = 1.0, start: float = 1000.0,
        orderings: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean Elo over shuffled orderings. A game is (a, b, score of a: 1 win, 0.5 tie, 0 loss)."""
    rng = np.random.default_rng(seed)
    totals = dict.fromkeys(players, 0.0)
    for _ in range(orderings):
        r = dict.fromkeys(players, start)
        for i in rng.permutation(len(games)):
            a, b, s = games[i]
            e = 1.0 / (1.0 + 10 ** ((r[b] - r[a]) / 400.0))
            r[a] += k * (s - e)
            r[b] -= k * (s - e)
        for p in players:
            totals[p] += r[p]
    return {p: totals[p] / orderings for p in players}


def bootstrap(per_arm: dict[str, np.ndarray], n: int = 1000, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """(mean, lo, hi) per arm; the same resampled clip indices for every arm (paired)."""
    arms = list(per_arm)
    m = len(next(iter(per_arm.values())))
    idx = np.random.default_rng(seed).integers(0, m, size=(n, m))
    out = {}
    for a in arms:
        means = per_arm[a][idx].mean(axis=1)
        out[a] = (float(per_arm[a].mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))
    return out


def metric_games(per_arm: dict[str, np.ndarray], lower_is_better: bool = True) -> list[tuple[str, str, float]]:
    games = []
    for a, b in itertools.combinations(sorted(per_arm), 2):
        for x, y in zip(per_arm[a], per_arm[b]):
            if x == y:
                s = 0.5
            else:
                s = 1.0 if (x < y) == lower_is_better else 0.0
            games.append((a, b, s))
    return games


def vote_games(path: str | Path) -> list[tuple[str, str, float]]:
    games = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        v = json.loads(line)
        s = 0.5 if v["winner"] == "tie" else (1.0 if v["winner"] == v["a"] else 0.0)
        games.append((v["a"], v["b"], s))
    return games


def compare(cfg: TrainConfig, arms: dict[str, str], out: str | Path, seeds: list[int],
            eval_sets: dict[str, str] | None = None, votes: str | None = None) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # The shared eval pool: every arm's held-out clips (held out by clip_id hash, so a clip held
    # out in one arm is held out in all: no arm trains on it).
    pool: dict[str, dict] = {}
    for data in arms.values():
        for r in load_rows(data):
            if is_heldout(r["clip_id"], cfg.data.holdout_frac):
                pool[r["clip_id"]] = r
    sets = dict(eval_sets or {})
    if pool:
        (out / "eval" / "pool").mkdir(parents=True, exist_ok=True)
        rows = [{"clip_id": r["clip_id"], "clip_uri": r["uri"], "start_frame": 0, "end_frame": r["n"], "fps": r["fps"],
                 "caption": r["caption"]} for r in pool.values() if r["uri"]]  # fmt: skip
        pq.write_table(pa.Table.from_pylist(rows), out / "eval" / "pool" / "subset.parquet")
        sets.setdefault("pool", str(out / "eval" / "pool"))
    runs: dict[str, list[dict]] = {}
    for name, data in arms.items():
        for seed in seeds:
            arm_cfg = cfg.model_copy(deep=True)
            arm_cfg.seed = seed
            arm_cfg.eval.extra_sets = sets
            runs.setdefault(name, []).append(train(arm_cfg, data, out / "arms" / name / f"seed-{seed}"))
    board: dict = {"arms": list(arms), "seeds": seeds, "eval_sets": sets, "metrics": {}, "elo": {}}
    games_all: list[tuple[str, str, float]] = []
    for set_name in sets:
        clips = sorted(set.intersection(*[set(r["eval"][set_name]["per_clip"]) for rs in runs.values() for r in rs]))
        per_arm = {a: np.array([np.mean([r["eval"][set_name]["per_clip"][c] for r in rs]) for c in clips]) for a, rs in runs.items()}
        if not clips:
            continue
        ci = bootstrap(per_arm)
        board["metrics"][f"{set_name}/denoise_loss"] = {a: {"mean": m, "ci95": [lo, hi]} for a, (m, lo, hi) in ci.items()}
        games = metric_games(per_arm)
        board["elo"][f"{set_name}/denoise_loss"] = elo(games, list(arms))
        games_all += games
        for a, rs in runs.items():  # retrieval: mean over seeds
            vals = [r["eval"][set_name].get("retrieval_top1") for r in rs if r["eval"][set_name].get("retrieval_top1") is not None]
            if vals:
                board["metrics"].setdefault(f"{set_name}/retrieval_top1", {})[a] = {"mean": float(np.mean(vals)), "seeds": vals}
    for a, rs in runs.items():
        for key in (rs[0].get("sample_distances") or {}):
            vals = [r["sample_distances"][key] for r in rs]
            board["metrics"].setdefault(f"samples/{key}", {})[a] = {"mean": float(np.mean(vals)), "seeds": vals}
    if votes:
        vg = vote_games(votes)
        board["elo"]["human_votes"] = elo(vg, list(arms))
        games_all += vg
    board["elo"]["overall"] = elo(games_all, list(arms)) if games_all else {}
    board["ranking"] = sorted(arms, key=lambda a: -board["elo"]["overall"].get(a, 0))
    (out / "leaderboard.json").write_text(json.dumps(board, indent=2))
    (out / "leaderboard.md").write_text(markdown(board))
    return board


def markdown(board: dict) -> str:
    lines = ["| rank | arm | Elo (overall) | " + " | ".join(board["metrics"]) + " |",
             "|---|---|---|" + "---|" * len(board["metrics"])]  # fmt: skip
    for i, a in enumerate(board["ranking"], 1):
        cells = []
        for m in board["metrics"].values():
            v = m.get(a)
            if v is None:
                cells.append("")
            elif "ci95" in v:
                cells.append(f"{v['mean']:.4f} [{v['ci95'][0]:.4f}, {v['ci95'][1]:.4f}]")
            else:
                cells.append(f"{v['mean']:.4f}")
        lines.append(f"| {i} | {a} | {board['elo']['overall'].get(a, float('nan')):.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nLower is better for losses and distances; intervals are paired bootstrap 95% over eval clips.\n"
