"""Synthetic videos whose truth is known by construction (cuts, motion, text, fades).

Used by `curate demo` and by the tests. Scenes are rendered with numpy/OpenCV and encoded with
the ffmpeg binary (libx264, fixed GOP so that clips have inner keyframes for `smart` mode).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

import cv2
import numpy as np

from curate.video import ffmpeg_exe


@dataclass
class Scene:
    kind: str  # "moving" | "static" | "text" | "black"
    seconds: float
    seed: int = 0
    speed_px: float = 0.0  # texture motion in pixels per frame (moving)
    text: str = ""
    color: tuple[int, int, int] | None = None


@dataclass
class SynthVideo:
    path: str
    fps: float
    frames: int
    cuts: list[int]  # first frame of each new scene
    scenes: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, kind)
    gradual: list[tuple[int, int]] = field(default_factory=list)  # fade ranges (inclusive)


def _texture(seed: int, h: int, w: int) -> np.ndarray:
    """A smooth random colour texture of at least (h + 16, w + 16) pixels."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(h // 8 + 4, w // 8 + 4, 3), dtype=np.uint8)
    tex = cv2.resize(small, (w + 32, h + 32), interpolation=cv2.INTER_CUBIC)
    hue = rng.integers(0, 180)
    tint = np.zeros_like(tex)
    tint[..., 0] = hue
    tint[..., 1] = 150
    tint[..., 2] = 200
    tinted = cv2.cvtColor(tint, cv2.COLOR_HSV2BGR)
    return cv2.addWeighted(tex, 0.6, tinted, 0.4, 0)


