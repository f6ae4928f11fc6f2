"""One caption from two: an instruction-tuned LLM merges the CoCa (frame) and V-BLIP (video)
captions, as SVD does. The prompt lives in the config; `{caption_coca}`, `{caption_vblip}` and
`{caption_vlm}` (a video-language model's, scoring/caption_vlm.py) are replaced by the captions
("none" when one is missing); a row with none of the captions its prompt names gets none (no
caption from nothing). Greedy decoding, left-padded batches.
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
from pydantic import Field

from curate import schema
from curate.models import ModelRef
from curate.params import ModelParams
from curate.stage import StageBase

DEFAULT_PROMPT = (
    "Two captions describe the same short video clip.\n"
    "Caption of its middle frame: {caption_coca}\n"
    "Caption of the whole clip: {caption_vblip}\n"
    "Write one short, factual caption of the clip that combines both. Answer with the caption only."
)


SOURCES = (schema.CAPTION_COCA, schema.CAPTION_VBLIP, schema.CAPTION_VLM)  # render()'s order


class LlmParams(ModelParams):
    model: str = Field("Qwen/Qwen2.5-1.5B-Instruct", description="HF id (local cache only) or a local directory")
    prompt: str = DEFAULT_PROMPT
    use_chat_template: bool = True
    max_new_tokens: int = Field(60, ge=1)
    dtype: str = "auto"


class LlmCaptioner(StageBase):
    name: ClassVar[str] = "caption_llm"
    order: ClassVar[int] = 60  # after both captioners: it merges them
    Params: ClassVar[type] = LlmParams
    output_fields: ClassVar[tuple[pa.Field, ...]] = (pa.field(schema.CAPTION_LLM, pa.string()),)

    model = None  # loaded by setup()

    @classmethod
    def plans(cls, params: LlmParams) -> list:
        return []  # text in, text out

    @classmethod
    def model_refs(cls, params: LlmParams) -> list[ModelRef]:
        return [ModelRef(cls.name, "caption merger (LLM)", "hf", params.model)]

    def setup(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from scoring._loaders import load_transformers, pad_left, require

        path = require(self.model_refs(self.params)[0])
        self.model, self.device = load_transformers(AutoModelForCausalLM, path, self.params.device, self.params.dtype)
        self.tokenizer = pad_left(AutoTokenizer.from_pretrained(path, local_files_only=True))

    def render(self, coca: str | None, vblip: str | None, vlm: str | None = None) -> str:
        text = self.params.prompt.format(caption_coca=coca or "none", caption_vblip=vblip or "none", caption_vlm=vlm or "none")
        if self.params.use_chat_template and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        return text

    def merge(self, pairs: list[tuple[str | None, ...]]) -> list[str]:
        import torch

        prompts = [self.render(*captions) for captions in pairs]
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        with torch.no_grad():
            out = self.model.generate(**enc, do_sample=False, max_new_tokens=self.params.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id)  # fmt: skip
        new = out[:, enc["input_ids"].shape[1]:]
        return [" ".join(t.split()) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    needs_frames: ClassVar[bool] = False  # it reads the two captions, not frames

    def inputs(self, batch: pa.Table) -> list:
        n = batch.num_rows
        col = lambda c: batch.column(c).to_pylist() if c in batch.column_names else [None] * n  # noqa: E731
        used = [c for c in SOURCES if "{" + c + "}" in self.params.prompt]  # a caption the prompt never shows gives nothing
        rows = list(zip(*(col(c) for c in SOURCES)))
        return [r if any(r[SOURCES.index(c)] for c in used) else None for r in rows]

    def score_batch(self, items: list) -> list[dict]:
        return [{schema.CAPTION_LLM: m} for m in self.merge(items)]
