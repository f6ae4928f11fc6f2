"""bench/gpu.sh in its CPU dry mode: every section of the GPU proof runs, at toy sizes, through
the same code the GPU run takes, so the script a GPU session runs as is cannot rot between them."""

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_proof_runs_end_to_end_in_cpu_smoke_mode(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--cpu-smoke"], capture_output=True, text=True,
                          env=env, timeout=900)  # fmt: skip
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert proc.returncode == 0 and not res["errors"], (proc.stdout[-2000:], proc.stderr[-2000:], res["errors"])
    assert res["smoke"] and res["gemm"]["tflops"] > 0
    for variant in ("eager", "compiled"):
        r = res["train_step"][variant]
        assert r["samples_per_s"] > 0 and 0 < r["mfu"] and r["achieved_tflops"] > 0
    assert res["train_step"]["flops_per_step"] > 0
    assert res["train_tiny"]["steps"] == 4 and res["train_tiny"]["wall_s"] > 0
    assert set(res["stages"]) == {"clip", "caption_coca", "caption_vblip", "caption_llm", "caption_vlm", "caption_vlm_rubric"}
    assert all(any(k.endswith("_per_s") and v > 0 for k, v in s.items()) for s in res["stages"].values())
    assert res["transnet"]["frames_per_s"] > 0
    assert res["ocr_detector"]["batch1_frames_per_s"] > 0 and res["ocr_detector"]["provider"] == "CPUExecutionProvider"
    table = (tmp_path / "gpu.md").read_text()
    assert "trainer step compiled" in table and "TransNetV2" in table and "OCR detector" in table and "FAILED" not in table
