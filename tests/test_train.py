"""The trainer and the comparison, on tiny configs on CPU."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("diffusers", reason="the trainer needs the 'train' extra (diffusers, torch)")

from curate.synth import captioned_clips  # noqa: E402
from t2v.compare import bootstrap, elo, markdown, metric_games, vote_games  # noqa: E402
from t2v.train import Trainer, batch_indices, evaluate, load_rows, load_train_config, train  # noqa: E402

TINY = Path(__file__).parents[1] / "curate" / "configs" / "train" / "tiny.yaml"
FAST = [  # a smaller cousin of configs/train/tiny.yaml, for tests
    "data.frames=4", "data.size=16", "data.fps=4", "model.block_out_channels=[16, 32, 32]", "text.width=32",
    "text.layers=1", "text.heads=2", "text.context=16", "optim.batch_size=4", "optim.warmup_steps=5",
    "log_every=1", "eval.every=1000", "eval.distractors=3", "sample.prompts=[a red texture moving right]",
    "sample.seeds=[0]", "sample.steps=4", "ckpt_every=1000",
]  # fmt: skip


def subset(d: Path, rows: list[dict]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), d / "subset.parquet")
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("t2v")
    return {
        "clean": captioned_clips(str(d / "clips"), 24, "clean", seed=1),
        "static": captioned_clips(str(d / "clips"), 6, "static", seed=2),
        "text": captioned_clips(str(d / "clips"), 6, "text", seed=3),
        "clean_eval": captioned_clips(str(d / "clips"), 10, "clean", seed=4),
        "dir": d,
    }


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_loss_falls_when_overfitting(tmp_path, corpus):
    data = subset(tmp_path / "d", corpus["clean"][:4])
    cfg = load_train_config(TINY, [*FAST, "optim.max_steps=60", "data.holdout_frac=0", "text.caption_dropout=0"])
    result = train(cfg, data, tmp_path / "run")
    curve = losses(tmp_path / "run")
    assert len(curve) == 60 and all(np.isfinite(curve))
    assert np.mean(curve[-10:]) < 0.5 * np.mean(curve[:5])
    assert (tmp_path / "run" / "ckpt.pt").is_file() and result["step"] == 60
    assert sorted(p.suffix for p in (tmp_path / "run" / "samples").iterdir()) == [".gif", ".json", ".mp4"]


@pytest.mark.parametrize("frames, image_share", [(1, 0.0), (4, 0.5)])
def test_images_and_videos_both_train(tmp_path, corpus, frames, image_share):
    data = subset(tmp_path / "d", corpus["clean"][:6])
    cfg = load_train_config(TINY, [*FAST, "optim.max_steps=30", f"data.frames={frames}", f"data.image_share={image_share}",
                                   "data.holdout_frac=0"])  # fmt: skip
    train(cfg, data, tmp_path / "run", samples=False)
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    seen = {r["frames"] for r in recs if "frames" in r}
    assert seen == ({1} if frames == 1 else {1, 4})  # joint image-video steps mixed in
    curve = [r["loss"] for r in recs if "loss" in r]
    assert np.mean(curve[-5:]) < np.mean(curve[:5])


def test_resume_reproduces_the_loss_curve(tmp_path, corpus):
    data = subset(tmp_path / "d", corpus["clean"][:8])
    cfg = load_train_config(TINY, [*FAST, "optim.max_steps=24", "data.image_share=0.3"])
    train(cfg, data, tmp_path / "straight", samples=False)
    train(cfg, data, tmp_path / "resumed", max_steps=11, samples=False)  # stop early ("killed")
    train(cfg, data, tmp_path / "resumed", samples=False)  # same command again: resumes
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert len(a) == len(b) == 24
    assert np.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_eval_is_deterministic_and_shared_across_models(tmp_path, corpus):
    rows = load_rows(subset(tmp_path / "d", corpus["clean"][:6]))
    cfg = load_train_config(TINY, [*FAST, "data.holdout_frac=0"])
    tr = Trainer(cfg, rows, tmp_path)
    a, b = evaluate(tr.ema_model(), rows[:3], tr.decoded), evaluate(tr.ema_model(), rows[:3], tr.decoded)
    assert a == b and a["clips"] == 3 and "retrieval_top1" in a
    other = Trainer(cfg.model_copy(update={"seed": 5}), rows, tmp_path)  # another model: other numbers...
    c = evaluate(other.ema_model(), rows[:3], other.decoded)
    assert c["per_clip"] != a["per_clip"]


def test_batches_are_a_function_of_seed_and_step():
    assert batch_indices(10, 4, 0, 3) == batch_indices(10, 4, 0, 3)
    epoch = [i for s in range(2) for i in batch_indices(10, 4, 0, s)]
    assert len(set(epoch)) == 8  # no repeats within an epoch
    assert batch_indices(3, 4, 0, 0) and len(batch_indices(3, 4, 0, 0)) == 4


def test_elo_hand_computed():
    # one game, A beats B, from 1000/1000: E = 0.5, A +0.5, B -0.5 (K=1)
    assert elo([("A", "B", 1.0)], ["A", "B"], orderings=1) == {"A": 1000.5, "B": 999.5}
    # then B beats A: E_B = 1/(1+10^((1000.5-999.5)/400)) = 0.498561...
    r = elo([("A", "B", 1.0), ("B", "A", 1.0)], ["A", "B"], orderings=1, seed=0)
    e = 1 / (1 + 10 ** (1 / 400))
    order = np.random.default_rng(0).permutation(2)
    first_winner = "A" if order[0] == 0 else "B"
    assert r[first_winner] == pytest.approx(1000.5 - (1 - e))
    assert sum(r.values()) == pytest.approx(2000.0)  # zero-sum
    # a tie between equals changes nothing; averaging over orderings keeps the sum
    assert elo([("A", "B", 0.5)], ["A", "B"]) == {"A": 1000.0, "B": 1000.0}
    many = elo([("A", "B", 1.0)] * 30 + [("B", "A", 1.0)] * 10, ["A", "B"])
    assert many["A"] > 1000 > many["B"] and sum(many.values()) == pytest.approx(2000.0)


def test_games_votes_and_bootstrap(tmp_path):
    per_arm = {"a": np.array([0.1, 0.2, 0.3]), "b": np.array([0.2, 0.2, 0.1])}
    assert metric_games(per_arm) == [("a", "b", 1.0), ("a", "b", 0.5), ("a", "b", 0.0)]
    (tmp_path / "v.jsonl").write_text('{"a": "x", "b": "y", "winner": "y"}\n{"a": "x", "b": "y", "winner": "tie"}\n')
    assert vote_games(tmp_path / "v.jsonl") == [("x", "y", 0.0), ("x", "y", 0.5)]
    ci = bootstrap({"a": np.arange(100.0), "b": np.arange(100.0) + 1})
    assert ci["a"][1] < ci["a"][0] == 49.5 < ci["a"][2]
    assert ci["b"][0] - ci["a"][0] == pytest.approx(1.0)


@pytest.mark.slow
def test_compare_clean_arm_beats_the_defective_one(tmp_path, corpus):
    """The whole idea, controlled: same steps, batch, seeds; one arm's clips carry injected defects
    (static clips, text overlays). Evaluated on held-out clean clips, the clean arm must win."""
    from t2v.compare import compare

    clean = subset(tmp_path / "clean", corpus["clean"][:12])
    dirty = subset(tmp_path / "dirty", corpus["clean"][:6] + corpus["static"][:3] + corpus["text"][:3])
    clean_eval = subset(tmp_path / "clean_eval", corpus["clean_eval"])
    (tmp_path / "votes.jsonl").write_text('{"a": "clean", "b": "dirty", "winner": "clean"}\n')
    cfg = load_train_config(TINY, [*FAST, "optim.max_steps=50", "data.holdout_frac=0", "eval.max_clips=10"])
    board = compare(cfg, {"clean": str(clean), "dirty": str(dirty)}, tmp_path / "cmp", seeds=[0, 1],
                    eval_sets={"clean": str(clean_eval)}, votes=str(tmp_path / "votes.jsonl"))  # fmt: skip
    m = board["metrics"]["clean/denoise_loss"]
    assert m["clean"]["mean"] < m["dirty"]["mean"]
    assert board["elo"]["clean/denoise_loss"]["clean"] > 1000 > board["elo"]["clean/denoise_loss"]["dirty"]
    assert board["ranking"][0] == "clean"
    for arm in ("clean", "dirty"):
        lo, hi = m[arm]["ci95"]
        assert lo <= m[arm]["mean"] <= hi
        for seed in (0, 1):
            assert (tmp_path / "cmp" / "arms" / arm / f"seed-{seed}" / "eval.json").is_file()
    md = (tmp_path / "cmp" / "leaderboard.md").read_text()
    assert md == markdown(board) and "| 1 | clean |" in md


def test_latent_mode_with_a_trained_vae(tmp_path, corpus):
    from t2v.train import train_vae

    data = subset(tmp_path / "d", corpus["clean"][:6])
    cfg = load_train_config(TINY, [*FAST, "data.holdout_frac=0"])
    r = train_vae(cfg, data, tmp_path / "vae", steps=25)
    assert r["last_loss"] < r["first_loss"]
    lat = load_train_config(TINY, [*FAST, "data.holdout_frac=0", "model.mode=latent", f"model.vae={tmp_path / 'vae'}",
                                   "model.block_out_channels=[16, 32]", "optim.max_steps=8", "data.image_share=0.5"])  # fmt: skip
    train(lat, data, tmp_path / "run", samples=False)
    curve = losses(tmp_path / "run")
    assert len(curve) == 8 and all(np.isfinite(curve))
    tr = Trainer(lat, load_rows(data), tmp_path / "run")
    assert len(tr._latents) == 0 and tr.clip_latents(0).shape == (1, 4, 4, 8, 8)  # 16 px / 2 -> 8, cached
    assert len(tr._latents) == 1
    assert tr.ema_model().sample("a red texture", 0).shape == (4, 16, 16, 3)


def test_background_decode_gives_the_same_run(tmp_path, corpus):
    data = subset(tmp_path / "d", corpus["clean"][:8])
    cfg = load_train_config(TINY, [*FAST, "optim.max_steps=6", "data.cache=false"])
    train(cfg, data, tmp_path / "inline", samples=False)
    train(cfg.model_copy(update={"data": cfg.data.model_copy(update={"workers": 2})}), data, tmp_path / "threads", samples=False)
    assert losses(tmp_path / "inline") == losses(tmp_path / "threads")


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_trains_from_an_export_reading_clips_lazily(tmp_path, corpus, fmt):
    from datatools.export import export

    data = subset(tmp_path / "d", corpus["clean"][:6])
    export(data, tmp_path / "exp", fmt, max_rows=4)
    rows = load_rows(tmp_path / "exp")
    assert len(rows) == 6 and all(r["member"] and r["uri"] for r in rows)
    assert rows == sorted(rows, key=lambda r: r["clip_id"])
    cfg = load_train_config(TINY, [*FAST, "optim.max_steps=3", "data.holdout_frac=0"])
    train(cfg, tmp_path / "exp", tmp_path / "run", samples=False)
    assert len(losses(tmp_path / "run")) == 3
    # the clip decoded from the export's bytes is the clip decoded from its file
    from t2v.train import decode_clip

    r = rows[0]
    assert np.array_equal(decode_clip(r, 4, 4.0, 16), decode_clip({**r, "member": None}, 4, 4.0, 16))


@pytest.mark.parametrize("encoder", ["hf", "open_clip"])
def test_frozen_user_text_encoder(tmp_path, corpus, encoder):
    import torch

    from tests import tiny_models

    if encoder == "hf":
        sets = ["text.encoder=hf", f"text.path={tiny_models.llm(tmp_path)}"]
    else:
        _, ckpt = tiny_models.open_clip_model(tmp_path, "tiny-clip", tiny_models.CLIP_CFG)
        sets = ["text.encoder=open_clip", f"text.path={ckpt}", "text.open_clip_model=tiny-clip"]
    data = subset(tmp_path / "d", corpus["clean"][:6])
    cfg = load_train_config(TINY, [*FAST, "optim.max_steps=3", "data.holdout_frac=0", *sets])
    tr = Trainer(cfg, load_rows(data), tmp_path)
    before = [p.clone() for p in tr.model.frozen_text.model.parameters()]
    for _ in range(3):
        rec = tr.train_step()
        assert np.isfinite(rec["loss"])
    assert all(torch.equal(a, b) for a, b in zip(before, tr.model.frozen_text.model.parameters()))  # frozen
    assert tr.model.context(["a red texture"]).shape[-1] == 32  # the encoder's width drives cross-attention


def test_resume_with_another_config_is_refused_naming_the_keys(tmp_path, corpus):
    from typer.testing import CliRunner

    from curate_cli.main import app
    from t2v.train import ResumeMismatch

    data = subset(tmp_path / "d", corpus["clean"][:6])
    cfg = load_train_config(TINY, [*FAST, "optim.max_steps=6", "data.holdout_frac=0"])
    train(cfg, data, tmp_path / "run", max_steps=3, samples=False)
    changed = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"lr": 1e-2}), "seed": 7})
    with pytest.raises(ResumeMismatch, match=r"optim\.lr: 0\.0003 -> 0\.01; seed: 0 -> 7"):
        train(changed, data, tmp_path / "run", samples=False)
    r = CliRunner().invoke(app, ["train", str(TINY), "--data", str(data), "-o", str(tmp_path / "run"),
                                 *[x for s in [*FAST, "optim.max_steps=6", "data.holdout_frac=0", "seed=7"] for x in ("--set", s)]])  # fmt: skip
    assert r.exit_code == 2 and "seed: 0 -> 7" in r.output and "Traceback" not in r.output
    # where it stops and how often it logs may change: extending the run is a resume
    longer = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"max_steps": 8}), "log_every": 2})
    assert train(longer, data, tmp_path / "run", samples=False)["step"] == 8


def test_the_last_step_is_evaluated_once(tmp_path, corpus, monkeypatch):
    import t2v.train as t2v

    calls = []
    real = t2v.evaluate
    monkeypatch.setattr(t2v, "evaluate", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    data = subset(tmp_path / "d", corpus["clean"][:8])
    cfg = load_train_config(TINY, [*FAST, "optim.max_steps=4", "eval.every=2"])
    result = train(cfg, data, tmp_path / "run", samples=False)
    evals = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").open() if '"eval"' in line]
    assert evals == [2, 4] and len(calls) == 2 and "heldout" in result["eval"]
