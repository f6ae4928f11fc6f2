"""The networks: text encoders (trained from scratch on open_clip's BPE tokens, or frozen
user-provided ones) and diffusers' UNet3DConditionModel (the ModelScope architecture)."""

from __future__ import annotations

import os

from t2v.config import TextConfig, TrainConfig


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
