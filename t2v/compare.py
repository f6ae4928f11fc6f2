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

from t2v.train import TrainConfig, is_heldout, load_rows, train


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
    return [(a, b, 0.5 if x == y else float((x < y) == lower_is_better))
            for a, b in itertools.combinations(sorted(per_arm), 2) for x, y in zip(per_arm[a], per_arm[b])]


def vote_games(path: str | Path) -> list[tuple[str, str, float]]:
    """(a, b, score of a) per human vote: 1 a won, 0 b won, 0.5 a tie. A skip is no game, nor
    is a vote whose winner is neither arm; a line that is not a vote is refused, naming the line."""
    from t2v.vote import read_votes

    return [(v["a"], v["b"], 0.5 if v["winner"] == "tie" else float(v["winner"] == v["a"]))
            for v in read_votes(Path(path), strict=True) if v["winner"] in ("tie", v["a"], v["b"])]


def compare(cfg: TrainConfig, arms: dict[str, str], out: str | Path, seeds: list[int],
            eval_sets: dict[str, str] | None = None, votes: str | None = None) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.storage import refuse_inside_output

    out = Path(out)
    refuse_inside_output(str(out))  # an OutError (a ValueError): one line from the CLI
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
    games_all = _judge(board, runs)
    return rank(out, board, games_all, votes)


def rank(out: Path, board: dict, games_auto: list[tuple[str, str, float]], votes: str | None) -> dict:
    """The automatic judges' Elo, and the human votes as a judge of their own (win rate with a
    bootstrap CI over votes, Elo), whether the two agree, and the overall ranking."""
    arms = board["arms"]
    board["elo"]["automatic"] = elo(games_auto, list(arms)) if games_auto else {}
    games_all = list(games_auto)
    board.pop("human", None)
    if votes and Path(votes).is_file():
        vg = [g for g in vote_games(votes) if g[0] in arms and g[1] in arms]
        if vg:
            board["elo"]["human_votes"] = elo(vg, list(arms))
            board["human"] = {"votes": len(vg), "win_rate": vote_win_rates(vg, list(arms))}
            games_all += vg
            auto, human = board["elo"]["automatic"], board["elo"]["human_votes"]
            if auto:
                pairs = list(itertools.combinations(arms, 2))
                same = [(auto[a] > auto[b]) == (human[a] > human[b]) for a, b in pairs]
                board["human"]["agreement"] = {"pairs_same_order": sum(same), "pairs": len(pairs),
                                               "same_top": max(auto, key=auto.get) == max(human, key=human.get)}  # fmt: skip
    board["elo"]["overall"] = elo(games_all, list(arms)) if games_all else {}
    board["ranking"] = sorted(arms, key=lambda a: -board["elo"]["overall"].get(a, 0))
    (out / "leaderboard.json").write_text(json.dumps(board, indent=2))
    (out / "leaderboard.md").write_text(markdown(board))
    return board


def vote_win_rates(games: list[tuple[str, str, float]], arms: list[str], n: int = 1000, seed: int = 0) -> dict:
    """Per arm: the share of its voted games it won (ties half), with a 95% bootstrap interval
    over the votes."""
    g = np.array([(arms.index(a), arms.index(b), s) for a, b, s in games], float)
    idx = np.random.default_rng(seed).integers(0, len(g), size=(n, len(g)))
    out = {}
    for k, arm in enumerate(arms):
        score = np.where(g[:, 0] == k, g[:, 2], np.where(g[:, 1] == k, 1.0 - g[:, 2], np.nan))
        if np.all(np.isnan(score)):
            continue
        boot = np.nanmean(score[idx], axis=1)  # a resample holding none of the arm's games is NaN
        out[arm] = {"mean": float(np.nanmean(score)), "ci95": [float(np.nanpercentile(boot, 2.5)), float(np.nanpercentile(boot, 97.5))],
                    "games": int((~np.isnan(score)).sum())}  # fmt: skip
    return out


def rerank(out: str | Path, votes: str | None = None) -> dict:
    """Rank a finished compare again (new votes) from its stored evaluations: nothing retrains."""
    out = Path(out)
    try:
        old = json.loads((out / "leaderboard.json").read_text())
    except (OSError, ValueError):
        raise FileNotFoundError(f"{out}: no leaderboard.json (not a finished `curate compare` output)") from None
    runs = {a: [json.loads(p.read_text()) for p in sorted((out / "arms" / a).glob("seed-*/eval.json"))] for a in old["arms"]}
    board = {k: old[k] for k in ("arms", "seeds", "eval_sets")} | {"metrics": {}, "elo": {}}
    games = _judge(board, runs)
    return rank(out, board, games, votes if votes else (str(out / "votes.jsonl") if (out / "votes.jsonl").is_file() else None))


def markdown(board: dict) -> str:
    human = board.get("human")
    judges = ["Elo (overall)", "Elo (automatic)"] + (["Elo (human votes)", "human win rate [95% CI]"] if human else [])
    lines = ["| rank | arm | " + " | ".join(judges) + " | " + " | ".join(board["metrics"]) + " |",
             "|---|---|" + "---|" * (len(judges) + len(board["metrics"]))]  # fmt: skip
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
        elo_cells = [f"{board['elo']['overall'].get(a, float('nan')):.1f}", f"{board['elo'].get('automatic', {}).get(a, float('nan')):.1f}"]
        if human:
            w = human["win_rate"].get(a)
            elo_cells += [f"{board['elo']['human_votes'].get(a, float('nan')):.1f}",
                          f"{w['mean']:.2f} [{w['ci95'][0]:.2f}, {w['ci95'][1]:.2f}]" if w else ""]  # fmt: skip
        lines.append(f"| {i} | {a} | " + " | ".join(elo_cells) + " | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n\nLower is better for losses and distances; intervals are paired bootstrap 95% over eval clips.\n"
    if human:
        ag = human.get("agreement")
        text += f"\nHuman votes: {human['votes']} (`curate vote`)"
        if ag:
            text += (f"; they order {ag['pairs_same_order']} of {ag['pairs']} arm pairs as the automatic judges do, "
                     f"and {'agree' if ag['same_top'] else 'disagree'} on the best arm")
        text += ".\n"
    return text


def _judge(board: dict, runs: dict[str, list[dict]]) -> list[tuple[str, str, float]]:
    """The automatic judges: per eval set, per-clip losses (bootstrap CI, Elo games), retrieval,
    sample statistics; fills board["metrics"] and board["elo"], returns the games."""
    arms = board["arms"]
    games_all: list[tuple[str, str, float]] = []
    for set_name in board["eval_sets"]:
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
    return games_all
