"""Typed pipeline configuration, loaded from YAML. Unknown keys are errors that name the key."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, model_validator

from curate.errors import UserError
from curate.params import Strict


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used; the message names the file and key."""


class ProbeParams(Strict):
    max_pixels: int = Field(7680 * 4320, gt=0, description="inputs with more pixels per frame are quarantined")
    min_frames: int = Field(1, ge=1, description="inputs with fewer decodable frames are quarantined")


class ContentDetectorParams(Strict):
    kind: Literal["content"] = "content"
    threshold: float = 27.0
    luma_only: bool = False


class AdaptiveDetectorParams(Strict):
    kind: Literal["adaptive"] = "adaptive"
    threshold: float = 3.0  # adaptive_threshold in PySceneDetect
    min_content_val: float = 15.0
    window_width: int = Field(2, ge=1)
    luma_only: bool = Field(False, description="brightness changes only: finds cuts between shots of one "
                            "colour scheme (two slides, one room) that the hue/saturation average dilutes")


class ThresholdDetectorParams(Strict):
    """Fades to/from black: a cut is placed where the picture crosses the brightness threshold."""

    kind: Literal["threshold"] = "threshold"
    threshold: float = 12.0
    fade_bias: float = Field(0.0, ge=-1.0, le=1.0)


DetectorParams = Annotated[
    Union[ContentDetectorParams, AdaptiveDetectorParams, ThresholdDetectorParams],
    Field(discriminator="kind"),
]


class FpsLevel(Strict):
    """One cut-detection pass. `fps: null` means the native frame rate."""

    fps: float | None = Field(None, gt=0)
    detectors: list[DetectorParams]


def _default_levels() -> list[FpsLevel]:
    # SVD runs cut detection "in a cascaded manner at three different FPS levels": the native
    # rate finds hard cuts to the frame; lower rates see slow fades and dissolves as one big jump.
    # The adaptive detector with a low floor catches changes on static content (slides, titles)
    # that a fixed threshold misses; its luma-only twin catches a cut between two shots of one
    # colour scheme (a white wall, then the same wall a minute later), which the hue/saturation
    # average dilutes below both. Tuned on ../shared/data (bench/cuts.py prints the F1).
    return [
        FpsLevel(
            fps=None,
            detectors=[ContentDetectorParams(), AdaptiveDetectorParams(threshold=12.0, min_content_val=4.0),
                       AdaptiveDetectorParams(threshold=12.0, min_content_val=8.0, luma_only=True)],
        ),
        FpsLevel(fps=4.0, detectors=[ContentDetectorParams(threshold=50.0)]),
        FpsLevel(fps=1.0, detectors=[ContentDetectorParams(threshold=80.0)]),
    ]


class CutsParams(Strict):
    detector: Literal["classical", "transnetv2", "hybrid"] = Field(
        "classical", description="classical: PySceneDetect's detectors at several FPS levels; transnetv2: "
        "the network on every frame; hybrid: the classical cascade proposes (at high recall), TransNetV2 "
        "decides on windows around the proposals only")
    transnet_threshold: float = Field(0.5, gt=0, lt=1, description="TransNetV2 transition probability")
    transnet_device: Literal["auto", "cpu", "cuda"] = "auto"
    transnet_batch: int = Field(4, ge=1, description="windows per forward pass (100 frames; the hybrid's are shorter)")
    levels: list[FpsLevel] = Field(default_factory=_default_levels, min_length=1)
    analysis_size: int = Field(128, ge=16, description="frames are decoded scaled so the longer side is this")
    min_scene_len_s: float = Field(0.5, ge=0.0)
    merge_tolerance_s: float = Field(
        0.5, ge=0.0, description="cuts from different levels closer than this are one cut"
    )
    decode_threads: int = Field(0, ge=0, description="ffmpeg decoder threads; 0 = automatic")
    fast_decode: bool = Field(True, description="skip the deblocking filter when decoding for cuts (the "
                              "drift it causes over a GOP is ruled out by min_changed)")
    flash_frames: int = Field(
        4, ge=0, le=12, description="a change that reverts within this many frames (a camera flash, a "
        "strobe, lightning, muzzle fire) is not a cut; 0 turns the flash filter off")
    min_changed: float = Field(
        0.02, ge=0, lt=1, description="a cut must change this share of the pixels strongly between the "
        "frames its level compared (a colour channel by 30+): on still slides and photos a keyframe's compression pop (mean change under 1 "
        "level, no pixel past 30) triggers the sensitive detectors; every real cut measured changes 8%+")
    flash_ratio: float = Field(
        0.4, gt=0, lt=1, description="... reverts: the frames either side of it differ by at most this "
        "share of the jump itself")


