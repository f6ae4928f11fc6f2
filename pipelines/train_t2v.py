"""A minimal ModelScope-style text-to-video trainer, to compare curated subsets by training.

Read top to bottom: config -> data -> model -> train loop -> eval -> samples. nanoGPT-shaped: one
file, a `main(argv)`, a tiny preset that runs on a laptop CPU (the `train/tiny` recipe, curate/configs/train/tiny.yaml).

- Model: diffusers' UNet3DConditionModel, the ModelScope architecture (SD's 2D blocks inflated
  with temporal convolutions and temporal attention; any frame count, F=1 trains on images).
- Pixel space by default (no pretrained VAE can be had here; Show-1's base stage works in pixels
  at low resolution); `latent` mode encodes with a user-provided diffusers AutoencoderKL.
- Text: open_clip's bundled BPE tokenizer and a small transformer trained jointly from scratch,
  with caption dropout for classifier-free guidance.
- Determinism: the batch, the timesteps and the noise of step s are functions of (seed, s), so
  a resumed run sees exactly what an uninterrupted one would: same loss curve.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from curate.params import Strict

# ----------------------------------------------------------------------------------------------
# config


class DataConfig(Strict):
    frames: int = Field(8, ge=1)
    fps: float = Field(4.0, gt=0, description="frames are sampled at this rate from each clip")
    size: int = Field(32, ge=8, description="square crop side, pixels")
    holdout_frac: float = Field(0.15, ge=0, lt=1, description="clips held out for eval, by clip_id hash")
    image_share: float = Field(0.0, ge=0, le=1, description="share of steps trained on single frames (F=1)")
    image_alpha: float = Field(1.0, ge=0, description="loss weight of the image steps")
    cache: bool = Field(True, description="keep decoded clips in memory (small datasets)")
    workers: int = Field(0, ge=0, description="background decode threads (prefetch the next step)")


class ModelConfig(Strict):
    mode: Literal["pixel", "latent"] = "pixel"
    vae: str | None = Field(None, description="latent mode: a diffusers AutoencoderKL directory")
    block_out_channels: list[int] = Field(default_factory=lambda: [32, 64, 64])
    attention_from_level: int = Field(1, ge=0, description="levels below this have no attention (full-res attention is the cost)")
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 8


class TextConfig(Strict):
    encoder: Literal["scratch", "open_clip", "hf"] = Field(
        "scratch", description="scratch: trained jointly; open_clip / hf: a frozen, user-provided encoder"
    )
    path: str | None = Field(None, description="open_clip: a checkpoint file; hf: a local model directory")
    open_clip_model: str | None = Field(None, description="open_clip architecture name (with encoder: open_clip)")
    width: int = 64
    layers: int = 2
    heads: int = 4
    context: int = 32
    caption_dropout: float = Field(0.1, ge=0, le=1)


class DiffusionConfig(Strict):
    timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction: Literal["epsilon", "v_prediction"] = "epsilon"


class OptimConfig(Strict):
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    max_steps: int = 300
    batch_size: int = 8
    grad_accum: int = 1
    grad_clip: float = 1.0
    ema_decay: float = 0.99


class EvalConfig(Strict):
    every: int = Field(100, ge=1)
    timesteps: list[int] = Field(default_factory=lambda: [50, 200, 400, 600, 800, 950])
    noise_seed: int = 1234
    max_clips: int = 64
    distractors: int = 7
    extra_sets: dict[str, str] = Field(default_factory=dict, description="name -> DATA path of more eval clips")


class SampleConfig(Strict):
    prompts: list[str] = Field(default_factory=lambda: ["a moving texture", "text on screen"])
    seeds: list[int] = Field(default_factory=lambda: [0, 1])
    steps: int = 20
    guidance: float = 3.0


class TrainConfig(Strict):
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    log_every: int = 10
    ckpt_every: int = 100
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    from curate.config import load_model

    return load_model(TrainConfig, path, overrides)


# ----------------------------------------------------------------------------------------------
# data: rows from an OUT, a `curate select` subset or a `curate export`, decoded with our decoder


def load_rows(data: str | Path) -> list[dict]:
    """[{clip_id, caption, uri | bytes, start_frame, end_frame, fps}] from any curate output."""
    import pyarrow.parquet as pq

    from curate import schema

    p = Path(data)
    if not p.exists():
        raise DataError(f"--data {data}: no such file or directory")
    if (p / "index.json").is_file():
        from pipelines.export import index_samples

        rows = list(index_samples(p))  # metadata now; clip bytes read lazily from the shard
    elif (p / "subset.parquet").is_file():
        rows = pq.read_table(p / "subset.parquet").to_pylist()
    elif p.suffix == ".parquet":
        rows = pq.read_table(p).to_pylist()
    else:
        from curate.shards import COMMITS, MANIFEST_FILE, read_shards

        if not (p.is_dir() and ((p / MANIFEST_FILE).is_file() or (p / COMMITS).is_dir())):
            raise DataError(f"--data {data}: not a curate output, a `curate select` subset, an export or a .parquet")
        rows = read_shards(str(p)).to_pylist()
    out = []
    for r in rows:
        if not (r.get("member") or r.get(schema.CLIP_URI)):
            continue
        caption = r.get("caption")
        if caption is None:  # an OUT or a subset without a chosen caption: the best available one
            caption = next((r[c] for c in (schema.CAPTION_LLM, schema.CAPTION_COCA, schema.CAPTION_VBLIP) if r.get(c)), "")
        out.append({"clip_id": r[schema.CLIP_ID], "caption": caption or "", "uri": r.get(schema.CLIP_URI),
                    "member": r.get("member"), "n": r[schema.END_FRAME] - r[schema.START_FRAME], "fps": r[schema.FPS]})  # fmt: skip
    if not out:
        raise DataError(f"--data {data}: no clips with a clip file ({len(rows)} rows): nothing to train or evaluate on")
    return sorted(out, key=lambda r: r["clip_id"])  # a stable order, whatever the source order


class DataError(ValueError):
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
        from pipelines.export import read_member

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


# ----------------------------------------------------------------------------------------------
# model


def build_text_encoder(cfg: TextConfig):
    import torch
    from torch import nn

    class TextEncoder(nn.Module):
        """open_clip's BPE tokens -> a small transformer trained from scratch -> per-token states."""

        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(49408, cfg.width)
            self.pos = nn.Parameter(torch.zeros(cfg.context, cfg.width))
            layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0, batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(cfg.width)
            nn.init.normal_(self.tok.weight, std=0.02)
            nn.init.normal_(self.pos, std=0.01)

        def forward(self, tokens):
            return self.norm(self.blocks(self.tok(tokens) + self.pos[: tokens.shape[1]]))

    return TextEncoder()


