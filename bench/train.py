"""Train-step throughput of the text-to-video UNet: samples/s, peak memory, model FLOPs utilisation.

Configs: the tiny preset's model (configs/train/tiny.yaml) and a ModelScope-size UNet3D
(block_out_channels 320/640/1280/1280, 2 layers per block, cross-attention 1024: ~1.4B
parameters), at F in 1, 8, 16. On a GPU: bf16 autocast, 256 px in latent space (32x32x4). On
CPU: float32, smaller sizes so a step finishes (the sizes are printed). FLOPs of a step
(forward + backward) are counted by torch.utils.flop_counter; MFU divides the achieved FLOP/s
by a peak measured in the same process (a large GEMM at the same dtype), or by the GPU's
datasheet dense bf16 peak where --peak-tflops is given. Run: python bench/train.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time, torch
sys.path.insert(0, {root!r})
from diffusers import UNet3DConditionModel
from torch.utils.flop_counter import FlopCounterMode
cfg = json.loads({cfg!r})
dev = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
m = UNet3DConditionModel(**cfg["unet"]).to(dev)
opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
b, f, s, c = cfg["batch"], cfg["frames"], cfg["size"], cfg["unet"]["in_channels"]
x = torch.randn(b, c, f, s, s, device=dev); t = torch.randint(0, 1000, (b,), device=dev)
ctx = torch.randn(b, 77, cfg["unet"]["cross_attention_dim"], device=dev)
amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev == "cuda" else torch.autocast("cpu", enabled=False)
def step():
    with amp:
        loss = (m(x, t, encoder_hidden_states=ctx).sample.float() ** 2).mean()
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
with FlopCounterMode(display=False) as fc:
    with amp:
        loss = (m(x, t, encoder_hidden_states=ctx).sample.float() ** 2).mean()
    loss.backward()
opt.zero_grad(set_to_none=True)
flops = fc.get_total_flops()
step()  # warm-up
if dev == "cuda": torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
n = cfg["steps"]; t0 = time.perf_counter()
for _ in range(n): step()
if dev == "cuda": torch.cuda.synchronize()
dt = (time.perf_counter() - t0) / n
peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({{"params_M": sum(p.numel() for p in m.parameters()) / 1e6, "step_s": dt, "samples_per_s": b / dt,
                  "flops_per_step": flops, "achieved_tflops": flops / dt / 1e12, "peak_mem_gib": peak, "device": dev}}))
"""

GEMM = r"""
import json, time, torch
dev = "cuda" if torch.cuda.is_available() else "cpu"
dt = torch.bfloat16 if dev == "cuda" else torch.float32
n = 8192 if dev == "cuda" else 2048
a = torch.randn(n, n, device=dev, dtype=dt); b = torch.randn(n, n, device=dev, dtype=dt)
for _ in range(3): a @ b
if dev == "cuda": torch.cuda.synchronize()
t0 = time.perf_counter(); k = 20 if dev == "cuda" else 5
for _ in range(k): a @ b
if dev == "cuda": torch.cuda.synchronize()
print(json.dumps({"tflops": 2 * n ** 3 * k / (time.perf_counter() - t0) / 1e12}))
"""


def unet(block_out, layers, cross, head, channels, size):
    n = len(block_out)
    down = ["DownBlock3D"] + ["CrossAttnDownBlock3D"] * (n - 1) if n > 2 else ["DownBlock3D", "CrossAttnDownBlock3D"]
    if block_out[0] >= 320:  # ModelScope: attention at every level but the last
        down = ["CrossAttnDownBlock3D"] * (n - 1) + ["DownBlock3D"]
    return {"sample_size": size, "in_channels": channels, "out_channels": channels, "down_block_types": down,
            "up_block_types": [d.replace("Down", "Up") for d in reversed(down)], "block_out_channels": block_out,
            "layers_per_block": layers, "cross_attention_dim": cross, "attention_head_dim": head,
            "norm_num_groups": 8 if block_out[0] < 64 else 32}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny config only")
    ap.add_argument("--peak-tflops", type=float, help="datasheet peak (e.g. 989 for H100 SXM dense bf16)")
    args = ap.parse_args(argv)
    gpu = subprocess.run([sys.executable, "-c", "import torch;print(torch.cuda.is_available())"], capture_output=True, text=True).stdout.strip() == "True"
    peak = json.loads(subprocess.run([sys.executable, "-c", GEMM], capture_output=True, text=True, check=True).stdout)["tflops"]
    peak_used = args.peak_tflops or peak
    configs = []
    for f in (1, 8, 16):
        configs.append((f"tiny F={f}", {"unet": unet([32, 64, 64], 1, 64, 8, 3, 16), "batch": 8, "frames": f, "size": 16, "steps": 5}))
    if not args.quick:
        size = 32 if gpu else 8  # 256 px in latent space on GPU; CPU: 64 px latent-equivalent
        for f in ((1, 8, 16) if gpu else (1, 8)):
            configs.append((f"ModelScope-size F={f} {size * 8}px", {"unet": unet([320, 640, 1280, 1280], 2, 1024, 64, 4, size),
                                                                    "batch": 8 if gpu else 1, "frames": f, "size": size,
                                                                    "steps": 10 if gpu else 2}))  # fmt: skip
    print(f"device: {'GPU' if gpu else 'CPU'} ({os.cpu_count()} CPUs); measured GEMM peak {peak:.3f} TFLOP/s; MFU against {peak_used:.3f}")
    print(f"{'config':30s} {'params':>8s} {'batch':>5s} {'step s':>8s} {'samples/s':>9s} {'TFLOP/step':>10s} {'TFLOP/s':>8s} {'MFU':>6s} {'peak GiB':>8s}")
    for name, cfg in configs:
        out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), cfg=json.dumps(cfg))], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name:30s} failed: {out.stderr.strip().splitlines()[-1][:100]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:30s} {r['params_M']:7.1f}M {cfg['batch']:5d} {r['step_s']:8.3f} {r['samples_per_s']:9.2f} "
              f"{r['flops_per_step'] / 1e12:10.3f} {r['achieved_tflops']:8.3f} {r['achieved_tflops'] / peak_used:6.1%} {r['peak_mem_gib']:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
