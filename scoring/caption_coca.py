"""CoCa caption of the clip's middle frame (open_clip `coca_*` models), as SVD captions clips.

Decoding is greedy by default (top_k=1: deterministic, and batch results equal one-by-one
results). Beam search is available only where transformers still ships BeamSearchScorer
(transformers < 5); see scoring/_loaders.enable_coca_generation.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from curate import schema
from curate.models import ModelRef
from curate.params import ModelParams
from curate.sample import SamplePlan
from curate.stage import StageBase


class CocaParams(ModelParams):
    model: str = "coca_ViT-L-14"
    pretrained: str | None = Field("mscoco_finetuned_laion2B-s13B-b90k", description="open_clip tag or local checkpoint")
    model_config_path: str | None = None
    generation_type: Literal["top_k", "top_p", "beam_search"] = "top_k"
    top_k: int = Field(1, ge=1)
    top_p: float = Field(0.1, gt=0, le=1)
    seq_len: int = Field(30, ge=6)


def clean_caption(text: str) -> str:
    """open_clip.decode output -> plain caption (drop the special tokens, trim punctuation)."""
    text = text.replace("<start_of_text>", "").split("<end_of_text>")[0]
    return " ".join(text.split()).strip(" .")


class CocaCaptioner(StageBase):
    name: ClassVar[str] = "caption_coca"
    order: ClassVar[int] = 40
    Params: ClassVar[type] = CocaParams
    output_fields: ClassVar[tuple[pa.Field, ...]] = (pa.field(schema.CAPTION_COCA, pa.string()),)

    model = None  # loaded by setup()

    @classmethod
    def plans(cls, params: CocaParams) -> list[SamplePlan]:
        return [SamplePlan(cls.name, positions=(0.5,), max_side=448)]

    @classmethod
    def model_refs(cls, params: CocaParams) -> list[ModelRef]:
        return [ModelRef(cls.name, "captioner", "open_clip", params.model, params.pretrained)]

    def setup(self) -> None:
        if self.model is not None:
            return
        from scoring._loaders import enable_coca_generation, load_open_clip

        p = self.params
        self.model, self.preprocess, _, self.device = load_open_clip(self.name, p.model, p.pretrained, p.model_config_path, p.device)
        if not hasattr(self.model, "generate"):
            raise TypeError(f"{self.name}: {p.model} is not a CoCa model (it has no generate())")
        enable_coca_generation()

    def caption(self, images: list) -> list[str]:
        import open_clip
        import torch

        p = self.params
        x = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        with torch.no_grad():
            tokens = self.model.generate(x, generation_type=p.generation_type, top_k=p.top_k, top_p=p.top_p, seq_len=p.seq_len)
        return [clean_caption(open_clip.decode(t)) for t in tokens]

    def score_batch(self, items: list) -> list[dict]:
        from scoring._loaders import to_pil

        return [{schema.CAPTION_COCA: c} for c in self.caption([to_pil(frames[:1])[0] for frames in items])]