class ClipsParams(Strict):
    min_s: float = Field(2.0, gt=0)
    max_s: float = Field(10.0, gt=0)
    # deferred: one decode, spans and scores, no file (curate.deferred; `export --materialize` encodes)
    mode: Literal["copy", "exact", "smart", "deferred"] = "exact"
    crf: int = Field(18, ge=0, le=51)
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                    "veryslow", "placebo"] = "veryfast"  # x264's presets: anything else fails every clip
    trim_s: float = Field(0.0, ge=0.0, description="dropped at each scene boundary (transitions)")
    extract: bool = Field(True, description="write clip files; off = rows only (dry run)")
    # Training resolution, applied in the extraction encode (never upscaled, aspect kept, even sizes).
    short_side: int | None = Field(None, ge=16, description="store clips with this short side (null: source size)")
    max_side: int | None = Field(None, ge=16, description="... or with at most this long side")
    max_fps: float | None = Field(None, gt=0, description="drop frames evenly down to this rate (null: source rate)")

    @model_validator(mode="after")
    def _order(self) -> "ClipsParams":
        if self.max_s < self.min_s:
            raise ValueError(f"clips.max_s ({self.max_s}) must be >= clips.min_s ({self.min_s})")
        if self.short_side and self.max_side:
            raise ValueError("clips.short_side and clips.max_side: set one of them")
        if self.mode in ("copy", "smart") and self.resizes:
            raise ValueError(f"clips.mode {self.mode!r} copies the source's pixels, so it cannot change their size or "
                             "rate (clips.short_side / max_side / max_fps): use mode: exact")
        return self

    @property
    def resizes(self) -> bool:
        return bool(self.short_side or self.max_side or self.max_fps)


class ShardsParams(Strict):
    max_rows: int = Field(1000, ge=1, le=10_000_000, description="at most this many rows per part file")
    # A kill loses at most the work since the last commit; small parts are compacted at the end.
    commit_every_s: float = Field(60.0, gt=0, allow_inf_nan=False, description="commit at least this often")
    commit_every_videos: int = Field(50, ge=1, description="... or after this many finished inputs")
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"


class RayParams(Strict):
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1, description="local Ray only")
    video_concurrency: int | None = Field(None, ge=1, description="parallel inputs; default = CPUs")


@functools.lru_cache(maxsize=4)
def _scorers_model(version: int) -> type[BaseModel]:  # cached per registry version
    from curate import registry

    fields = {name: (cls.Params, Field(default_factory=cls.Params)) for name, cls in registry.scorers().items()}
    return create_model("ScorersConfig", __base__=Strict, __doc__="Per-scorer settings, in run order. "
                        "`enabled: false` skips one.", **fields)  # fmt: skip


class SampleParams(Strict):
    decoders: list[Literal["opencv", "pyav"]] = Field(
        default_factory=lambda: ["opencv", "pyav"],
        description="tried in order; the next one is used when one fails or returns too few frames",
    )


class PipelineConfig(Strict):
    name: str = "curate"
    executor: Literal["ray", "local"] = "ray"
    input_timeout_s: float = Field(900.0, gt=0, allow_inf_nan=False, description="per-input processing limit")
    watchdog: bool = Field(True, description="each input in a child process, killed past input_timeout_s "
                                             "(off: in-process, for a debugger)")
    segment_s: float = Field(0.0, ge=0, allow_inf_nan=False,
                             description="inputs longer than this many seconds are cut and clipped as segments of "
                                         "about this length in parallel, each with input_timeout_s (0: never); "
                                         "the cuts and clips are those of one pass (curate/segments.py)")
    probe: ProbeParams = Field(default_factory=ProbeParams)
    cuts: CutsParams = Field(default_factory=CutsParams)
    clips: ClipsParams = Field(default_factory=ClipsParams)
    sample: SampleParams = Field(default_factory=SampleParams)
    # scorers: added by pipeline_config_model() from the registry
    shards: ShardsParams = Field(default_factory=ShardsParams)
    ray: RayParams = Field(default_factory=RayParams)

    @model_validator(mode="after")
    def _deferred_cuts(self) -> "PipelineConfig":
        if self.clips.mode == "deferred" and self.cuts.detector != "classical":
            raise ValueError(f"clips.mode deferred plans clips while it decodes, which needs cuts.detector: classical "
                             f"(got {self.cuts.detector}): use mode exact with the network")  # fmt: skip
        return self

    def hash(self) -> str:
        """Hash of what changes results (not where or how fast it runs)."""
        data = results_view(self.model_dump(mode="json"))
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def results_view(dumped: dict) -> dict:
    """The part of a dumped config (model_dump(mode="json"), or manifest.json's "config") that
    changes results: what the hash covers."""
    data = {k: v for k, v in dumped.items() if k not in ("ray", "executor", "name", "watchdog", "segment_s")}
    if isinstance(data.get("shards"), dict):
        data["shards"] = {k: v for k, v in data["shards"].items() if k not in ("commit_every_s", "commit_every_videos")}
    if isinstance(data.get("scorers"), dict):  # how many replicas, and what each reserves
        # a scorer that does not run changes nothing (so a release that adds one keeps every hash)
        data["scorers"] = {name: {k: v for k, v in section.items() if k not in SCHEDULING_KEYS}
                           if isinstance(section, dict) else section for name, section in data["scorers"].items()
                           if not (isinstance(section, dict) and section.get("enabled") is False)}  # fmt: skip
    return data


