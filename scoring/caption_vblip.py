"""Video caption from several frames with a BLIP-2 model, the way Video-BLIP / V-BLIP extend it.

Each sampled frame goes through BLIP-2's vision encoder and Q-Former; the per-frame query
outputs, projected into the language model's space, are concatenated along time (frames x
queries tokens) and prefixed to the prompt, so the language model sees the whole clip at once.
With a stock BLIP-2 checkpoint this is zero-shot; a Video-BLIP checkpoint (same architecture,
trained this way) is what the method is made for. Decoding is greedy.
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
from pydantic import Field

from curate import schema
from curate.models import ModelRef
from curate.params import ModelParams
from curate.sample import SamplePlan
from curate.stage import StageBase


class VblipParams(ModelParams):
    model: str = Field("Salesforce/blip2-opt-2.7b", description="HF id (local cache only) or a local directory")
    frames: int = Field(4, ge=1)
    prompt: str = "A video of"
    max_new_tokens: int = Field(30, ge=1)
    dtype: str = Field("auto", description="auto = bfloat16 on GPU, float32 on CPU")


class VblipCaptioner(StageBase):
    name: ClassVar[str] = "caption_vblip"
    order: ClassVar[int] = 50
    Params: ClassVar[type] = VblipParams
    output_fields: ClassVar[tuple[pa.Field, ...]] = (pa.field(schema.CAPTION_VBLIP, pa.string()),)

    model = None  # loaded by setup()

    @classmethod
    def plans(cls, params: VblipParams) -> list[SamplePlan]:
        n = params.frames
        return [SamplePlan(cls.name, positions=tuple((k + 0.5) / n for k in range(n)), min_frames=1, max_side=448)]

    @classmethod
    def model_refs(cls, params: VblipParams) -> list[ModelRef]:
        return [ModelRef(cls.name, "video captioner (BLIP-2)", "hf", params.model)]

    def setup(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoImageProcessor, AutoTokenizer, Blip2ForConditionalGeneration

        from scoring._loaders import load_transformers, require

        path = require(self.model_refs(self.params)[0])
        self.model, self.device = load_transformers(Blip2ForConditionalGeneration, path, self.params.device, self.params.dtype)
        self.image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)

    def caption(self, clips: list) -> list[str]:
        """clips: per clip an (F, H, W, 3) uint8 array. All clips of a call have the same F."""
        import torch

        m = self.model
        n_frames = len(clips[0])
        # (copies: the sampled frames are read-only views, and torch warns on those)
        pixels = self.image_processor(images=[f.copy() for clip in clips for f in clip], return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, m.dtype)
        with torch.no_grad():
            feats = m.get_image_features(pixel_values=pixels).pooler_output  # (B*F, Q, D)
            video = feats.reshape(len(clips), n_frames * feats.shape[1], feats.shape[2])
            prompt = self.tokenizer([self.params.prompt] * len(clips), return_tensors="pt").to(self.device)
            text = m.get_input_embeddings()(prompt["input_ids"]).to(video.dtype)
            embeds = torch.cat([video, text], dim=1)
            mask = torch.cat([torch.ones(video.shape[:2], dtype=prompt["attention_mask"].dtype, device=self.device),
                              prompt["attention_mask"]], dim=1)  # fmt: skip
            out = m.language_model.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False,
                                            max_new_tokens=self.params.max_new_tokens)  # fmt: skip
        return [" ".join(t.split()) for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def chunk_key(self, frames) -> int:
        return len(frames)  # short clips may have fewer frames: a batch holds clips of one length

    def score_batch(self, items: list) -> list[dict]:
        return [{schema.CAPTION_VBLIP: c} for c in self.caption(items)]
