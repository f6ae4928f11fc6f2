"""Evaluation without pretrained networks: identical timesteps and noise for every model (so
numbers compare across runs), caption retrieval by denoising error, samples and their motion,
flicker and colour statistics against real clips."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from t2v.config import TrainConfig
from t2v.model import T2VModel

Clips = Callable[[dict], np.ndarray]  # a row -> its decoded clip, (F, 3, H, W) in [-1, 1] (the trainer caches them)


def eval_noise(cfg: TrainConfig, clip_id: str, shape):
    import torch

    seed = int(hashlib.sha1(f"{cfg.eval.noise_seed}:{clip_id}".encode()).hexdigest()[:8], 16)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def evaluate(model: T2VModel, rows: list[dict], clips: Clips, with_retrieval: bool = True) -> dict:
    """Per clip: denoising loss averaged over the fixed timestep grid, and the rank of its own
    caption among distractors by that loss (caption retrieval by denoising error). `model`: the
    trainer's EMA view (Trainer.ema_model)."""
    import torch

    cfg = model.cfg
    per_clip, ranks = {}, {}
    ts = torch.tensor(cfg.eval.timesteps, device=model.device)
    captions = [r["caption"] for r in rows]
    with torch.no_grad():
        for i, r in enumerate(rows):
            x0 = model.encode(torch.from_numpy(clips(r))[None].to(model.device)).repeat(len(ts), 1, 1, 1, 1)
            noise = eval_noise(cfg, r["clip_id"], x0.shape[1:]).to(model.device)[None].repeat(len(ts), 1, 1, 1, 1)
            own = model.loss(x0, [r["caption"]] * len(ts), ts, noise).mean().item()
            per_clip[r["clip_id"]] = own
            others = sorted({c for j, c in enumerate(captions) if j != i and c and c != r["caption"]})
            if with_retrieval and r["caption"] and others:
                pick = np.random.default_rng([cfg.eval.noise_seed, i]).permutation(len(others))[: cfg.eval.distractors]
                losses = [model.loss(x0, [others[k]] * len(ts), ts, noise).mean().item() for k in pick]
                ranks[r["clip_id"]] = 1 + sum(v < own for v in losses)
    out = {"loss": float(np.mean(list(per_clip.values()))) if per_clip else None, "per_clip": per_clip, "clips": len(per_clip)}
    if ranks:
        out["retrieval_top1"] = float(np.mean([v == 1 for v in ranks.values()]))
        out["retrieval_mean_rank"] = float(np.mean(list(ranks.values())))
    return out


def video_stats(frames: np.ndarray) -> dict:
    """(F, H, W, 3) uint8 -> flow (the project's flow scorer), flicker, colour statistics."""
    from scoring.flow import FlowParams, FlowScorer

    flow = FlowScorer(FlowParams(short_side=min(16, frames.shape[1])))
    flow.setup()
    f = frames.astype(np.float32)
    return {
        "flow": flow.score(frames, np.arange(len(frames)))["flow_mean"] if len(frames) > 1 else 0.0,
        "flicker": float(np.abs(np.diff(f.mean(axis=(1, 2, 3)))).mean()) if len(frames) > 1 else 0.0,
        "mean": float(f.mean() / 255), "std": float(f.std() / 255),
    }


def wasserstein(a: list[float], b: list[float]) -> float:
    """1-D earth mover's distance between two samples (quantile matching)."""
    if not a or not b:
        return float("nan")
    q = np.linspace(0, 1, 101)
    return float(np.abs(np.quantile(a, q) - np.quantile(b, q)).mean())


def write_samples(model: T2VModel, out: Path) -> dict:
    from PIL import Image

    from curate.synth import encode

    out.mkdir(parents=True, exist_ok=True)
    stats = []
    cfg = model.cfg
    for p, prompt in enumerate(cfg.sample.prompts):
        for seed in cfg.sample.seeds:
            v = model.sample(prompt, seed)
            stem = f"p{p}-s{seed}"
            bgr = v[..., ::-1]
            up = np.repeat(np.repeat(bgr, max(1, 128 // v.shape[1]), axis=1), max(1, 128 // v.shape[2]), axis=2)
            encode(str(out / f"{stem}.mp4"), np.ascontiguousarray(up), cfg.data.fps)
            frames = [Image.fromarray(f).resize((128, 128), Image.NEAREST) for f in v]
            frames[0].save(out / f"{stem}.gif", save_all=True, append_images=frames[1:], duration=int(1000 / cfg.data.fps), loop=0)
            stats.append({"prompt": prompt, "seed": seed, **video_stats(v)})
    (out / "prompts.json").write_text(json.dumps(stats, indent=2))
    return {"samples": stats}


def sample_distances(sample_stats: list[dict], rows: list[dict], clips: Clips) -> dict:
    """1-D Wasserstein distances of the samples' statistics to those of (up to 32) real clips."""
    real = []
    for r in rows[:32]:
        x = clips(r)
        real.append(video_stats(((x.transpose(0, 2, 3, 1) + 1) * 127.5).round().astype(np.uint8)))
    return {f"w1_{k}": wasserstein([s[k] for s in sample_stats], [s[k] for s in real]) for k in ("flow", "flicker", "mean", "std")}