def tokenize(captions: list[str], context: int):
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")(captions, context_length=context)


class FrozenText:
    """A user-provided text encoder, frozen: per-token states for cross-attention.

    open_clip: the text tower's token states after the final LayerNorm (as Stable Diffusion 2
    conditions on OpenCLIP); hf: `last_hidden_state` of a transformers encoder (CLIP text, T5 ...)."""

    def __init__(self, cfg: TextConfig, device: str):
        import torch

        self.cfg, self.device = cfg, device
        if not cfg.path or not os.path.exists(cfg.path):
            raise FileNotFoundError(f"text.encoder={cfg.encoder} needs text.path: a local checkpoint (got {cfg.path!r})")
        if cfg.encoder == "open_clip":
            import open_clip

            if not cfg.open_clip_model:
                raise ValueError("text.encoder=open_clip needs text.open_clip_model (an open_clip architecture name)")
            self.model = open_clip.create_model(cfg.open_clip_model, pretrained=cfg.path).to(device).eval()
            self.tokenizer = open_clip.get_tokenizer(cfg.open_clip_model)
            self.width = self.model.token_embedding.weight.shape[1]
        else:
            from transformers import AutoModel, AutoTokenizer

            model = AutoModel.from_pretrained(cfg.path, local_files_only=True)
            if hasattr(model, "text_model"):  # CLIP-style checkpoints: the text tower
                model = model.text_model
            elif model.config.is_encoder_decoder:  # T5-style: the encoder
                model = model.get_encoder()
            self.model = model.to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.path, local_files_only=True)
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self.width = model.config.hidden_size
        self.model.requires_grad_(False)
        self._torch = torch

    def __call__(self, captions: list[str]):
        torch = self._torch
        with torch.no_grad():
            if self.cfg.encoder == "open_clip":
                m = self.model
                tok = self.tokenizer(captions).to(self.device)
                x = m.token_embedding(tok) + m.positional_embedding[: tok.shape[1]]
                x = m.transformer(x, attn_mask=m.attn_mask)
                return m.ln_final(x).float()
            enc = self.tokenizer(captions, return_tensors="pt", padding="max_length", truncation=True,
                                 max_length=self.cfg.context).to(self.device)  # fmt: skip
            return self.model(**enc).last_hidden_state.float()


