"""A minimal ModelScope-style text-to-video trainer, to compare curated subsets by training.

Read top to bottom: the Trainer (one step, checkpoints), then `train()` (the loop) and `main()`.
nanoGPT-shaped, with its parts beside it in t2v/: config (the typed config), data (rows, decoding,
batches), model (the T2VModel: networks, encode, loss, sample), eval (evaluation and samples), vae
(latent mode's VAE). A tiny preset runs on a laptop CPU (the `train/tiny` recipe).

- Model: diffusers' UNet3DConditionModel, the ModelScope architecture (SD's 2D blocks inflated
  with temporal convolutions and temporal attention; any frame count, F=1 trains on images).
- Pixel space by default (no pretrained VAE can be had here; Show-1's base stage works in pixels
  at low resolution); `latent` mode encodes with a user-provided diffusers AutoencoderKL.
- Text: open_clip's bundled BPE tokenizer and a small transformer trained jointly from scratch,
  with caption dropout for classifier-free guidance.
- Determinism: the batch, the timesteps and the noise of step s are functions of (seed, s), so
  a resumed run sees exactly what an uninterrupted one would: same loss curve.
"""


from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from curate.errors import UserError
from curate.models import resolve_device
from t2v.config import TrainConfig, load_train_config
from t2v.data import ClipSet, DataError, batch_indices, decode_clip, is_heldout, load_rows
from t2v.eval import evaluate, sample_distances, write_samples
from t2v.model import T2VModel
from t2v.vae import train_vae

__all__ = ["DataError", "T2VModel", "Trainer", "TrainConfig", "batch_indices", "decode_clip", "evaluate", "is_heldout",
           "load_rows", "load_train_config", "train", "train_vae"]  # the trainer's public face


