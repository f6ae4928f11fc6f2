"""Model loading shared by the model scorers: open_clip models, devices, a transformers-5 shim.

Everything here is imported inside a stage's `setup()`, so `import curate` stays light.
"""

from __future__ import annotations

import os

import numpy as np

from curate.models import MissingModelError, ModelRef, check, resolve_device


def require(ref: ModelRef) -> str:
    """The local location of `ref`, or MissingModelError saying what is missing and how to fix it."""
    status = check(ref)
    if not status.present:
        raise MissingModelError(f"{ref.stage}: {ref.role} {ref.describe()} is not available: {status.where}. {status.how}")
    return status.where


def load_open_clip(stage: str, model: str, pretrained: str | None, model_config: str | None, device: str):
    """(model on its device, image preprocess, tokenizer, device) through open_clip's own factory.

    `model_config` registers a model config JSON (a custom or tiny architecture) under its file
    name first; `pretrained` is a tag (resolved in the local Hugging Face cache, never fetched)
    or a local checkpoint (.safetensors, or a torch file loaded with weights_only=True).
    """
    import open_clip

    if model_config:
        if not os.path.exists(model_config):
            raise MissingModelError(f"{stage}: model_config {model_config} does not exist")
        open_clip.add_model_config(model_config)
    if model not in open_clip.list_models():
        raise MissingModelError(f"{stage}: open_clip has no model named {model!r} (set model_config to its JSON)")
    require(ModelRef(stage, "image-text model", "open_clip", model, pretrained))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # resolve tags from the cache only
    device = resolve_device(device)
    m, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=device)
    return m.eval(), preprocess, open_clip.get_tokenizer(model), device


def load_transformers(model_cls, path: str, device: str, dtype: str):
    """(model in eval mode on its device, device) of a transformers stage, quietly (no progress
    bars, errors only); dtype `auto` is bfloat16 on GPU, float32 on CPU."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    dev = resolve_device(device)
    dt = (torch.bfloat16 if dev == "cuda" else torch.float32) if dtype == "auto" else getattr(torch, dtype)
    return model_cls.from_pretrained(path, dtype=dt, local_files_only=True).to(dev).eval(), dev


def pad_left(tokenizer):
    """A tokenizer set up for batched generation, which continues the right end of every row."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def to_pil(frames: np.ndarray) -> list:
    from PIL import Image

    return [Image.fromarray(f) for f in frames]


class _NoBeamSearch:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError(
            "beam search needs transformers' BeamSearchScorer, removed in transformers 5; use "
            "generation_type top_k (greedy with top_k=1, the default) or top_p"
        )


def enable_coca_generation() -> None:
    """open_clip 3.3's CoCa.generate() imports BeamSearchScorer, which transformers 5 removed; the
    failed import disables generation altogether. Re-enable the top-k / top-p paths (greedy is
    top_k=1) with the logits processors transformers 5 still has; beam search raises clearly."""
    from open_clip import coca_model

    if coca_model._has_transformers:
        return
    import transformers

    names = ["LogitsProcessorList", "TopPLogitsWarper", "TopKLogitsWarper", "RepetitionPenaltyLogitsProcessor",
             "MinLengthLogitsProcessor", "MaxLengthCriteria", "StopStringCriteria", "EosTokenCriteria",
             "StoppingCriteriaList"]  # fmt: skip
    for name in names:
        setattr(coca_model, name, getattr(transformers, name))
    coca_model.BeamSearchScorer = _NoBeamSearch
    coca_model.GENERATION_TYPES = {
        "top_k": transformers.TopKLogitsWarper, "top_p": transformers.TopPLogitsWarper, "beam_search": "beam_search",
    }  # fmt: skip
    coca_model._has_transformers = True
