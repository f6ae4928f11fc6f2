"""A small VAE for latent mode, trained on the same clips' frames (no pretrained one can be had)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from t2v.config import TrainConfig
from t2v.data import ClipSet, batch_indices, is_heldout, load_rows


def train_vae(cfg: TrainConfig, data: str | Path, out: str | Path, steps: int = 500, lr: float = 1e-3,
              kl_weight: float = 1e-4, block_out_channels: tuple[int, ...] = (32, 64), latent_channels: int = 4) -> dict:
    """Train a diffusers AutoencoderKL (reconstruction + KL) on frames of DATA; save_pretrained to OUT."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed)
    rows = [r for r in load_rows(data) if not is_heldout(r["clip_id"], cfg.data.holdout_frac)]
    frames = ClipSet(rows, cfg.data)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
                        up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
                        block_out_channels=block_out_channels, layers_per_block=1, norm_num_groups=8,
                        sample_size=cfg.data.size)  # fmt: skip
    opt = torch.optim.AdamW(vae.parameters(), lr=lr)
    log = []
    for step in range(steps):
        idx = batch_indices(len(frames), cfg.optim.batch_size, cfg.seed, step)
        x = torch.from_numpy(np.concatenate([frames[i] for i in idx]))  # every frame is an image
        g = torch.Generator().manual_seed(cfg.seed * 7919 + step)
        x = x[torch.randperm(len(x), generator=g)[: cfg.optim.batch_size * 4]]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        loss = torch.nn.functional.mse_loss(rec, x) + kl_weight * post.kl().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        log.append(loss.item())
    # scale latents to unit variance for diffusion, as SD does with its scaling factor
    with torch.no_grad():
        z = torch.cat([vae.encode(torch.from_numpy(frames[i])).latent_dist.mode() for i in range(min(16, len(frames)))])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    vae.save_pretrained(out)
    return {"steps": steps, "first_loss": log[0], "last_loss": float(np.mean(log[-10:])), "scaling_factor": float(1.0 / z.std())}