class Trainer:
    """The optimisation around a T2VModel (t2v/model.py): its EMA, optimiser, schedule, data and
    checkpoints."""

    def __init__(self, cfg: TrainConfig, rows: list[dict], run_dir: Path):
        import torch

        self.cfg, self.run_dir = cfg, run_dir
        self.device = resolve_device(cfg.device)
        self.model = m = T2VModel(cfg, self.device)
        self.ema = copy.deepcopy(torch.nn.ModuleDict({"unet": m.unet, "text": m.text})).requires_grad_(False)
        params = list(m.unet.parameters()) + list(m.text.parameters())
        # one fused kernel for the whole update on a GPU instead of a few per parameter tensor
        self.opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                     fused=self.device == "cuda")  # fmt: skip
        o = cfg.optim
        warm = lambda s: min(1.0, (s + 1) / max(1, o.warmup_steps))  # noqa: E731
        cos = lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, max(0, s - o.warmup_steps) / max(1, o.max_steps - o.warmup_steps))))  # noqa: E731
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: warm(s) * (0.1 + 0.9 * cos(s)))
        self.train_rows = [r for r in rows if not is_heldout(r["clip_id"], cfg.data.holdout_frac)]
        self.eval_rows = [r for r in rows if is_heldout(r["clip_id"], cfg.data.holdout_frac)][: cfg.eval.max_clips]
        if not self.train_rows:
            raise DataError(f"no training clips: all {len(rows)} are held out (data.holdout_frac) or have no clip file")
        self.train_set = ClipSet(self.train_rows, cfg.data)
        self._latents: dict[int, "torch.Tensor"] = {}  # latent mode: each clip encoded once
        self.eval_cache: dict[str, np.ndarray] = {}
        self.step = 0
        self.forward = torch.compile(m.unet) if cfg.compile else m.unet

    def ema_model(self) -> T2VModel:
        """The model with the EMA weights: what evaluation and sampling use."""
        return self.model.with_weights(self.ema["unet"].eval(), self.ema["text"].eval())

    # -- one step -------------------------------------------------------------------------------
    def decoded(self, row: dict) -> np.ndarray:
        """A held-out / reference clip, decoded once per run (evals and sample statistics reuse it)."""
        if row["clip_id"] not in self.eval_cache:
            self.eval_cache[row["clip_id"]] = decode_clip(row, self.cfg.data.frames, self.cfg.data.fps, self.cfg.data.size)
        return self.eval_cache[row["clip_id"]]

    def clip_latents(self, i: int):
        """Clip i in the diffusion space, (1, C, F, h, w). Latents are computed once and cached."""
        import torch

        if i in self._latents:
            return self._latents[i]
        z = self.model.encode(torch.from_numpy(self.train_set[i])[None].to(self.device))
        if self.model.vae is not None:
            self._latents[i] = z
        return z

    def train_step(self) -> dict:
        import torch

        cfg = self.cfg
        # diffusers' 3D blocks hard-code dropout 0.1 in their temporal convolutions, which draws
        # from the global generator: seed it per step, or a resumed run would drift.
        torch.manual_seed(cfg.seed * 1_000_003 + self.step + 1)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
        rng = np.random.default_rng([cfg.seed, self.step, 7])
        image_step = rng.random() < cfg.data.image_share
        m = self.model
        m.unet.train()
        m.text.train()
        total = torch.zeros((), device=self.device)  # summed on the device: no host sync per micro-batch
        for micro in range(cfg.optim.grad_accum):
            idx = batch_indices(len(self.train_set), cfg.optim.batch_size, cfg.seed, self.step * cfg.optim.grad_accum + micro)
            x0 = torch.cat([self.clip_latents(i) for i in idx])  # (B, C, F, h, w)
            if image_step:  # joint image-video training: one random frame per clip, F=1
                pick = torch.randint(0, x0.shape[2], (x0.shape[0],), generator=g)
                x0 = x0[torch.arange(x0.shape[0]), :, pick][:, :, None]
            captions = [self.train_rows[i]["caption"] if rng.random() >= cfg.text.caption_dropout else "" for i in idx]
            t = torch.randint(0, cfg.diffusion.timesteps, (x0.shape[0],), generator=g).to(self.device)
            noise = torch.randn(x0.shape, generator=g).to(self.device)
            loss = m.loss(x0, captions, t, noise, self.forward).mean() * (cfg.data.image_alpha if image_step else 1.0)
            (loss / cfg.optim.grad_accum).backward()
            total += loss.detach() / cfg.optim.grad_accum
        nxt = self.step + 1  # decode the next step's clips while this one finishes
        self.train_set.prefetch([i for m in range(cfg.optim.grad_accum)
                                 for i in batch_indices(len(self.train_set), cfg.optim.batch_size, cfg.seed, nxt * cfg.optim.grad_accum + m)])
        params = list(m.unet.parameters()) + list(m.text.parameters())
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        with torch.no_grad():  # the EMA in one multi-tensor op, not a kernel per parameter
            live = dict(m.unet.named_parameters(prefix="unet")) | dict(m.text.named_parameters(prefix="text"))
            ema = list(self.ema.named_parameters())
            torch._foreach_lerp_([p for _, p in ema], [live[n] for n, _ in ema], 1 - cfg.optim.ema_decay)
        self.step += 1
        loss_value, gnorm_value = torch.stack([total.float(), gnorm.float()]).tolist()  # the step's one host sync
        return {"step": self.step, "loss": loss_value, "lr": self.sched.get_last_lr()[0], "grad_norm": gnorm_value,
                "frames": 1 if image_step else cfg.data.frames}  # fmt: skip

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        import torch

        state = {"config": self.cfg.model_dump(mode="json"), "step": self.step, "unet": self.model.unet.state_dict(),
                 "text": self.model.text.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
                 "sched": self.sched.state_dict()}  # fmt: skip
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load(self, path: Path, weights_only_init: bool = False, state: dict | None = None) -> None:
        """From the checkpoint at `path` (or its `state`, already read by read_checkpoint)."""
        state = state if state is not None else read_checkpoint(path, self.device)
        self.model.unet.load_state_dict(state["unet"])
        self.model.text.load_state_dict(state["text"])
        self.ema.load_state_dict(state["ema"])
        if not weights_only_init:  # a resume: the optimiser, the schedule and the step too
            self.opt.load_state_dict(state["opt"])
            self.sched.load_state_dict(state["sched"])
            self.step = state["step"]


# ----------------------------------------------------------------------------------------------
# main


