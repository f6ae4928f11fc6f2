"""The GPU proof in one run (bench/gpu.sh calls this): every figure issue #14 asks for, written
as one JSON and a short markdown table to --out.

Sections (each isolated: one that fails records its error and the run goes on):
- gemm: the measured dense bf16 GEMM peak of this card (the MFU denominator);
- train_step: a ModelScope-size UNet3D (320/640/1280/1280, 2 layers per block, cross-attention
  1024, ~1.4B parameters) on 32x32x4 latents, F=16, bf16 autocast, AdamW: samples/s, TFLOP/s
  (torch.utils.flop_counter), MFU, peak memory; eager and torch.compile'd;
- train_tiny: configs/train/tiny.yaml end to end (train, eval, samples) on generated clips;
- stages: the model stages' architectures at real size with random weights (open_clip ViT-L-14
  images/s, open_clip CoCa ViT-L-14 captions/s, BLIP-2 OPT-2.7B captions/s, a Qwen2-1.5B-shaped
  LLM merges/s, Qwen2-VL-2B windows/s and tokens/s and its six-question rubric clips/s) at each
  stage's configured batch, bf16;
- transnet: TransNetV2 (its real weights) frames/s on 100-frame windows of 48x27 frames;
- ocr_detector: OCR's DBNet (shipped weights) frames/s at 576x320, through onnxruntime's CUDA
  provider where the machine's onnxruntime has one (else its CPU provider, said in the table).
`--cpu-smoke` runs the same code paths at toy sizes on the CPU (CI runs it, so this cannot rot).
Run: bench/gpu.sh [--cpu-smoke]   (or python bench/gpu.py --out DIR [--cpu-smoke] [--only NAME])
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _sync(dev: str) -> None:
    import torch

    if dev == "cuda":
        torch.cuda.synchronize()


def _timed(fn, dev: str, reps: int) -> float:
    """Seconds per call after one warm-up call."""
    fn()
    _sync(dev)
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(dev)
    return (time.perf_counter() - t) / reps


def gemm(dev: str, smoke: bool) -> dict:
    import torch

    n = 256 if smoke else 8192
    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
    s = _timed(lambda: a @ b, dev, 3 if smoke else 50)
    return {"n": n, "dtype": str(dt), "tflops": 2 * n**3 / s / 1e12}


def unet_config(smoke: bool) -> dict:
    if smoke:
        block, layers, cross, head, size = [32, 64], 1, 64, 8, 8
    else:
        block, layers, cross, head, size = [320, 640, 1280, 1280], 2, 1024, 64, 32
    down = ["CrossAttnDownBlock3D"] * (len(block) - 1) + ["DownBlock3D"]  # ModelScope: no attention at the last level
    return {"sample_size": size, "in_channels": 4, "out_channels": 4, "down_block_types": down,
            "up_block_types": [d.replace("Down", "Up") for d in reversed(down)], "block_out_channels": block,
            "layers_per_block": layers, "cross_attention_dim": cross, "attention_head_dim": head,
            "norm_num_groups": 8 if smoke else 32}  # fmt: skip


def train_step(dev: str, smoke: bool, peak_tflops: float | None) -> dict:
    import torch
    from diffusers import UNet3DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = unet_config(smoke)
    batch, frames = (2, 2) if smoke else (8, 16)
    out = {"batch": batch, "frames": frames, "latent": [4, cfg["sample_size"], cfg["sample_size"]]}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = UNet3DConditionModel(**cfg).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev == "cuda")
        # smoke: dynamo traces the same graph, but inductor's C++ codegen would take minutes on a CPU
        fwd = torch.compile(model, backend="aot_eager" if smoke else "inductor") if compiled else model
        s = cfg["sample_size"]
        x = torch.randn(batch, 4, frames, s, s, device=dev)
        t = torch.randint(0, 1000, (batch,), device=dev)
        ctx = torch.randn(batch, 77, cfg["cross_attention_dim"], device=dev)
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev == "cuda" else torch.autocast("cpu", enabled=False)

        def step() -> None:
            with amp:
                loss = (fwd(x, t, encoder_hidden_states=ctx).sample.float() ** 2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        key = "compiled" if compiled else "eager"
        if not compiled:  # FLOPs of one step, counted once on the eager model
            with FlopCounterMode(display=False) as fc:
                with amp:
                    loss = (model(x, t, encoder_hidden_states=ctx).sample.float() ** 2).mean()
                loss.backward()
            opt.zero_grad(set_to_none=True)
            out["flops_per_step"] = fc.get_total_flops()
            out["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
        t0 = time.perf_counter()
        step()  # warm-up (and compilation)
        _sync(dev)
        warm = time.perf_counter() - t0
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sec = _timed(step, dev, 2 if smoke else 10)
        r = {"step_s": sec, "samples_per_s": batch / sec, "first_step_s": warm,
             "achieved_tflops": out["flops_per_step"] / sec / 1e12}  # fmt: skip
        if peak_tflops:
            r["mfu"] = r["achieved_tflops"] / peak_tflops
        if dev == "cuda":
            r["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out[key] = r
        model = opt = fwd = None  # free the card for the next variant
        if dev == "cuda":
            torch.cuda.empty_cache()
    return out


def train_tiny(dev: str, smoke: bool) -> dict:
    """configs/train/tiny.yaml end to end: clips written with OpenCV (no ffmpeg binary needed)."""
    import cv2
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.config import RECIPES
    from t2v.config import load_train_config
    from t2v.train import train

    overrides = [f"device={dev}"] + (["optim.max_steps=4", "eval.every=4", "ckpt_every=4", "sample.steps=2", "eval.max_clips=4",
                                      "eval.timesteps=[500]", "eval.distractors=1", "sample.seeds=[0]"] if smoke else [])
    cfg = load_train_config(RECIPES / "train" / "tiny.yaml", overrides)
    with tempfile.TemporaryDirectory() as d:
        rng = np.random.default_rng(0)
        rows = []
        for k in range(24 if smoke else 96):
            path = os.path.join(d, f"c{k:03d}.mp4")
            w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (32, 32))
            base = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
            step = 1 if k % 2 else -1
            for f in range(16):
                w.write(np.ascontiguousarray(np.roll(base, step * f, axis=1)[:, :32]))
            w.release()
            rows.append({"clip_id": f"c{k:03d}", "clip_uri": path, "start_frame": 0, "end_frame": 16, "fps": 8.0,
                         "duration_s": 2.0, "caption": f"a texture moving {'right' if step > 0 else 'left'}"})  # fmt: skip
        pq.write_table(pa.Table.from_pylist(rows), os.path.join(d, "subset.parquet"))
        t = time.perf_counter()
        result = train(cfg, os.path.join(d, "subset.parquet"), os.path.join(d, "run"))
        wall = time.perf_counter() - t
    ev = (result.get("eval") or {}).get("heldout", {})
    return {"wall_s": wall, "steps": result["step"], "clips": len(rows),
            "eval": {k: v for k, v in ev.items() if isinstance(v, (int, float))}}  # fmt: skip


def _generate_rate(model, inputs: dict, batch: int, new_tokens: int, dev: str, reps: int) -> float:
    import torch

    with torch.inference_mode():
        sec = _timed(lambda: model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False), dev, reps)
    return batch / sec


def stages(dev: str, smoke: bool) -> dict:
    """Real-size architectures, random weights, each stage's default batch."""
    import open_clip
    import torch
    import transformers as tf

    from scoring.caption_coca import CocaParams
    from scoring.caption_llm import LlmParams
    from scoring.caption_vblip import VblipParams
    from scoring.clip import ClipParams

    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    reps = 1 if smoke else 5
    out: dict = {}

    bs = 2 if smoke else ClipParams().batch_size * 8  # frames: 8 per clip
    name = "ViT-B-32" if smoke else "ViT-L-14"
    m = open_clip.create_model(name, pretrained=None).to(dev, dt).eval()
    img = torch.randn(bs, 3, 224, 224, device=dev, dtype=dt)
    with torch.inference_mode():
        sec = _timed(lambda: m.encode_image(img), dev, reps)
    out["clip"] = {"model": name, "batch_images": bs, "images_per_s": bs / sec}
    m = None

    from scoring._loaders import enable_coca_generation

    cp = CocaParams(seq_len=6) if smoke else CocaParams()
    bs = 2 if smoke else cp.batch_size
    name = "coca_ViT-B-32" if smoke else "coca_ViT-L-14"
    m = open_clip.create_model(name, pretrained=None).to(dev, dt).eval()
    enable_coca_generation()  # as the stage does (open_clip's generate under transformers 5)
    img = torch.randn(bs, 3, 224, 224, device=dev, dtype=dt)
    with torch.inference_mode():
        sec = _timed(lambda: m.generate(img, seq_len=cp.seq_len, generation_type=cp.generation_type, top_k=cp.top_k), dev, reps)
    out["caption_coca"] = {"model": name, "batch": bs, "captions_per_s": bs / sec, "max_tokens": cp.seq_len}
    m = None

    bs = 2 if smoke else VblipParams().batch_size
    if smoke:
        vision = tf.Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=224, patch_size=32)
        qformer = tf.Blip2QFormerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, encoder_hidden_size=32)
        text = tf.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=2, word_embed_proj_dim=32)
    else:  # Salesforce/blip2-opt-2.7b's shapes
        vision = tf.Blip2VisionConfig(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16, image_size=224, patch_size=14)
        qformer = tf.Blip2QFormerConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, encoder_hidden_size=1408)
        text = tf.OPTConfig(hidden_size=2560, ffn_dim=10240, num_hidden_layers=32, num_attention_heads=32, word_embed_proj_dim=2560)
    cfg = tf.Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(), num_query_tokens=32)
    with torch.device(dev):
        m = tf.Blip2ForConditionalGeneration(cfg).to(dt).eval()
    vp = VblipParams()
    pixels = torch.randn(bs * vp.frames, 3, 224, 224, device=dev, dtype=dt)
    prompt = torch.randint(4, 1000, (bs, 8), device=dev)

    def vblip() -> None:  # the stage's path (scoring/caption_vblip.py): per-frame Q-Former tokens, concatenated
        feats = m.get_image_features(pixel_values=pixels).pooler_output
        video = feats.reshape(bs, vp.frames * feats.shape[1], feats.shape[2])
        embeds = torch.cat([video, m.get_input_embeddings()(prompt).to(video.dtype)], dim=1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=dev)
        m.language_model.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False,
                                  max_new_tokens=vp.max_new_tokens, min_new_tokens=vp.max_new_tokens)  # fmt: skip

    with torch.inference_mode():
        sec = _timed(vblip, dev, reps)
    out["caption_vblip"] = {"model": "toy BLIP-2" if smoke else "blip2-opt-2.7b shapes", "batch": bs, "captions_per_s": bs / sec, "frames_per_clip": vp.frames,
                            "new_tokens": vp.max_new_tokens, "params_M": sum(p.numel() for p in m.parameters()) / 1e6}  # fmt: skip
    m = None

    bs = 2 if smoke else LlmParams().batch_size
    if smoke:
        qcfg = tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, vocab_size=1000)
    else:  # Qwen/Qwen2.5-1.5B-Instruct's shapes
        qcfg = tf.Qwen2Config(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                              num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)  # fmt: skip
    with torch.device(dev):
        m = tf.Qwen2ForCausalLM(qcfg).to(dt).eval()
    prompt = 120  # the merge prompt with two captions, in tokens
    inputs = {"input_ids": torch.randint(0, qcfg.vocab_size, (bs, prompt), device=dev),
              "attention_mask": torch.ones(bs, prompt, dtype=torch.long, device=dev)}  # fmt: skip
    out["caption_llm"] = {"model": "toy Qwen2" if smoke else "Qwen2.5-1.5B shapes", "batch": bs, "prompt_tokens": prompt, "new_tokens": 40,
                          "merges_per_s": _generate_rate(m, inputs, bs, 40, dev, reps)}  # fmt: skip
    m = None
    out["caption_vlm"], out["caption_vlm_rubric"] = vlm(dev, smoke, reps)
    return out


