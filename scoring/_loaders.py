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
    """(model, image preprocess, tokenizer) through open_clip's own factory.

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
    m, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=resolve_device(device))
    m.eval()
    return m, preprocess, open_clip.get_tokenizer(model)


def device_and_dtype(device: str, dtype: str):
    """(device, torch dtype) of a transformers stage: `auto` is bfloat16 on GPU, float32 on CPU."""
    import torch

    dev = resolve_device(device)
    if dtype == "auto":
        return dev, torch.bfloat16 if dev == "cuda" else torch.float32
    return dev, getattr(torch, dtype)


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


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
