"""The trainer's typed config (YAML + `--set`, unknown keys refused)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from curate.params import Strict


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