def read_checkpoint(path: str | Path, device="cpu") -> dict:
    """A checkpoint this trainer wrote, or DataError naming the file (a text file, a parquet file,
    another program's checkpoint): never an unpickling traceback."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        raise DataError(f"{path}: not a checkpoint of `curate train` ({str(e).splitlines()[0][:120]})") from None
    missing = [k for k in ("unet", "text", "ema") if not (isinstance(state, dict) and k in state)]
    if missing:
        raise DataError(f"{path}: not a checkpoint of `curate train` (no {', '.join(missing)})")
    return state


def train(cfg: TrainConfig, data: str | Path, run_dir: str | Path, init_from: str | None = None,
          max_steps: int | None = None, samples: bool = True) -> dict:
    """Train (or resume RUN/ckpt.pt) to cfg.optim.max_steps (or `max_steps`, to stop early)."""
    from curate.storage import refuse_inside_output

    run_dir = Path(run_dir)
    rows = load_rows(data)  # before creating anything: a mistyped --data leaves no directory behind
    if run_dir.exists() and not run_dir.is_dir():
        raise DataError(f"-o {run_dir}: exists and is not a directory")
    refuse_inside_output(str(run_dir))  # an OutError (a ValueError): one line from the CLI
    ckpt = run_dir / "ckpt.pt"
    init_state = None
    if init_from and not ckpt.exists():
        if not Path(init_from).is_file():
            raise DataError(f"--init-from {init_from}: no such file")
        init_state = read_checkpoint(init_from)  # before anything is created: a wrong file leaves no run directory
    run_dir.mkdir(parents=True, exist_ok=True)
    if ckpt.exists():
        check_resumable(cfg, data, run_dir)  # before building anything
    tr = Trainer(cfg, rows, run_dir)
    if ckpt.exists():
        tr.load(ckpt)  # resume exactly where it stopped
    elif init_from:
        try:
            tr.load(Path(init_from), weights_only_init=True, state=init_state)  # warm start (e.g. a higher-res fine-tune)
        except RuntimeError as e:  # another architecture: load_state_dict names the first keys
            if not any(run_dir.iterdir()):
                run_dir.rmdir()
            raise DataError(f"--init-from {init_from}: its weights do not fit this model config "
                            f"({str(e).splitlines()[0][:160]})") from None  # fmt: skip
    (run_dir / "config.json").write_text(json.dumps({"config": cfg.model_dump(mode="json"), "data": str(data)}, indent=2))
    stop = min(cfg.optim.max_steps, max_steps or cfg.optim.max_steps)
    eval_sets = {"heldout": tr.eval_rows} | {k: load_rows(v)[: cfg.eval.max_clips] for k, v in cfg.eval.extra_sets.items()}
    final_eval = None  # set when the loop itself reaches max_steps (a run resumed at the end has none)
    with open(run_dir / "metrics.jsonl", "a") as log:
        t0 = time.perf_counter()
        while tr.step < stop:
            rec = tr.train_step()
            if tr.step % cfg.log_every == 0 or tr.step == stop:
                rec["seconds"] = round(time.perf_counter() - t0, 3)
                log.write(json.dumps(rec) + "\n")
                log.flush()
            at_end = tr.step >= cfg.optim.max_steps
            if tr.step % cfg.eval.every == 0 or at_end:
                now = {k: evaluate(tr.ema_model(), v, tr.decoded) for k, v in eval_sets.items() if v}
                log.write(json.dumps({"step": tr.step, "eval": {k: {m: x for m, x in e.items() if m != "per_clip"} for k, e in now.items()}}) + "\n")
                log.flush()
                final_eval = now if at_end else None  # the last step's evaluation is the result's too
            if tr.step % cfg.ckpt_every == 0 or tr.step == stop:
                tr.save(ckpt)
    result = {"step": tr.step}
    if tr.step >= cfg.optim.max_steps:
        ev = final_eval if final_eval is not None else {k: evaluate(tr.ema_model(), v, tr.decoded) for k, v in eval_sets.items() if v}
        result["eval"] = ev
        if samples:
            s = write_samples(tr.ema_model(), run_dir / "samples")
            result["sample_distances"] = sample_distances(s["samples"], tr.eval_rows or tr.train_rows, tr.decoded)
        (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
    return result


# What may change between a run and its resume: where and how fast it runs, how often it logs,
# checkpoints and evaluates, where it stops, what it samples. Anything else changes the model.
RESUME_SAFE = ("device", "compile", "log_every", "ckpt_every", "optim.max_steps", "eval.every", "eval.extra_sets",
               "eval.max_clips", "sample.")  # fmt: skip


class ResumeMismatch(UserError, ValueError):
    pass


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumable(cfg: TrainConfig, data: str | Path, run_dir: Path) -> None:
    """Refuse to resume RUN with a config (or data) that differs in anything but RESUME_SAFE keys."""
    saved_path = run_dir / "config.json"
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text())
    else:  # lost or never written (a kill before it): the checkpoint holds the config too
        saved = {"config": read_checkpoint(run_dir / "ckpt.pt").get("config") or {}}
    old, new = _flat(saved.get("config", {})), _flat(cfg.model_dump(mode="json"))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k) and not k.startswith(RESUME_SAFE)]  # fmt: skip
    if saved.get("data") is not None and str(saved["data"]) != str(data):
        diffs.append(f"--data: {saved['data']} -> {data}")
    if diffs:
        raise ResumeMismatch(f"{run_dir} holds a run with another config ({'; '.join(diffs)}): resume with the same "
                             "settings, write to a new -o, or warm-start one with --init-from")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="curate train", description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--data", required=True, help="a curate OUT, a select subset or an export directory")
    ap.add_argument("-o", "--out", required=True, help="run directory (resumes when it holds ckpt.pt)")
    ap.add_argument("--init-from", help="checkpoint to warm-start from (weights only)")
    ap.add_argument("--set", action="append", default=[], help="override a config key")
    ap.add_argument("--max-steps", type=int, help="stop after this many steps (resume later)")
    args = ap.parse_args(argv)
    cfg = load_train_config(args.config, args.set)
    result = train(cfg, args.data, args.out, args.init_from, args.max_steps)
    print(json.dumps({k: v for k, v in result.items() if k != "eval"} | {"eval_loss": {k: e["loss"] for k, e in result.get("eval", {}).items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