def vlm_inputs(cfg, batch: int, frames: int, height: int, width: int, prompt_tokens: int, dev: str, dt) -> dict:
    """What Qwen2-VL's processor hands the model for `batch` windows of `frames` frames at height x
    width (multiples of 28): flattened 14x14x2 patches, the grid per video, and a prompt whose
    video placeholder is one token per 2x2-merged patch pair."""
    import torch

    v = cfg.vision_config
    t, h, w = frames // v.temporal_patch_size, height // v.patch_size, width // v.patch_size
    pixels = torch.randn(batch * t * h * w, 3 * v.temporal_patch_size * v.patch_size**2, device=dev, dtype=dt)
    grid = torch.tensor([[t, h, w]] * batch, device=dev)
    n_video = t * h * w // v.spatial_merge_size**2
    text = torch.randint(10, 1000, (batch, prompt_tokens), device=dev)
    ids = torch.cat([torch.full((batch, 1), cfg.vision_start_token_id, device=dev), torch.full((batch, n_video), cfg.video_token_id, device=dev),
                     torch.full((batch, 1), cfg.vision_end_token_id, device=dev), text], dim=1)  # fmt: skip
    kind = (ids == cfg.video_token_id).long() * 2  # the processor's mm_token_type_ids: 2 marks a video token
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": kind, "pixel_values_videos": pixels,
            "video_grid_thw": grid}


