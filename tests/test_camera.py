"""Camera motion apart from object motion (scoring/camera.py): a generated truth of real frames
moved by known camera paths, and real clips labelled by looking (tests/data/camera_labels.json)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from curate import schema
from curate.sample import decode_frames
from scoring.camera import LABELS, CameraParams, CameraScorer
from tests.conftest import SHARED

FPS = 4.0  # the scorer's sampling rate: frames of the generated clips come 1/4 s apart


def render(img: np.ndarray, label: str, speed: float, seed: int, objects: bool = False, n: int = 9,
           size: tuple[int, int] = (160, 90)) -> np.ndarray:
    """`n` frames of `img` as a camera moving as `label` sees it (`speed`: frame widths per second
    for pans and tilts; the zooms and the roll scale with it), `objects`: two real patches of the
    picture walking across the view."""
    rng = np.random.default_rng(seed)
    big_h, big_w = img.shape[:2]
    w, h = size
    view = big_w * 0.55  # the camera sees a window this wide, moved, scaled, turned
    frames = []
    for k in range(n):
        t = k / FPS
        dx, dy = {"pan_right": (speed * view * t, 0), "pan_left": (-speed * view * t, 0), "tilt_down": (0, speed * view * t),
                  "tilt_up": (0, -speed * view * t), "complex": (speed * view * t, 0)}.get(label, (0.0, 0.0))  # fmt: skip
        if label == "shaky":
            dx, dy = rng.normal(0, 0.02 * view, 2)
        zoom = {"zoom_in": np.exp(-2 * speed * t), "zoom_out": np.exp(2 * speed * t), "complex": np.exp(-2 * speed * t)}.get(label, 1.0)
        angle = 25 * speed / 0.12 * t if label == "roll" else 0.0
        cx, cy = big_w / 2 + dx, big_h / 2 + dy
        m = cv2.getRotationMatrix2D((cx, cy), angle, w / (view * zoom))
        m[:, 2] += np.array([w / 2 - cx, h / 2 - cy])
        f = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
        if objects:
            for j, (y0, v) in enumerate(((0.25, 0.35), (0.6, -0.3))):
                side = w // 5
                patch = cv2.resize(img[(j + 1) * big_h // 5:(j + 1) * big_h // 5 + big_h // 4, big_w // 3:big_w // 3 + big_w // 4], (side, side))
                x = int(((0.1 if v > 0 else 0.9) + v * t) * w) % (w - side)
                y = int(y0 * h)
                f[y:y + side, x:x + side] = patch[: h - y]
        frames.append(f)
    return np.stack(frames)


def pictures() -> list[np.ndarray]:
    """Real frames with texture (a flat one shows no motion to anyone), or where ../shared/data
    is absent, the synthetic textures of curate.synth."""
    if not (SHARED / "truth.json").is_file():
        from curate.synth import _texture

        return [cv2.cvtColor(_texture(s, 360, 640)[:360, :640], cv2.COLOR_BGR2RGB) for s in range(4)]
    out = []
    for p in sorted((SHARED / "videos").iterdir()):
        try:
            got, _ = decode_frames(str(p), {20}, ["pyav", "opencv"])
        except Exception:  # noqa: BLE001 - a file of fewer frames
            continue
        img = next(iter(got.values()))
        if cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).std() >= 20:  # the counter's flat grey, a black frame: out
            out.append(img)
    return out


def f1_per_label(truth: list[str], got: list[str]) -> dict[str, float]:
    out = {}
    for lab in LABELS:
        tp = sum(t == g == lab for t, g in zip(truth, got))
        wrong = sum((t == lab) != (g == lab) for t, g in zip(truth, got))
        out[lab] = 2 * tp / (2 * tp + wrong) if tp else 0.0
    return out


@pytest.fixture(scope="module")
def scorer() -> CameraScorer:
    s = CameraScorer(CameraParams())
    s.setup()
    return s


def test_known_camera_paths_over_real_frames(scorer):
    truth, got, told = [], [], []
    for i, img in enumerate(pictures()):
        for label in LABELS:
            for speed in (0.08, 0.2):
                r = scorer.score(render(img, label, speed, seed=i), np.arange(9) * 6, 24.0)
                truth.append(label)
                got.append(r["camera_motion"])
        # a still camera over walking people against a pan over a still scene
        still = scorer.score(render(img, "static", 0, seed=i, objects=True), np.arange(9) * 6, 24.0)
        pan = scorer.score(render(img, "pan_right", 0.1, seed=i), np.arange(9) * 6, 24.0)
        told += [still["camera_motion"] == "static" and still["object_motion"] > pan["object_motion"],
                 pan["camera_motion"] == "pan_right" and pan["camera_speed"] > still["camera_speed"]]
    f1 = f1_per_label(truth, got)
    assert np.mean(list(f1.values())) >= 0.90, f1
    assert np.mean(told) >= 0.95, told
    # the units do not depend on the frame rate: the same motion sampled from a 60 fps clip
    img = pictures()[0]
    a = scorer.score(render(img, "pan_left", 0.15, seed=0), np.arange(9) * 6, 24.0)
    b = scorer.score(render(img, "pan_left", 0.15, seed=0), np.arange(9) * 15, 60.0)
    assert a == b


def test_real_clips_labelled_by_looking(shared_data, tmp_path):
    from curate.config import load_config
    from curate.shards import read_shards
    from pipelines.run import run

    labels = json.loads((Path(__file__).parent / "data" / "camera_labels.json").read_text())
    wanted: dict[str, list] = {}
    for label in ("static", "shaky"):
        for item in labels[label]:
            name, span = (item, None) if isinstance(item, str) else (item[0], item[1:])
            wanted.setdefault(name, []).append((label, span))
    cfg = load_config("demo", ["executor=local", "clips.mode=deferred", "scorers.ocr.enabled=false", "scorers.phash.enabled=false"])
    run(cfg, [str(shared_data / "videos" / n) for n in wanted], str(tmp_path / "out"))
    agree = []
    for r in read_shards(str(tmp_path / "out")).to_pylist():
        for label, span in wanted[Path(r[schema.SOURCE_URI]).name]:
            if span is None or (r[schema.START_FRAME], r[schema.END_FRAME]) == tuple(span):
                agree.append(r["camera_motion"] == label)
    assert len(agree) >= 60 and np.mean(agree) >= 0.85, (np.mean(agree), len(agree))


def test_camera_columns_reach_select_and_the_export_caption(tmp_path, three_shots):
    from typer.testing import CliRunner

    from curate.config import load_config
    from curate.dataset import read_rows
    from curate_cli.main import app
    from pipelines.run import run

    cfg = load_config("demo", ["executor=local", "scorers.ocr.enabled=false", "clips.min_s=1", "clips.max_s=3"])
    run(cfg, [three_shots.path], str(tmp_path / "out"))
    runner = CliRunner()
    r = runner.invoke(app, ["select", "-s", str(tmp_path / "out"), "-o", str(tmp_path / "sub"), "--where", "camera_motion != 'shaky'"])
    assert r.exit_code == 0, r.output
    rows = read_rows(tmp_path / "sub").to_pylist()
    assert rows and all(x["camera_motion"] in LABELS and x["camera_motion"] != "shaky" for x in rows)
    # the moving texture (3 px a frame at 24 fps, 320 px wide: 0.22 widths a second) is a pan; the still shot is static
    assert {x["camera_motion"] for x in rows if x[schema.START_FRAME] >= 96 and x[schema.END_FRAME] <= 168} == {"static"}
    template = "camera: {camera_motion}; motion: {object_motion:.3f}"
    r = runner.invoke(app, ["export", str(tmp_path / "sub"), "-o", str(tmp_path / "exp"), "--caption-template", template])
    assert r.exit_code == 0, r.output
    got = {x[schema.CLIP_ID]: x["caption"] for x in read_rows(tmp_path / "exp").to_pylist()}
    assert got == {x[schema.CLIP_ID]: f"camera: {x['camera_motion']}; motion: {x['object_motion']:.3f}" for x in rows}
    assert json.loads((tmp_path / "exp" / "index.json").read_text())["caption_template"] == template
    r = runner.invoke(app, ["export", str(tmp_path / "sub"), "-o", str(tmp_path / "exp2"), "--caption-template", "{caption}, {nope}"])
    assert r.exit_code == 2 and "no column 'nope'" in r.output


def test_a_score_does_not_depend_on_the_clips_before_it(scorer):
    """Each clip's flow starts from zeros: OpenCV's DIS started from nothing reuses what its last
    call left, and after frames of another size it crashed; clips of mixed sizes in any order
    score as they do alone."""
    img = pictures()[0]
    clips = [render(img, lab, 0.1, seed=1, size=size) for lab, size in (("pan_left", (160, 90)), ("zoom_in", (90, 160)),
                                                                     ("roll", (160, 120)), ("shaky", (160, 68)))]  # fmt: skip
    alone = [CameraScorer(CameraParams()) for _ in clips]
    for s in alone:
        s.setup()
    want = [s.score(c, np.arange(9) * 6, 24.0) for s, c in zip(alone, clips)]
    for order in ([0, 1, 2, 3, 2, 0, 3, 1], [3, 2, 1, 0, 1, 3]):
        assert [scorer.score(clips[k], np.arange(9) * 6, 24.0) for k in order] == [want[k] for k in order]
