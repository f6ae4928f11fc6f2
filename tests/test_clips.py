import av
import numpy as np
import pytest

from curate.clips import ClipSpan, copy_start, extract, plan_clips
from curate.config import ClipsParams
from curate.video import VideoInfo, probe


def cfr_info(n: int, fps: float = 10.0, keyframes=(0,)) -> VideoInfo:
    return VideoInfo(codec="h264", pix_fmt="yuv420p", width=64, height=64, coded_width=64, coded_height=64,
                     rotation=0, fps=fps, variable_fps=False, n_frames=n, duration_s=n / fps, start_offset_s=0.0,
                     frame_times=[i / fps for i in range(n)], keyframes=list(keyframes))  # fmt: skip


def test_long_scene_is_chunked_and_short_remainder_dropped():
    info = cfr_info(250)  # 25 s at 10 fps, one scene
    clips, dropped, _ = plan_clips(info, [], 250, ClipsParams(min_s=2, max_s=10))
    assert [(c.start, c.end) for c in clips] == [(0, 100), (100, 200), (200, 250)]
    clips, _, _ = plan_clips(info, [], 250, ClipsParams(min_s=6, max_s=10))
    assert [(c.start, c.end) for c in clips] == [(0, 100), (100, 200)]  # 5 s remainder < min_s
    assert dropped == 0


def test_short_scenes_are_dropped_and_counted():
    info = cfr_info(100)
    clips, dropped, _ = plan_clips(info, [15, 40], 100, ClipsParams(min_s=2, max_s=10))
    assert [(c.start, c.end) for c in clips] == [(15, 40), (40, 100)]  # 1.5 s first scene is short
    assert dropped == 1
    clips, dropped, _ = plan_clips(info, [15, 40], 100, ClipsParams(min_s=3, max_s=10))
    assert [(c.start, c.end) for c in clips] == [(40, 100)] and dropped == 2


def test_trim_removes_frames_at_scene_edges():
    clips, _, _ = plan_clips(cfr_info(100), [50], 100, ClipsParams(min_s=1, max_s=10, trim_s=0.5))
    assert [(c.start, c.end) for c in clips] == [(5, 45), (55, 95)]


def test_vfr_durations_use_real_timestamps():
    info = cfr_info(100)
    info.frame_times = [i / 10 + (1.0 if i >= 50 else 0.0) for i in range(100)]  # a 1 s gap at 50
    info.duration_s = info.frame_times[-1] + 0.1
    clips, _, _ = plan_clips(info, [], 100, ClipsParams(min_s=1, max_s=5))
    for c in clips:
        end_t = info.frame_times[c.end] if c.end < 100 else info.duration_s
        assert end_t - info.frame_times[c.start] <= 5 + 1e-6


def test_copy_start_snaps_back_to_keyframe():
    info = cfr_info(200, keyframes=(0, 48, 96, 144))
    assert copy_start(info, 50) == 48 and copy_start(info, 48) == 48 and copy_start(info, 10) == 0


def decode(path: str) -> list[np.ndarray]:
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24").astype(np.int16) for f in c.decode(video=0)]


def keyframe_flags(path: str) -> list[bool]:
    with av.open(path) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264"
        return [p.is_keyframe for p in c.demux(s) if p.size]


def best_match(frame: np.ndarray, ref: list[np.ndarray]) -> int:
    return int(np.argmin([np.abs(frame - r).mean() for r in ref]))


@pytest.mark.parametrize("mode", ["exact", "smart"])
def test_frame_accurate_modes_start_on_the_intended_frame(tmp_path, three_shots, mode):
    # 'moving' scene 3 pans 1 px/frame, so every frame is distinct; keyframes every 48 frames.
    info = probe(three_shots.path)
    ref = decode(three_shots.path)
    span = ClipSpan(170, 270)  # inner keyframes 192 and 240: smart copies [192, 240)
    start, used = extract(three_shots.path, str(tmp_path / "c.mp4"), info, span, ClipsParams(mode=mode))
    assert (start, used) == (170, mode)
    out = decode(str(tmp_path / "c.mp4"))
    assert len(out) == span.end - span.start
    for i in (0, 1, 21, 22, 50, 70, 71, len(out) - 1):  # around both GOP seams
        assert best_match(out[i], ref[160:280]) + 160 == span.start + i
    assert keyframe_flags(str(tmp_path / "c.mp4"))[0]


def test_copy_mode_records_the_real_keyframe_start(tmp_path, three_shots):
    info = probe(three_shots.path)
    ref = decode(three_shots.path)
    start, used = extract(three_shots.path, str(tmp_path / "c.mp4"), info, ClipSpan(200, 260), ClipsParams(mode="copy"))
    assert (start, used) == (192, "copy")
    out = decode(str(tmp_path / "c.mp4"))
    assert len(out) == 260 - 192
    assert np.abs(out[0] - ref[192]).mean() == 0  # stream copy: bit-exact
    assert keyframe_flags(str(tmp_path / "c.mp4"))[0]


def test_non_h264_source_falls_back_to_exact_h264(tmp_path, synth_dir):
    from curate.synth import Scene, make_video

    v = make_video(str(synth_dir / "mpeg4.mp4"), [Scene("moving", 3.0, seed=9, speed_px=2.0)], codec="mpeg4")
    info = probe(v.path)
    assert info.codec == "mpeg4"
    start, used = extract(v.path, str(tmp_path / "c.mp4"), info, ClipSpan(10, 40), ClipsParams(mode="copy"))
    assert (start, used) == (10, "exact")
    assert keyframe_flags(str(tmp_path / "c.mp4"))[0]
    assert len(decode(str(tmp_path / "c.mp4"))) == 30


def test_rotated_source_clip_is_upright(tmp_path, shared_data):
    path = str(shared_data / "videos" / "pyscenedetect__issue-134-rotate.mp4")
    info = probe(path)
    extract(path, str(tmp_path / "c.mp4"), info, ClipSpan(0, 24), ClipsParams(mode="smart"))
    out = decode(str(tmp_path / "c.mp4"))
    assert out[0].shape[:2] == (info.height, info.width) == (1280, 544)
