"""Which model weights a config needs, whether they are on this machine, and how to get them.

Weights are never downloaded at import time, and a stage never invents an output without them:
`preflight` runs on the driver before any work. A missing model fails the run with a message that
says what is missing and how to provide it, or, where the stage is marked `optional: true`, the
stage is skipped with one warning, its columns stay null, and the manifest records the skip.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import types
from dataclasses import dataclass
from typing import Literal

from curate.errors import UserError

log = logging.getLogger("curate")


class MissingModelError(UserError, RuntimeError):
    """Raised when weights a stage needs are not on this machine."""


@dataclass(frozen=True)
class ModelRef:
    stage: str  # the scorer that needs it
    role: str  # what it is for ("image-text model", "aesthetic head", ...)
    kind: Literal["open_clip", "hf", "file"]
    name: str  # open_clip model name / HF id or local dir / file path
    pretrained: str | None = None  # open_clip pretrained tag or local checkpoint
    # (import name, the extra that installs it) of the libraries that load it; None: by kind
    packages: tuple[tuple[str, str], ...] | None = None

    def needs(self) -> tuple[tuple[str, str], ...]:
        if self.packages is not None:
            return self.packages
        return {"open_clip": (("torch", "models"), ("open_clip", "models")),
                "hf": (("torch", "models"), ("transformers", "models"))}.get(self.kind, (("torch", "models"),))  # fmt: skip

    def describe(self) -> str:
        if self.kind == "open_clip":
            return f"open_clip {self.name} / {self.pretrained}"
        return self.name


@dataclass(frozen=True)
class ModelStatus:
    ref: ModelRef
    present: bool
    where: str  # local path when present, else why not
    how: str  # how to provide it when missing


def missing_packages(ref: ModelRef) -> list[tuple[str, str]]:
    """The libraries `ref` needs that are not installed (a weights check would only fail on them
    with a misleading cause: "not in the local cache" for a missing transformers)."""
    return [(pkg, extra) for pkg, extra in ref.needs() if importlib.util.find_spec(pkg) is None]


def check(ref: ModelRef) -> ModelStatus:
    gone = missing_packages(ref)
    if gone:
        names = ", ".join(pkg for pkg, _ in gone)
        extras = ",".join(dict.fromkeys(extra for _, extra in gone))
        return ModelStatus(ref, False, f"the Python package{'s' if len(gone) > 1 else ''} {names} "
                           f"{'are' if len(gone) > 1 else 'is'} not installed", f"pip install 'curate[{extras}]'")  # fmt: skip
    if ref.kind == "file":
        ok = os.path.isfile(ref.name)
        return ModelStatus(ref, ok, ref.name if ok else f"no file at {ref.name}",
                           f"put the weights file at {ref.name} or point scorers.{ref.stage} at it")
    if ref.kind == "hf":
        return _check_hf(ref)
    return _check_open_clip(ref)


def _check_hf(ref: ModelRef) -> ModelStatus:
    how = (f"download it where the internet is reachable (`hf download {ref.name}`) and copy the cache, "
           f"or save it with save_pretrained() and set scorers.{ref.stage}.model to that directory")
    if os.path.isdir(ref.name):
        ok = os.path.isfile(os.path.join(ref.name, "config.json"))
        return ModelStatus(ref, ok, ref.name if ok else f"{ref.name} has no config.json", how)
    if os.path.sep in ref.name and not ref.name.count("/") == 1:
        return ModelStatus(ref, False, f"no directory {ref.name}", how)
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(ref.name, local_files_only=True)
        return ModelStatus(ref, True, path, how)
    except Exception as e:  # noqa: BLE001 - any failure here means: not in the local cache
        return ModelStatus(ref, False, f"not in the local Hugging Face cache ({type(e).__name__})", how)


def _check_open_clip(ref: ModelRef) -> ModelStatus:
    how = (f"download the checkpoint where the internet is reachable and set scorers.{ref.stage}.pretrained "
           "to the local file (open_clip tags resolve through the Hugging Face cache)")
    if ref.pretrained and os.path.isfile(ref.pretrained):
        return ModelStatus(ref, True, ref.pretrained, how)
    if ref.pretrained and (os.path.sep in ref.pretrained or ref.pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))):
        return ModelStatus(ref, False, f"no file at {ref.pretrained}", how)
    try:
        cfg = _open_clip_pretrained_cfg(ref.name, ref.pretrained or "")
    except ImportError:
        return ModelStatus(ref, False, "open_clip is not installed", "pip install 'curate[models]'")
    if not cfg:
        return ModelStatus(ref, False, f"open_clip knows no pretrained tag {ref.pretrained!r} for {ref.name}", how)
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id = "/".join(hub.rstrip("/").split("/")[:2])
        for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_model.bin"):
            hit = try_to_load_from_cache(repo_id, filename)
            if isinstance(hit, str):
                return ModelStatus(ref, True, hit, how)
        return ModelStatus(ref, False, f"{repo_id} is not in the local Hugging Face cache", how)
    return ModelStatus(ref, False, "this tag downloads from a URL; no local copy is known", how)


def _open_clip_pretrained_cfg(model: str, tag: str) -> dict:
    """open_clip's entry for a pretrained tag, read from its own table (open_clip/pretrained.py)
    without `import open_clip`, whose package import builds every model module: 5.5 s of each
    run's start on 2 cores, against 1.5 s for the table. The table's module is loaded under a
    private package name whose path is open_clip's, so its relative imports resolve there; when
    that fails (a reorganised open_clip), the full import answers."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.origin:
        raise ImportError("open_clip")
    try:
        if _REGISTRY_PACKAGE not in sys.modules:
            package = types.ModuleType(_REGISTRY_PACKAGE)
            package.__path__ = [os.path.dirname(spec.origin)]
            sys.modules[_REGISTRY_PACKAGE] = package
        table = sys.modules.get(_REGISTRY_PACKAGE + ".pretrained")
        if table is None:
            # The table's module tries `import safetensors.torch` (for loading, which this copy never
            # does): that imports torch, 1.5-3 s of every run's start where it was not yet loaded.
            # The module guards that import (ImportError: no safetensors), so it is refused here.
            blocked = "safetensors.torch" not in sys.modules
            if blocked:
                sys.modules["safetensors.torch"] = None  # (an import of it now raises ImportError)
            try:
                table = importlib.import_module(_REGISTRY_PACKAGE + ".pretrained")
            finally:
                if blocked:
                    del sys.modules["safetensors.torch"]
        return table.get_pretrained_cfg(model, tag)
    except Exception:  # noqa: BLE001 - any layout we do not know: ask open_clip itself
        import open_clip

        return open_clip.get_pretrained_cfg(model, tag)


_REGISTRY_PACKAGE = "_curate_open_clip_table"


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def preflight(stages: list[tuple[str, bool, list[ModelRef]]]) -> tuple[set[str], dict[str, str]]:
    """Check every enabled model stage. Returns (stages to skip, {stage: reason}) for optional
    stages with missing weights; raises MissingModelError naming all missing required ones."""
    skip: set[str] = set()
    reasons: dict[str, str] = {}
    fatal: list[str] = []
    for stage, optional, refs in stages:
        missing = [s for s in map(check, refs) if not s.present]
        if not missing:
            continue
        text = "; ".join(f"{s.ref.role} {s.ref.describe()}: {s.where} -> {s.how}" for s in missing)
        if optional:
            skip.add(stage)
            reasons[stage] = text
            log.warning("skipping optional stage %s (its columns stay null): %s", stage, text)
        else:
            fatal.append(f"{stage}: {text}")
    if fatal:
        raise MissingModelError("model weights missing:\n  " + "\n  ".join(fatal) + "\n(run `curate models list CONFIG`)")
    return skip, reasons