def render_scene(scene: Scene, n: int, w: int, h: int) -> np.ndarray:
    """(n, h, w, 3) BGR frames of one scene."""
    frames = np.empty((n, h, w, 3), np.uint8)
    if scene.kind == "black":
        frames[:] = 0
        return frames
    if scene.color is not None and scene.kind == "static":
        frames[:] = np.array(scene.color, np.uint8)
        return frames
    travel = int(np.ceil(abs(scene.speed_px) * n)) if scene.kind == "moving" else 0
    tex = _texture(scene.seed, h, w + travel)  # wide enough that the pan never wraps
    for i in range(n):
        if scene.kind == "moving":
            dx = int(round(i * scene.speed_px))
            x0 = 8 + (dx if scene.speed_px >= 0 else travel + dx)  # a leftward pan starts at the right
            frame = tex[8:8 + h, x0:x0 + w].copy()
        else:
            frame = tex[8:8 + h, 8:8 + w].copy()
        if scene.kind == "text" or scene.text:
            text = scene.text or "CURATE DEMO"
            cv2.rectangle(frame, (0, h // 2 - 28), (w, h // 2 + 16), (255, 255, 255), -1)
            cv2.putText(frame, text, (12, h // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 0), 2, cv2.LINE_AA)
        frames[i] = frame
    return frames


def encode(path: str, frames: np.ndarray, fps: float, gop: int = 48, codec: str = "libx264") -> None:
    n, h, w, _ = frames.shape
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}", "-r", f"{fps}", "-i", "pipe:0",
        "-c:v", codec, *(["-preset", "veryfast", "-crf", "20", "-x264-params", "scenecut=0"] if codec == "libx264" else ["-q:v", "3"]),
        "-g", str(gop), "-pix_fmt", "yuv420p", "-f", "mp4", path,
    ]  # fmt: skip
    proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode(errors="replace"))


def make_video(path: str, scenes: list[Scene], fps: float = 24.0, size: tuple[int, int] = (320, 240),
               fade_frames: int = 0, gop: int = 48, codec: str = "libx264") -> SynthVideo:
    """Concatenate scenes with hard cuts, or, with `fade_frames`, fades through black."""
    w, h = size
    parts, cuts, spans, gradual = [], [], [], []
    pos = 0
    for k, sc in enumerate(scenes):
        n = int(round(sc.seconds * fps))
        frames = render_scene(sc, n, w, h)
        if fade_frames and k > 0:
            ramp = np.linspace(0, 1, fade_frames)[:, None, None, None]
            frames[:fade_frames] = (frames[:fade_frames] * ramp).astype(np.uint8)
            gradual.append((pos - fade_frames, pos + fade_frames - 1))
        if fade_frames and k < len(scenes) - 1:
            ramp = np.linspace(1, 0, fade_frames)[:, None, None, None]
            frames[-fade_frames:] = (frames[-fade_frames:] * ramp).astype(np.uint8)
        if k > 0:
            cuts.append(pos)
        spans.append((pos, pos + n, sc.kind))
        parts.append(frames)
        pos += n
    allf = np.concatenate(parts)
    encode(path, allf, fps, gop=gop, codec=codec)
    return SynthVideo(path=path, fps=fps, frames=len(allf), cuts=cuts if not fade_frames else [], scenes=spans, gradual=gradual)


def demo_corpus(directory: str) -> list[SynthVideo]:
    """The generated part of the demo corpus: known cuts, static scenes, text, a fade."""
    import os

    os.makedirs(directory, exist_ok=True)
    j = lambda name: os.path.join(directory, name)  # noqa: E731
    return [
        make_video(j("three_shots.mp4"), [
            Scene("moving", 4.0, seed=1, speed_px=3.0),
            Scene("static", 3.0, seed=2),
            Scene("moving", 5.0, seed=3, speed_px=1.0),
        ]),
        make_video(j("static_then_text.mp4"), [
            Scene("static", 4.5, seed=4),
            Scene("text", 4.0, seed=5, text="SALE 50% OFF"),
        ]),
        make_video(j("fade_through_black.mp4"), [
            Scene("moving", 4.0, seed=6, speed_px=2.0),
            Scene("moving", 4.0, seed=7, speed_px=2.0),
        ], fade_frames=12),
        make_video(j("long_pan.mp4"), [Scene("moving", 14.0, seed=8, speed_px=2.0)]),
    ]


HUES = {"red": 0, "yellow": 30, "green": 60, "cyan": 90, "blue": 120, "magenta": 150}


def captioned_clips(directory: str, n: int, kind: str = "clean", seed: int = 0, size: tuple[int, int] = (64, 64),
                    seconds: float = 2.0, fps: float = 8.0) -> list[dict]:
    """Short clips with true captions, as a curate subset's rows (for trainer tests and demos).

    clean: a coloured texture panning left or right ("a red texture moving right");
    static: the same textures, still; text: a still texture under a large text overlay. The
    captions of the defective kinds say what a clean clip would be, as a bad caption source does.
    """
    import os

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        colour = list(HUES)[int(rng.integers(len(HUES)))]
        direction = ["left", "right"][int(rng.integers(2))]
        speed = 1.5 if direction == "right" else -1.5
        kind_k = kind
        scene = Scene("moving" if kind_k == "clean" else "static", seconds, seed=int(rng.integers(1 << 30)), speed_px=speed,
                      text="BUY NOW 50%" if kind_k == "text" else "")
        frames = render_scene(scene, int(round(seconds * fps)), *size)
        tint = np.zeros_like(frames[0])
        tint[..., 0], tint[..., 1], tint[..., 2] = HUES[colour], 200, 220
        tinted = cv2.cvtColor(tint, cv2.COLOR_HSV2BGR)
        frames = np.stack([cv2.addWeighted(f, 0.5, tinted, 0.5, 0) for f in frames])
        if kind_k == "text":
            for f in frames:
                cv2.rectangle(f, (0, size[1] // 2 - 14), (size[0], size[1] // 2 + 10), (255, 255, 255), -1)
                cv2.putText(f, "SALE", (4, size[1] // 2 + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 2)
        path = os.path.join(directory, f"{kind}-{seed}-{k:04d}.mp4")
        encode(path, frames, fps, gop=16)
        rows.append({"clip_id": f"{kind}-{seed}-{k:04d}", "clip_uri": path, "start_frame": 0, "end_frame": len(frames),
                     "fps": fps, "duration_s": len(frames) / fps, "caption": f"a {colour} texture moving {direction}"})  # fmt: skip
    return rows


# Near-duplicate variants of a clip, as web re-uploads make them (curate/dedup.py's truth set).
VARIANTS: dict[str, tuple[float, list[str]]] = {  # name -> (start shift in s, ffmpeg video filters / options)
    "base": (0.0, []),
    "crf": (0.0, ["-crf", "38"]),  # a heavy re-encode
    "half": (0.0, ["-vf", "scale=trunc(iw/4)*2:trunc(ih/4)*2"]),
    "double": (0.0, ["-vf", "scale=iw*2:ih*2"]),
    "crop": (0.0, ["-vf", "crop=trunc(iw*0.46)*2:trunc(ih*0.46)*2"]),  # 8% off, centred
    "crop_corner": (0.0, ["-vf", "crop=trunc(iw*0.47)*2:trunc(ih*0.47)*2:0:0"]),  # 6% off the right and bottom
    "logo": (0.0, ["-vf", "drawbox=x=iw*0.74:y=ih*0.05:w=iw*0.22:h=ih*0.14:color=white@0.85:t=fill,"
                          "drawbox=x=iw*0.76:y=ih*0.08:w=iw*0.18:h=ih*0.08:color=red@0.9:t=fill"]),
    "trim_later": (0.5, []),
    "trim_earlier": (-0.5, []),
}


def near_duplicates(source: str, start_s: float, seconds: float, directory: str, tag: str,
                    max_side: int = 480) -> list[str]:
    """Write every VARIANTS entry of the clip [start_s, start_s + seconds) of `source` (a real
    video) into `directory` as `<tag>__<variant>.mp4`; returns the paths. The base is scaled to
    at most `max_side` first, as a stored training clip would be."""
    import os

    os.makedirs(directory, exist_ok=True)
    paths = []
    fit = f"scale='if(gt(iw,ih),min({max_side},iw),-2)':'if(gt(iw,ih),-2,min({max_side},ih))'"
    for name, (shift, opts) in VARIANTS.items():
        start = max(0.0, start_s + shift)
        opts = list(opts)
        if "-vf" in opts:
            i = opts.index("-vf")
            opts[i + 1] = f"{fit},setsar=1,{opts[i + 1]}"
        else:
            opts = ["-vf", f"{fit},setsar=1", *opts]
        crf = [] if "-crf" in opts else ["-crf", "20"]
        path = os.path.join(directory, f"{tag}__{name}.mp4")
        subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-ss", f"{start:.3f}", "-i", source, "-t", f"{seconds:.3f}",
                        "-map", "0:v:0", "-an", *opts, "-c:v", "libx264", "-preset", "veryfast", *crf, "-pix_fmt", "yuv420p",
                        path], check=True, capture_output=True)  # fmt: skip
        paths.append(path)
    return paths
