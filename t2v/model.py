"""The model: diffusers' UNet3DConditionModel (the ModelScope architecture), a text encoder
(trained from scratch on open_clip's BPE tokens, or a frozen user-provided one), an optional VAE,
and the diffusion around them: `T2VModel` owns encode, loss and sample, as a diffusers pipeline or
nanoGPT's GPT does; the trainer owns only the optimisation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from t2v.config import TextConfig, TrainConfig


class T2VModel:
    def __init__(self, cfg: TrainConfig, device: str):
        import torch
        from diffusers import DDIMScheduler, DDPMScheduler

        self.cfg, self.device = cfg, device
        torch.manual_seed(cfg.seed)
        self.vae = None
        channels = 3
        if cfg.model.mode == "latent":
            from diffusers import AutoencoderKL

            if not cfg.model.vae or not Path(cfg.model.vae).is_dir():
                raise FileNotFoundError(f"model.mode=latent needs model.vae: a diffusers AutoencoderKL directory (got {cfg.model.vae!r})")
            self.vae = AutoencoderKL.from_pretrained(cfg.model.vae).to(device).eval().requires_grad_(False)
            channels = self.vae.config.latent_channels
        self.frozen_text = FrozenText(cfg.text, device) if cfg.text.encoder != "scratch" else None
        width = self.frozen_text.width if self.frozen_text else cfg.text.width
        self.unet = build_unet(cfg, channels, width).to(device)
        self.text = build_text_encoder(cfg.text).to(device) if not self.frozen_text else torch.nn.Identity()
        d = cfg.diffusion
        self.noise_sched = DDPMScheduler(num_train_timesteps=d.timesteps, beta_schedule=d.beta_schedule, prediction_type=d.prediction)
        self.ddim = DDIMScheduler(num_train_timesteps=d.timesteps, beta_schedule=d.beta_schedule, prediction_type=d.prediction)

    def with_weights(self, unet, text) -> "T2VModel":
        """The same model with other weights of the same shapes (the EMA's): a view, no copy."""
        view = object.__new__(T2VModel)
        view.__dict__ = {**self.__dict__, "unet": unet, "text": text}
        return view

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

    def context(self, captions: list[str]):
        """Cross-attention states of the captions: the jointly trained encoder, or a frozen one."""
        if self.frozen_text is not None:
            return self.frozen_text(captions)
        return self.text(tokenize(captions, self.cfg.text.context).to(self.device))

    def loss(self, x0, captions: list[str], t, noise, unet=None):
        """Per-sample denoising loss at timesteps `t` (`unet`: e.g. a compiled forward of self.unet)."""
        import torch

        xt = self.noise_sched.add_noise(x0, noise, t)
        target = noise if self.cfg.diffusion.prediction == "epsilon" else self.noise_sched.get_velocity(x0, noise, t)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.device == "cuda" else torch.autocast("cpu", enabled=False)
        with ctx:
            pred = (unet or self.unet)(xt, t, encoder_hidden_states=self.context(captions)).sample
        return ((pred.float() - target) ** 2).mean(dim=(1, 2, 3, 4))

    @np.errstate(all="ignore")
    def sample(self, prompt: str, seed: int) -> np.ndarray:
        """DDIM with classifier-free guidance -> (F, H, W, 3) uint8."""
        import torch

        cfg, unet = self.cfg, self.unet.eval()
        self.text.eval()
        size = cfg.data.size if self.vae is None else cfg.data.size // (2 ** (len(self.vae.config.block_out_channels) - 1))
        shape = (1, unet.config.in_channels, cfg.data.frames, size, size)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(self.device)
        self.ddim.set_timesteps(cfg.sample.steps)
        with torch.no_grad():
            cond = self.context([prompt, ""])
            for t in self.ddim.timesteps:
                out = unet(torch.cat([x, x]), t.to(self.device), encoder_hidden_states=cond).sample
                c, u = out.chunk(2)
                x = self.ddim.step(u + cfg.sample.guidance * (c - u), t, x).prev_sample
            if self.vae is not None:
                b, ch, f, h, w = x.shape
                x = self.vae.decode(x.permute(0, 2, 1, 3, 4).reshape(f, ch, h, w) / self.vae.config.scaling_factor).sample[None].permute(0, 2, 1, 3, 4)
        return ((x[0].permute(1, 2, 3, 0).float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()


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