def build_unet(cfg: TrainConfig, channels: int, context_width: int):
    from diffusers import UNet3DConditionModel

    n = len(cfg.model.block_out_channels)
    plain = min(cfg.model.attention_from_level, n - 1)
    down = ["DownBlock3D"] * plain + ["CrossAttnDownBlock3D"] * (n - plain)
    return UNet3DConditionModel(
        sample_size=cfg.data.size, in_channels=channels, out_channels=channels,
        down_block_types=tuple(down),
        up_block_types=tuple(d.replace("Down", "Up") for d in reversed(down)),
        block_out_channels=tuple(cfg.model.block_out_channels), layers_per_block=cfg.model.layers_per_block,
        norm_num_groups=cfg.model.norm_num_groups, cross_attention_dim=context_width,
        attention_head_dim=cfg.model.attention_head_dim,
    )  # fmt: skip


class Trainer:
    def __init__(self, cfg: TrainConfig, rows: list[dict], run_dir: Path):
        import torch
        from diffusers import DDIMScheduler, DDPMScheduler

        self.cfg, self.run_dir = cfg, run_dir
        self.device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.device == "auto" else cfg.device)
        torch.manual_seed(cfg.seed)
        self.vae = None
        channels = 3
        if cfg.model.mode == "latent":
            from diffusers import AutoencoderKL

            if not cfg.model.vae or not Path(cfg.model.vae).is_dir():
                raise FileNotFoundError(f"model.mode=latent needs model.vae: a diffusers AutoencoderKL directory (got {cfg.model.vae!r})")
            self.vae = AutoencoderKL.from_pretrained(cfg.model.vae).to(self.device).eval().requires_grad_(False)
            channels = self.vae.config.latent_channels
        self.frozen_text = FrozenText(cfg.text, self.device) if cfg.text.encoder != "scratch" else None
        width = self.frozen_text.width if self.frozen_text else cfg.text.width
        self.unet = build_unet(cfg, channels, width).to(self.device)
        self.text = build_text_encoder(cfg.text).to(self.device) if not self.frozen_text else torch.nn.Identity()
        self.ema = copy.deepcopy(torch.nn.ModuleDict({"unet": self.unet, "text": self.text})).requires_grad_(False)
        params = list(self.unet.parameters()) + list(self.text.parameters())
        self.opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        o = cfg.optim
        warm = lambda s: min(1.0, (s + 1) / max(1, o.warmup_steps))  # noqa: E731
        cos = lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, max(0, s - o.warmup_steps) / max(1, o.max_steps - o.warmup_steps))))  # noqa: E731
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: warm(s) * (0.1 + 0.9 * cos(s)))
        d = cfg.diffusion
        self.noise_sched = DDPMScheduler(num_train_timesteps=d.timesteps, beta_schedule=d.beta_schedule, prediction_type=d.prediction)
        self.ddim = DDIMScheduler(num_train_timesteps=d.timesteps, beta_schedule=d.beta_schedule, prediction_type=d.prediction)
        self.train_rows = [r for r in rows if not is_heldout(r["clip_id"], cfg.data.holdout_frac)]
        self.eval_rows = [r for r in rows if is_heldout(r["clip_id"], cfg.data.holdout_frac)][: cfg.eval.max_clips]
        if not self.train_rows:
            raise DataError(f"no training clips: all {len(rows)} are held out (data.holdout_frac) or have no clip file")
        self.train_set = ClipSet(self.train_rows, cfg.data)
        self._latents: dict[int, "torch.Tensor"] = {}  # latent mode: each clip encoded once
        self.eval_cache: dict[str, np.ndarray] = {}
        self.step = 0
        self.forward = torch.compile(self.unet) if cfg.compile else self.unet

    # -- one step -------------------------------------------------------------------------------
    def encode(self, x):
        """(B, F, 3, H, W) in [-1, 1] -> the diffusion space (B, C, F, h, w)."""
        x = x.permute(0, 2, 1, 3, 4)
        if self.vae is None:
            return x
        import torch

        b, c, f, h, w = x.shape
        with torch.no_grad():
            lat = self.vae.encode(x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)).latent_dist.mode()
        lat = lat * self.vae.config.scaling_factor
        return lat.reshape(b, f, *lat.shape[1:]).permute(0, 2, 1, 3, 4)

    def decoded(self, row: dict) -> np.ndarray:
        """A held-out / reference clip, decoded once per run (evals and sample statistics reuse it)."""
        if row["clip_id"] not in self.eval_cache:
            self.eval_cache[row["clip_id"]] = decode_clip(row, self.cfg.data.frames, self.cfg.data.fps, self.cfg.data.size)
        return self.eval_cache[row["clip_id"]]

    def clip_latents(self, i: int):
        """Clip i in the diffusion space, (1, C, F, h, w). Latents are computed once and cached."""
        import torch

        if i in self._latents:
            return self._latents[i]
        z = self.encode(torch.from_numpy(self.train_set[i])[None].to(self.device))
        if self.vae is not None:
            self._latents[i] = z
        return z

    def context(self, captions: list[str], text=None):
        """Cross-attention states of the captions: the jointly trained encoder, or a frozen one."""
        if self.frozen_text is not None:
            return self.frozen_text(captions)
        return (text or self.text)(tokenize(captions, self.cfg.text.context).to(self.device))

    def loss_on(self, x0, captions: list[str], t, noise, unet=None, text=None):
        import torch

        unet, text = unet or self.forward, text or self.text
        xt = self.noise_sched.add_noise(x0, noise, t)
        target = noise if self.cfg.diffusion.prediction == "epsilon" else self.noise_sched.get_velocity(x0, noise, t)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.device == "cuda" else torch.autocast("cpu", enabled=False)
        with ctx:
            pred = unet(xt, t, encoder_hidden_states=self.context(captions, text)).sample
        return ((pred.float() - target) ** 2).mean(dim=(1, 2, 3, 4))

    def train_step(self) -> dict:
        import torch

        cfg = self.cfg
        # diffusers' 3D blocks hard-code dropout 0.1 in their temporal convolutions, which draws
        # from the global generator: seed it per step, or a resumed run would drift.
        torch.manual_seed(cfg.seed * 1_000_003 + self.step + 1)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
        rng = np.random.default_rng([cfg.seed, self.step, 7])
        image_step = rng.random() < cfg.data.image_share
        self.unet.train()
        self.text.train()
        total = 0.0
        for micro in range(cfg.optim.grad_accum):
            idx = batch_indices(len(self.train_set), cfg.optim.batch_size, cfg.seed, self.step * cfg.optim.grad_accum + micro)
            x0 = torch.cat([self.clip_latents(i) for i in idx])  # (B, C, F, h, w)
            if image_step:  # joint image-video training: one random frame per clip, F=1
                pick = torch.randint(0, x0.shape[2], (x0.shape[0],), generator=g)
                x0 = x0[torch.arange(x0.shape[0]), :, pick][:, :, None]
            captions = [self.train_rows[i]["caption"] if rng.random() >= cfg.text.caption_dropout else "" for i in idx]
            t = torch.randint(0, cfg.diffusion.timesteps, (x0.shape[0],), generator=g).to(self.device)
            noise = torch.randn(x0.shape, generator=g).to(self.device)
            loss = self.loss_on(x0, captions, t, noise).mean() * (cfg.data.image_alpha if image_step else 1.0)
            (loss / cfg.optim.grad_accum).backward()
            total += loss.item() / cfg.optim.grad_accum
        nxt = self.step + 1  # decode the next step's clips while this one finishes
        self.train_set.prefetch([i for m in range(cfg.optim.grad_accum)
                                 for i in batch_indices(len(self.train_set), cfg.optim.batch_size, cfg.seed, nxt * cfg.optim.grad_accum + m)])
        params = list(self.unet.parameters()) + list(self.text.parameters())
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        with torch.no_grad():
            live = dict(self.unet.named_parameters(prefix="unet")) | dict(self.text.named_parameters(prefix="text"))
            for name, p in self.ema.named_parameters():
                p.lerp_(live[name], 1 - cfg.optim.ema_decay)
        self.step += 1
        return {"step": self.step, "loss": total, "lr": self.sched.get_last_lr()[0], "grad_norm": float(gnorm),
                "frames": 1 if image_step else cfg.data.frames}  # fmt: skip

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        import torch

        state = {"config": self.cfg.model_dump(mode="json"), "step": self.step, "unet": self.unet.state_dict(),
                 "text": self.text.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
                 "sched": self.sched.state_dict()}  # fmt: skip
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load(self, path: Path, weights_only_init: bool = False) -> None:
        import torch

        state = torch.load(path, map_location=self.device, weights_only=True)
        self.unet.load_state_dict(state["unet"])
        self.text.load_state_dict(state["text"])
        self.ema.load_state_dict(state["ema"])
        if not weights_only_init:  # a resume: the optimiser, the schedule and the step too
            self.opt.load_state_dict(state["opt"])
            self.sched.load_state_dict(state["sched"])
            self.step = state["step"]