def config_differences(old: dict, new: dict, limit: int = 8) -> list[str]:
    """The keys whose results-changing values differ between two dumped configs, as
    "path: old -> new" ("absent" for a key one side does not have, e.g. after an upgrade)."""
    out: list[str] = []

    def walk(a, b, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k, _ABSENT), b.get(k, _ABSENT), f"{path}.{k}" if path else str(k))
        elif a != b:
            show = lambda v: "absent" if v is _ABSENT else json.dumps(v)  # noqa: E731
            out.append(f"{path}: {show(a)} -> {show(b)}")

    walk(results_view(old), results_view(new), "")
    return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])


_ABSENT = object()


# a scorer's settings that decide only where, how widely and on what it runs, not what it writes
# (OCR's runtime: OpenVINO and onnxruntime box the same at f32; its precision stays in the hash)
SCHEDULING_KEYS = ("actors", "num_cpus", "num_gpus", "threads", "runtime")


def pipeline_config_model() -> type[PipelineConfig]:
    """PipelineConfig with its `scorers` section, built from the scorers registered now."""
    from curate import registry

    return _pipeline_model(registry.version)


@functools.lru_cache(maxsize=4)
def _pipeline_model(version: int) -> type[PipelineConfig]:
    scorers = _scorers_model(version)
    return create_model("PipelineConfig", __base__=PipelineConfig, scorers=(scorers, Field(default_factory=scorers)))


def format_error(source: str, err: ValidationError, overrides: dict[str, str] | None = None) -> str:
    """The validation errors, each blamed on what set the key: the `--set` that did (`overrides`:
    dotted key -> the --set item), else `source` (the file)."""
    overrides = overrides or {}
    lines, blamed = [], set()
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "tagged-union")))
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        by = next((item for key, item in overrides.items() if loc == key or loc.startswith(key + ".")), None)
        blamed.add(f"--set {by!r}" if by else source)
        lines.append(f"  {loc}: {msg}" + (f" (from --set {by!r})" if by else ""))
    return "\n".join([f"invalid config {' and '.join(sorted(blamed))}:", *lines])


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{p}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        return key, yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load YAML (or defaults when path is None), apply `key.sub=value` overrides, validate."""
    return load_model(pipeline_config_model(), path, overrides)


RECIPES = Path(__file__).resolve().parent / "configs"  # shipped in the wheel as package data


def recipes() -> list[str]:
    """The names of the shipped recipes: `demo`, `svd`, `subsets/demo_clean`, `train/tiny`, ..."""
    return sorted(str(p.relative_to(RECIPES).with_suffix("")) for p in RECIPES.rglob("*.yaml"))


def resolve_config(path: str | Path) -> Path:
    """A YAML path as given, or else a shipped recipe by name (`svd`, `train/tiny`)."""
    p = Path(path)
    name = str(path).removesuffix(".yaml")
    bare = os.sep not in str(path) and not str(path).endswith((".yaml", ".yml"))
    if bare and name in recipes():  # a recipe by name, even beside a file of that name (./demo reads the file)
        if p.exists():
            logging.getLogger("curate").warning("reading the recipe %s, not the file ./%s (name it ./%s to read that)",
                                                name, path, path)  # fmt: skip
        return RECIPES / f"{name}.yaml"
    if p.is_file():
        return p
    if name in recipes():
        return RECIPES / f"{name}.yaml"
    raise ConfigError(f"config file not found: {p} (nor a recipe of that name; recipes: {', '.join(recipes())})")


BASE_KEY = "base"  # a YAML's top-level `base: RECIPE` starts from that recipe (or file)


def _read_yaml(path: str | Path, chain: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    """A config file's mapping, with its `base` (a recipe name or a path, itself possibly based)
    read first and the file's keys merged over it, mapping by mapping."""
    p = resolve_config(path)
    if str(p) in chain:
        raise ConfigError(f"config {p}: `{BASE_KEY}` loops back to itself ({' -> '.join([*chain, str(p)])})")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config {p} is not valid YAML: {e}") from e
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {p}: top level must be a mapping, got {type(loaded).__name__}")
    if BASE_KEY not in loaded:
        return loaded, str(p)
    base = loaded.pop(BASE_KEY)
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config {p}: `{BASE_KEY}` must name a recipe or a YAML file")
    if not os.path.isabs(base) and os.sep in base and (p.parent / base).is_file():
        base = str(p.parent / base)  # a path beside the file that names it
    data, _ = _read_yaml(base, (*chain, str(p)))
    return _merged(data, loaded), str(p)


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_model(model: type[BaseModel], path: str | Path | None, overrides: list[str] | None = None):
    """Any strict config model from YAML plus overrides; errors name the file and the key."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        data, source = _read_yaml(path, ())
    given: dict[str, str] = {}
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
        given[key] = item
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_error(source, e, given)) from None
