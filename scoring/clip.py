"""CLIP image-text similarity, the clip embedding, and a LAION-style aesthetic score.

open_clip encodes a few frames of the clip; their normalised mean is the clip's embedding.
`clip_sim` is its cosine with the clip's caption (the first present of `caption_columns`: so
this stage runs after the captioners; null when no caption exists). `aesthetic_score` is a
LAION aesthetic predictor head (an MLP, or a linear probe, on the normalised image embedding,
as LAION trained it), loaded from a local file. `clip_embedding` is stored as float16 for dedup.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate import schema
from curate.dataset import CAPTION_PREFERENCE
from curate.models import ModelRef
from curate.params import ModelParams
from curate.sample import SamplePlan
from curate.stage import StageBase, frames_for


class ClipParams(ModelParams):
    model: str = "ViT-L-14"
    pretrained: str | None = Field("openai", description="open_clip tag, or a local checkpoint file")
    model_config_path: str | None = Field(None, description="open_clip model config JSON for custom architectures")
    aesthetic_head: str | None = Field(None, description="LAION aesthetic predictor weights (.pth/.safetensors)")
    caption_columns: list[str] = Field(default_factory=lambda: list(CAPTION_PREFERENCE))
    frames: int = Field(3, ge=1)
    embedding: bool = True


def load_aesthetic_head(path: str):
    """LAION's predictor (improved-aesthetic-predictor: Linear/Dropout stack under `layers.N`) or
    its older linear probe (`weight`, `bias`); the architecture is read off the weight names."""
    import torch
    from torch import nn

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    if set(state) == {"weight", "bias"}:
        head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
        head.load_state_dict(state)
        return head.eval()
    idx = sorted({int(k.split(".")[1]) for k in state if k.startswith("layers.") and k.endswith(".weight")})
    if not idx:
        raise ValueError(f"{path}: not a LAION aesthetic head (expected layers.N.weight or weight/bias)")
    modules: list[nn.Module] = []
    for i in range(idx[-1] + 1):
        if i in idx:
            w = state[f"layers.{i}.weight"]
            modules.append(nn.Linear(w.shape[1], w.shape[0]))
        else:
            modules.append(nn.Identity())  # the Dropouts: identity at inference
    head = nn.Sequential()
    head.layers = nn.Sequential(*modules)
    head.load_state_dict(state)
    return head.eval()


class ClipScorer(StageBase):
    name: ClassVar[str] = "clip"
    order: ClassVar[int] = 90  # last: it scores the captions
    Params: ClassVar[type] = ClipParams
    output_fields: ClassVar[tuple[pa.Field, ...]] = (
        pa.field(schema.CLIP_SIM, pa.float32()),
        pa.field(schema.CLIP_EMBEDDING, pa.list_(pa.float16())),
        pa.field(schema.AESTHETIC_SCORE, pa.float32()),
    )

    model = None  # loaded by setup()

    @classmethod
    def plans(cls, params: ClipParams) -> list[SamplePlan]:
        n = params.frames
        return [SamplePlan(cls.name, positions=tuple((k + 0.5) / n for k in range(n)), max_side=448)]

    @classmethod
    def model_refs(cls, params: ClipParams) -> list[ModelRef]:
        refs = [ModelRef(cls.name, "image-text model", "open_clip", params.model, params.pretrained)]
        if params.aesthetic_head:
            refs.append(ModelRef(cls.name, "aesthetic head", "file", params.aesthetic_head))
        return refs

    def setup(self) -> None:
        if self.model is not None:
            return
        from scoring._loaders import load_open_clip, require

        p = self.params
        self.model, self.preprocess, self.tokenizer, self.device = load_open_clip(self.name, p.model, p.pretrained,
                                                                                  p.model_config_path, p.device)
        self.head = None
        if p.aesthetic_head:
            require(ModelRef(self.name, "aesthetic head", "file", p.aesthetic_head))
            self.head = load_aesthetic_head(p.aesthetic_head).to(self.device)

    def embed_frames(self, frames: list[np.ndarray]) -> np.ndarray:
        """(rows, D) normalised mean embeddings, frames of all rows batched together."""
        import torch

        from scoring._loaders import to_pil

        images = [self.preprocess(im) for f in frames for im in to_pil(f)]
        counts = [len(f) for f in frames]
        feats = []
        bs = self.params.batch_size * max(1, self.params.frames)
        with torch.no_grad():
            for k in range(0, len(images), bs):
                x = torch.stack(images[k:k + bs]).to(self.device)
                feats.append(torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1))
        allf = torch.cat(feats) if feats else torch.zeros(0)
        out, pos = [], 0
        for c in counts:
            out.append(torch.nn.functional.normalize(allf[pos:pos + c].mean(0), dim=-1))
            pos += c
        return torch.stack(out).cpu().numpy()

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.no_grad():
            tokens = self.tokenizer(texts).to(self.device)
            return torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu().numpy()

    def inputs(self, batch: pa.Table) -> list:
        """Per row its frames and its caption (the first of caption_columns it has, else None)."""
        frames = frames_for(batch, self.name)
        cols = [batch.column(c).to_pylist() for c in self.params.caption_columns if c in batch.column_names]
        return [None if f is None else (f, next((col[i] for col in cols if col[i]), None)) for i, f in enumerate(frames)]

    def score_batch(self, items: list) -> list[dict]:
        import torch

        emb = self.embed_frames([f for f, _ in items])
        captioned = [k for k, (_, c) in enumerate(items) if c]
        text = dict(zip(captioned, self.embed_texts([items[k][1] for k in captioned]))) if captioned else {}
        scores = None
        if self.head is not None:
            with torch.no_grad():
                scores = self.head(torch.from_numpy(emb).to(self.device)).float().cpu().numpy()[:, 0]
        return [{schema.CLIP_EMBEDDING: emb[k].astype(np.float16).tolist() if self.params.embedding else None,
                 schema.CLIP_SIM: float(np.dot(emb[k], text[k])) if k in text else None,
                 schema.AESTHETIC_SCORE: float(scores[k]) if scores is not None else None} for k in range(len(items))]  # fmt: skip