# ----------------------------------------------------------------------------------------------
# evaluation: identical timesteps and noise for every model, so numbers compare across runs


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


# ----------------------------------------------------------------------------------------------
# a small VAE for latent mode, trained on the same clips' frames (no pretrained one can be had)


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


# ----------------------------------------------------------------------------------------------
# main


def train(cfg: TrainConfig, data: str | Path, run_dir: str | Path, init_from: str | None = None,
          max_steps: int | None = None, samples: bool = True) -> dict:
    """Train (or resume RUN/ckpt.pt) to cfg.optim.max_steps (or `max_steps`, to stop early)."""
    run_dir = Path(run_dir)
    rows = load_rows(data)  # before creating anything: a mistyped --data leaves no directory behind
    if run_dir.exists() and not run_dir.is_dir():
        raise DataError(f"-o {run_dir}: exists and is not a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "ckpt.pt"
    if ckpt.exists():
        check_resumable(cfg, data, run_dir)  # before building anything
    tr = Trainer(cfg, rows, run_dir)
    if ckpt.exists():
        tr.load(ckpt)  # resume exactly where it stopped
    elif init_from:
        tr.load(Path(init_from), weights_only_init=True)  # warm start (e.g. a higher-res fine-tune)
    (run_dir / "config.json").write_text(json.dumps({"config": cfg.model_dump(mode="json"), "data": str(data)}, indent=2))
    stop = min(cfg.optim.max_steps, max_steps or cfg.optim.max_steps)
    eval_sets = {"heldout": tr.eval_rows} | {k: load_rows(v)[: cfg.eval.max_clips] for k, v in cfg.eval.extra_sets.items()}
    final_eval = None  # set when the loop itself reaches max_steps (a run resumed at the end has none)
    with open(run_dir / "metrics.jsonl", "a") as log:
        t0 = time.perf_counter()
        while tr.step < stop:
            rec = tr.train_step()
            if tr.step % cfg.log_every == 0 or tr.step == stop:
                rec["seconds"] = round(time.perf_counter() - t0, 3)
                log.write(json.dumps(rec) + "\n")
                log.flush()
            at_end = tr.step >= cfg.optim.max_steps
            if tr.step % cfg.eval.every == 0 or at_end:
                now = {k: evaluate(tr, v) for k, v in eval_sets.items() if v}
                log.write(json.dumps({"step": tr.step, "eval": {k: {m: x for m, x in e.items() if m != "per_clip"} for k, e in now.items()}}) + "\n")
                log.flush()
                final_eval = now if at_end else None  # the last step's evaluation is the result's too
            if tr.step % cfg.ckpt_every == 0 or tr.step == stop:
                tr.save(ckpt)
    result = {"step": tr.step}
    if tr.step >= cfg.optim.max_steps:
        ev = final_eval if final_eval is not None else {k: evaluate(tr, v) for k, v in eval_sets.items() if v}
        result["eval"] = ev
        if samples:
            s = write_samples(tr, run_dir / "samples")
            result["sample_distances"] = sample_distances(tr, s["samples"], tr.eval_rows or tr.train_rows)
        (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
    return result


# What may change between a run and its resume: where and how fast it runs, how often it logs,
# checkpoints and evaluates, where it stops, what it samples. Anything else changes the model.
RESUME_SAFE = ("device", "compile", "log_every", "ckpt_every", "optim.max_steps", "eval.every", "eval.extra_sets",
               "eval.max_clips", "sample.")  # fmt: skip


class ResumeMismatch(ValueError):
    pass


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumable(cfg: TrainConfig, data: str | Path, run_dir: Path) -> None:
    """Refuse to resume RUN with a config (or data) that differs in anything but RESUME_SAFE keys."""
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        return
    saved = json.loads(saved_path.read_text())
    old, new = _flat(saved.get("config", {})), _flat(cfg.model_dump(mode="json"))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k) and not k.startswith(RESUME_SAFE)]  # fmt: skip
    if saved.get("data") is not None and str(saved["data"]) != str(data):
        diffs.append(f"--data: {saved['data']} -> {data}")
    if diffs:
        raise ResumeMismatch(f"{run_dir} holds a run with another config ({'; '.join(diffs)}): resume with the same "
                             "settings, write to a new -o, or warm-start one with --init-from")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="curate train", description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--data", required=True, help="a curate OUT, a select subset or an export directory")
    ap.add_argument("-o", "--out", required=True, help="run directory (resumes when it holds ckpt.pt)")
    ap.add_argument("--init-from", help="checkpoint to warm-start from (weights only)")
    ap.add_argument("--set", action="append", default=[], help="override a config key")
    ap.add_argument("--max-steps", type=int, help="stop after this many steps (resume later)")
    args = ap.parse_args(argv)
    cfg = load_train_config(args.config, args.set)
    result = train(cfg, args.data, args.out, args.init_from, args.max_steps)
    print(json.dumps({k: v for k, v in result.items() if k != "eval"} | {"eval_loss": {k: e["loss"] for k, e in result.get("eval", {}).items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
