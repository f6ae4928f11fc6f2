"""Tiny random models, built in code and saved the way real weights are shipped, so the tests
load them through the exact code path a user's checkpoint takes (no hub, no download)."""

from __future__ import annotations

import json
from pathlib import Path

CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
COCA_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "attentional_pool": True,
                   "attn_pooler_heads": 2, "output_tokens": True, "head_width": 16},
    "text_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                       "attn_pooler_heads": 2},
    "custom_text": True,
}  # fmt: skip
CORPUS = [
    "a dog runs on the beach", "a cat sleeps on a sofa", "a man rides a bike in the city",
    "waves crash on rocks at sunset", "a red car drives down a road", "people walk in a park",
    "a video of a bird flying over water", "two captions describe the same short video clip",
    "caption of its middle frame", "caption of the whole clip", "write one short factual caption",
]  # fmt: skip


def _randomize(model, std: float = 0.2, seed: int = 0) -> None:
    """Random init with real spread: some libraries zero-init output heads, which would make every
    logit tie (and greedy decoding sample among ties)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def open_clip_model(root: Path, name: str, cfg: dict) -> tuple[str, str]:
    """Register a tiny open_clip config, save random weights; returns (config json, checkpoint)."""
    import open_clip
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    cfg_path = root / f"{name}.json"
    cfg_path.write_text(json.dumps(cfg))
    open_clip.add_model_config(str(cfg_path))
    model = open_clip.create_model(name)
    _randomize(model)
    ckpt = root / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    return str(cfg_path), str(ckpt)


def aesthetic_head(root: Path, dim: int = 32) -> str:
    """LAION improved-aesthetic-predictor layout (Linear/Dropout stack), tiny, saved as .pth."""
    import torch
    from torch import nn

    torch.manual_seed(1)
    layers = nn.Sequential(nn.Linear(dim, 16), nn.Dropout(0.2), nn.Linear(16, 8), nn.Dropout(0.1), nn.Linear(8, 1))
    state = {f"layers.{k}": v for k, v in layers.state_dict().items()}
    path = root / "aesthetic.pth"
    torch.save(state, path)
    return str(path)


def tokenizer(chat: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(CORPUS * 5, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    if chat:
        fast.chat_template = (
            "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant:{% endif %}"
        )
    return fast


def llm(root: Path) -> str:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tokenizer(chat=True)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    model = Qwen2ForCausalLM(cfg)
    _randomize(model, seed=2)
    path = root / "tiny-llm"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def blip2(root: Path) -> str:
    from transformers import Blip2Config, Blip2ForConditionalGeneration, BlipImageProcessor, OPTConfig

    tok = tokenizer(chat=False)
    text = OPTConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2,
                     word_embed_proj_dim=32, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    cfg = Blip2Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        qformer_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                        "encoder_hidden_size": 32},
        text_config=text.to_dict(), num_query_tokens=4,
    )  # fmt: skip
    model = Blip2ForConditionalGeneration(cfg)
    _randomize(model, seed=3)
    path = root / "tiny-blip2"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


QWEN2VL_CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen2vl(root: Path) -> str:
    """Qwen2-VL's architecture (vision tower with 2x2 merge and frame pairs, M-RoPE language model),
    tiny, with its processor: saved as a Qwen2-VL checkpoint on the hub is."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    tok = tokenizer(chat=False)
    special = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|im_start|>", "<|im_end|>"]
    tok.add_special_tokens({"additional_special_tokens": special})
    ids = {t: tok.convert_tokens_to_ids(t) for t in special}
    cfg = Qwen2VLConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 4096,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
                       "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    model = Qwen2VLForConditionalGeneration(cfg)
    _randomize(model, seed=4)
    path = root / "tiny-qwen2vl"
    model.save_pretrained(path)
    pixels = {"min_pixels": 28 * 28 * 4, "max_pixels": 56 * 56 * 4}
    Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tok, video_processor=Qwen2VLVideoProcessor(**pixels),
                     chat_template=QWEN2VL_CHAT).save_pretrained(path)  # fmt: skip
    return str(path)


def build_all(root: Path) -> dict[str, str]:
    clip_cfg, clip_ckpt = open_clip_model(root, "tiny-clip", CLIP_CFG)
    coca_cfg, coca_ckpt = open_clip_model(root, "tiny-coca", COCA_CFG)
    return {
        "clip_cfg": clip_cfg, "clip_ckpt": clip_ckpt, "coca_cfg": coca_cfg, "coca_ckpt": coca_ckpt,
        "aesthetic": aesthetic_head(root), "llm": llm(root), "blip2": blip2(root), "vlm": qwen2vl(root),
    }  # fmt: skip


def vlm_sets(m: dict[str, str], questions: dict[str, str] | None = None) -> list[str]:
    """--set overrides that run caption_vlm on the tiny Qwen2-VL (small windows, short answers)."""
    sets = ["scorers.caption_vlm.enabled=true", "scorers.caption_vlm.optional=false", f"scorers.caption_vlm.model={m['vlm']}",
            "scorers.caption_vlm.max_new_tokens=6", "scorers.caption_vlm.fps=4", "scorers.caption_vlm.window_frames=4",
            "scorers.caption_vlm.max_side=64", "scorers.caption_vlm.batch_size=2"]  # fmt: skip
    if questions is not None:
        sets.append(f"scorers.caption_vlm.questions={json.dumps(questions)}")
    return sets


def scorer_sets(m: dict[str, str]) -> list[str]:
    """--set overrides that point every model stage at the tiny models."""
    return [
        "scorers.caption_coca.enabled=true", "scorers.caption_coca.optional=false", "scorers.caption_coca.model=tiny-coca",
        f"scorers.caption_coca.pretrained={m['coca_ckpt']}", f"scorers.caption_coca.model_config_path={m['coca_cfg']}",
        "scorers.caption_coca.seq_len=12",
        "scorers.caption_vblip.enabled=true", "scorers.caption_vblip.optional=false", f"scorers.caption_vblip.model={m['blip2']}",
        "scorers.caption_vblip.max_new_tokens=8", "scorers.caption_vblip.frames=2",
        "scorers.caption_llm.enabled=true", "scorers.caption_llm.optional=false", f"scorers.caption_llm.model={m['llm']}",
        "scorers.caption_llm.max_new_tokens=8",
        "scorers.clip.enabled=true", "scorers.clip.optional=false", "scorers.clip.model=tiny-clip",
        f"scorers.clip.pretrained={m['clip_ckpt']}", f"scorers.clip.model_config_path={m['clip_cfg']}",
        f"scorers.clip.aesthetic_head={m['aesthetic']}",
    ]  # fmt: skip
