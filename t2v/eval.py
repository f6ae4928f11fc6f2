"""Evaluation without pretrained networks: identical timesteps and noise for every model (so
numbers compare across runs), caption retrieval by denoising error, samples and their motion,
flicker and colour statistics against real clips."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from t2v.config import TrainConfig

if TYPE_CHECKING:
    from t2v.train import Trainer


def eval_noise(cfg: TrainConfig, clip_id: str, shape) -> "torch.Tensor":  # noqa: F821
    import torch

    seed = int(hashlib.sha1(f"{cfg.eval.noise_seed}:{clip_id}".encode()).hexdigest()[:8], 16)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def evaluate(tr: Trainer, rows: list[dict], with_retrieval: bool = True) -> dict:
    """Per clip: EMA-model denoising loss averaged over the fixed timestep grid, and the rank of
    its own caption among distractors by that loss (caption retrieval by denoising error)."""
    import torch

    cfg = tr.cfg
    unet, text = tr.ema["unet"].eval(), tr.ema["text"].eval()
    per_clip, ranks = {}, {}
    ts = torch.tensor(cfg.eval.timesteps, device=tr.device)
    captions = [r["caption"] for r in rows]
    with torch.no_grad():
        for i, r in enumerate(rows):
            x = torch.from_numpy(tr.decoded(r))[None].to(tr.device)
            x0 = tr.encode(x).repeat(len(ts), 1, 1, 1, 1)
            noise = eval_noise(cfg, r["clip_id"], x0.shape[1:]).to(tr.device)[None].repeat(len(ts), 1, 1, 1, 1)
            own = tr.loss_on(x0, [r["caption"]] * len(ts), ts, noise, unet, text).mean().item()
            per_clip[r["clip_id"]] = own
            others = sorted({c for j, c in enumerate(captions) if j != i and c and c != r["caption"]})
            if with_retrieval and r["caption"] and others:
                pick = np.random.default_rng([cfg.eval.noise_seed, i]).permutation(len(others))[: cfg.eval.distractors]
                losses = [tr.loss_on(x0, [others[k]] * len(ts), ts, noise, unet, text).mean().item() for k in pick]
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


@np.errstate(all="ignore")
def sample(tr: Trainer, prompt: str, seed: int) -> np.ndarray:
    """DDIM with classifier-free guidance from the EMA model -> (F, H, W, 3) uint8."""
    import torch

    cfg = tr.cfg
    unet, text = tr.ema["unet"].eval(), tr.ema["text"].eval()
    channels = unet.config.in_channels
    size = cfg.data.size if tr.vae is None else cfg.data.size // (2 ** (len(tr.vae.config.block_out_channels) - 1))
    x = torch.randn((1, channels, cfg.data.frames, size, size), generator=torch.Generator().manual_seed(seed)).to(tr.device)
    tr.ddim.set_timesteps(cfg.sample.steps)
    with torch.no_grad():
        cond = tr.context([prompt, ""], text)
        for t in tr.ddim.timesteps:
            out = unet(torch.cat([x, x]), t.to(tr.device), encoder_hidden_states=cond).sample
            c, u = out.chunk(2)
            x = tr.ddim.step(u + cfg.sample.guidance * (c - u), t, x).prev_sample
        if tr.vae is not None:
            b, ch, f, h, w = x.shape
            x = tr.vae.decode(x.permute(0, 2, 1, 3, 4).reshape(f, ch, h, w) / tr.vae.config.scaling_factor).sample[None].permute(0, 2, 1, 3, 4)
    v = ((x[0].permute(1, 2, 3, 0).float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
    return v


def write_samples(tr: Trainer, out: Path) -> dict:
    from PIL import Image

    from curate.synth import encode

    out.mkdir(parents=True, exist_ok=True)
    stats = []
    for p, prompt in enumerate(tr.cfg.sample.prompts):
        for seed in tr.cfg.sample.seeds:
            v = sample(tr, prompt, seed)
            stem = f"p{p}-s{seed}"
            bgr = v[..., ::-1]
            up = np.repeat(np.repeat(bgr, max(1, 128 // v.shape[1]), axis=1), max(1, 128 // v.shape[2]), axis=2)
            encode(str(out / f"{stem}.mp4"), np.ascontiguousarray(up), tr.cfg.data.fps)
            frames = [Image.fromarray(f).resize((128, 128), Image.NEAREST) for f in v]
            frames[0].save(out / f"{stem}.gif", save_all=True, append_images=frames[1:], duration=int(1000 / tr.cfg.data.fps), loop=0)
            stats.append({"prompt": prompt, "seed": seed, **video_stats(v)})
    (out / "prompts.json").write_text(json.dumps(stats, indent=2))
    return {"samples": stats}


def sample_distances(tr: Trainer, sample_stats: list[dict], rows: list[dict]) -> dict:
    real = []
    for r in rows[:32]:
        x = tr.decoded(r)
        real.append(video_stats(((x.transpose(0, 2, 3, 1) + 1) * 127.5).round().astype(np.uint8)))
    return {f"w1_{k}": wasserstein([s[k] for s in sample_stats], [s[k] for s in real]) for k in ("flow", "flicker", "mean", "std")}