def vlm(dev: str, smoke: bool, reps: int) -> tuple[dict, dict]:
    """scoring/caption_vlm.py's two calls at Qwen2-VL-2B's shapes (random weights): a window's
    caption (generate, the stage's max_new_tokens) and the rubric (one forward pass per question
    with the video: its default svd_vlm rubric of six), on windows of the stage's default frames."""
    import torch
    import transformers as tf

    from scoring.caption_vlm import VlmParams

    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    p = VlmParams()
    if smoke:
        cfg = tf.Qwen2VLConfig(
            text_config={"vocab_size": 1000, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "num_key_value_heads": 1, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
                         "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}},
            vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2},
            image_token_id=997, video_token_id=998, vision_start_token_id=996, vision_end_token_id=999)  # fmt: skip
        frames, height, width, bs, new = 4, 56, 84, 2, 8
    else:  # Qwen/Qwen2-VL-2B-Instruct's shapes
        cfg = tf.Qwen2VLConfig(
            text_config={"vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                         "num_attention_heads": 12, "num_key_value_heads": 2, "tie_word_embeddings": True,
                         "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}},
            vision_config={"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4},
            tie_word_embeddings=True)  # fmt: skip
        # a 16:9 window at the stage's max_side (448 x 252, rounded to 28 px) and its window_frames
        frames, height, width, bs, new = p.window_frames, 252, p.max_side, p.batch_size, p.max_new_tokens
    with torch.device(dev):
        m = tf.Qwen2VLForConditionalGeneration(cfg).to(dt).eval()
    inputs = vlm_inputs(cfg, bs, frames, height, width, 30, dev, dt)
    caption = {"model": "toy Qwen2-VL" if smoke else "Qwen2-VL-2B shapes", "batch": bs, "frames": frames, "size": f"{width}x{height}",
               "video_tokens": int((inputs["input_ids"] == cfg.video_token_id).sum()) // bs, "new_tokens": new,
               "params_M": sum(q.numel() for q in m.parameters()) / 1e6}  # fmt: skip
    caption["windows_per_s"] = _generate_rate(m, inputs, bs, new, dev, reps)
    caption["tokens_per_s"] = caption["windows_per_s"] * new
    questions = 6
    ask = vlm_inputs(cfg, questions, frames, height, width, 20, dev, dt)
    grid, pixels = ask.pop("video_grid_thw"), ask.pop("pixel_values_videos")

    def rubric():  # the stage's path: the video through the vision tower once, its tokens reused per question
        feats = m.get_video_features(pixels[: int(grid[0].prod())], grid[:1], return_dict=True)
        feats.pooler_output = tuple(feats.pooler_output) * questions
        return m(**ask, video_grid_thw=grid, mm_encoder_outputs={"video": feats}).logits[:, -1]

    with torch.inference_mode():
        sec = _timed(rubric, dev, reps)
    rubric = {"model": caption["model"], "batch": questions, "questions": questions, "clips_per_s": 1 / sec}
    return caption, rubric


def transnet(dev: str, smoke: bool) -> dict:
    import numpy as np

    from curate import transnet as tn

    model = tn.load_model(dev)
    windows = 2 if smoke else 64
    batch = [np.random.default_rng(k).integers(0, 256, (100, 27, 48, 3), dtype=np.uint8) for k in range(windows)]
    sec = _timed(lambda: tn._run(model, batch), dev, 1 if smoke else 5)
    return {"windows_per_call": windows, "frames_per_s": windows * tn.STEP / sec}


def ocr_detector(dev: str, smoke: bool) -> dict:
    """OCR's text detector (PP-OCRv4 mobile DBNet, shipped in scoring/models) on 576x320 frames, the
    demo's stored size: whether a GPU takes OCR under the cost of a decode (issue #10). Through
    onnxruntime's CUDA provider where the machine's onnxruntime has it, else its CPU provider."""
    import numpy as np
    import onnxruntime as ort

    have = ort.get_available_providers()
    cuda = dev == "cuda" and "CUDAExecutionProvider" in have
    model = Path(__file__).resolve().parents[1] / "scoring" / "models" / "ch_PP-OCRv4_det_mobile.onnx"
    sess = ort.InferenceSession(str(model),
                                providers=["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    res = {"provider": sess.get_providers()[0], "available": have}
    for batch in (1, 8):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 320, 576)).astype(np.float32)
        sess.run(None, {name: x})  # warm-up (CUDA: kernels and memory)
        reps = 1 if smoke else 20
        t = time.perf_counter()
        for _ in range(reps):
            sess.run(None, {name: x})
        res[f"batch{batch}_frames_per_s"] = batch * reps / (time.perf_counter() - t)
    return res


SECTIONS = {"gemm": gemm, "train_step": train_step, "train_tiny": train_tiny, "stages": stages, "transnet": transnet,
            "ocr_detector": ocr_detector}


def table(res: dict) -> str:
    lines = [f"# GPU proof: {res['device']}", "", "| measure | value |", "|---|---|"]
    g = res.get("gemm", {})
    if "tflops" in g:
        lines.append(f"| GEMM peak ({g['dtype']}, n={g['n']}) | {g['tflops']:.1f} TFLOP/s |")
    ts = res.get("train_step", {})
    for k in ("eager", "compiled"):
        if k in ts:
            r = ts[k]
            mfu = f", MFU {r['mfu']:.1%}" if "mfu" in r else ""
            mem = f", peak {r['peak_mem_gib']:.1f} GiB" if "peak_mem_gib" in r else ""
            lines.append(f"| trainer step {k} ({ts.get('params_M', 0):.0f}M params, B={ts['batch']}, F={ts['frames']}) | "
                         f"{r['samples_per_s']:.2f} samples/s, {r['achieved_tflops']:.1f} TFLOP/s{mfu}{mem} |")  # fmt: skip
    if "wall_s" in res.get("train_tiny", {}):
        lines.append(f"| train/tiny.yaml end to end ({res['train_tiny']['steps']} steps) | {res['train_tiny']['wall_s']:.1f} s |")
    for k, r in res.get("stages", {}).items():
        if isinstance(r, dict):
            rate = next((f"{v:.1f} {n.replace('_per_s', '')}/s" for n, v in r.items() if n.endswith("_per_s")), "")
            lines.append(f"| {k} ({r.get('model', '')}, batch {r.get('batch', r.get('batch_images'))}) | {rate} |")
    if "frames_per_s" in res.get("transnet", {}):
        lines.append(f"| TransNetV2 (real weights) | {res['transnet']['frames_per_s']:.0f} frames/s |")
    od = res.get("ocr_detector", {})
    if "batch1_frames_per_s" in od:
        lines.append(f"| OCR detector, DBNet 576x320 ({od['provider']}) | {od['batch1_frames_per_s']:.0f} frames/s at batch 1, "
                     f"{od['batch8_frames_per_s']:.0f} at batch 8 |")  # fmt: skip
    for k, v in res.get("errors", {}).items():
        lines.append(f"| {k} | FAILED: {v.splitlines()[-1][:120]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    ap.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU: the same code paths")
    ap.add_argument("--only", nargs="*", choices=list(SECTIONS))
    args = ap.parse_args(argv)
    import torch

    dev = "cpu" if args.cpu_smoke or not torch.cuda.is_available() else "cuda"
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    res: dict = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else f"CPU ({os.cpu_count()} cores)",
                 "torch": torch.__version__, "python": sys.version.split()[0], "smoke": args.cpu_smoke,
                 "errors": {}, "seconds": {}}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, fn in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        t = time.perf_counter()
        try:
            kwargs = {"peak_tflops": res.get("gemm", {}).get("tflops")} if name == "train_step" else {}
            res[name] = fn(dev, args.cpu_smoke, **kwargs)
        except Exception:  # noqa: BLE001 - one section's failure is a figure too; the rest still run
            res["errors"][name] = traceback.format_exc()[-2000:]
        res["seconds"][name] = round(time.perf_counter() - t, 2)
        print(f"{name}: {res['seconds'][name]} s{' FAILED' if name in res['errors'] else ''}", flush=True)
        (out / "gpu.json").write_text(json.dumps(res, indent=2, default=str))  # after each: a cut-off run keeps what it had
    (out / "gpu.md").write_text(table(res))
    print(table(res))
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
