import av
import cv2
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


# --- one decode per input (clips.extract_video) ------------------------------------------------


def _check_frames(src_frames: list[np.ndarray], clip_frames: list[np.ndarray], kept: list[int]) -> int:
    """Every stored frame is the source frame the plan says (the source scaled to the clip's size,
    best match among its neighbours); frames identical to a neighbour (a still) prove nothing and
    are not counted. Returns how many frames were checked."""

    h, w = clip_frames[0].shape[:2]
    small = {}

    def at(i: int) -> np.ndarray:
        if i not in small:
            f = src_frames[i].astype(np.uint8)
            small[i] = f.astype(np.int16) if f.shape[:2] == (h, w) else cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA).astype(np.int16)
        return small[i]

    checked = 0
    for j, src_i in enumerate(kept):
        near = [i for i in range(src_i - 3, src_i + 4) if 0 <= i < len(src_frames)]
        d = {i: np.abs(clip_frames[j] - at(i)).mean() for i in near}
        others = [d[i] for i in near if i != src_i and np.abs(at(i) - at(src_i)).mean() > 0.5]
        if len(others) < len(near) - 1:
            continue  # a neighbour looks the same: nothing to tell apart
        assert d[src_i] < min(others), f"stored frame {j} should be source frame {src_i}: {d}"
        checked += 1
    return checked


@pytest.mark.parametrize("kw", [{}, {"short_side": 96}, {"max_side": 200, "max_fps": 10.0}])
def test_one_pass_clips_are_frame_accurate(tmp_path, three_shots, kw):
    from curate.clips import extract_video, geometry, kept_frames
    from curate.sample import SamplePlan
    from curate.stage import unpack

    info = probe(three_shots.path)
    ref = decode(three_shots.path)
    spans = [ClipSpan(5, 60), ClipSpan(100, 150), ClipSpan(170, 270), ClipSpan(271, 288)]  # a gap, and touching
    params = ClipsParams(**kw)
    geo = geometry(info, params)
    plans = [SamplePlan("flow", fps=2.0, min_frames=2, short_side=16), SamplePlan("mid", positions=(0.5,))]
    files = extract_video(three_shots.path, info, spans, params, str(tmp_path), plans)
    checked = 0
    for span, f in zip(spans, files):
        assert f.error is None and f.path
        out = decode(f.path)
        kept = kept_frames(span, geo.rate)
        assert len(out) == len(kept) and out[0].shape[:2] == (geo.height, geo.width)
        assert keyframe_flags(f.path)[0]
        checked += _check_frames(ref, out, kept)
        # the scorers' frames come from the same decode: the stored frames at the plan's indices
        sample = unpack(f.sample)
        mid = int(sample["mid__idx"][0])
        assert mid == (len(kept) - 1) // 2 or mid == len(kept) // 2
        d = [np.abs(sample["mid"][0].astype(np.int16) - out[k]).mean() for k in (mid - 1, mid, mid + 1)]
        assert d[1] < min(d[0], d[2]) or span.start == 100  # that very frame (the static shot: any)
        assert list(sample["flow__idx"]) == SamplePlan("flow", fps=2.0, min_frames=2).indices(len(kept), geo.fps)
        assert sample["flow"].shape[1] == 16
    assert checked > 100 * (geo.rate or 1.0)
    if kw.get("max_fps"):
        assert geo.fps == 10.0 and len(decode(files[2].path)) == 42  # 100 frames at 24 fps -> 10 fps


def test_one_pass_real_videos_frame_accurate(tmp_path, shared_data):
    """Real footage: VFR with dropped frames, a rotated phone video, an AVI (MPEG-4 part 2), at
    source size (scaled, slow real motion is below what a comparison can tell apart from the
    scaler's own differences: the synthetic pan above covers scaling)."""
    from curate.clips import extract_video, geometry, kept_frames

    for name, kw in [("pyscenedetect__goldeneye-vfr-drop3.mp4", {}), ("pyscenedetect__issue-134-rotate.mp4", {}),
                     ("opencv__vtest.avi", {"max_fps": 4.0})]:  # fmt: skip
        path = str(shared_data / "videos" / name)
        info = probe(path)
        ref = decode(path)
        n = info.n_frames
        spans = [ClipSpan(a, min(n, a + 40)) for a in range(7, n - 20, 53)]
        params = ClipsParams(**kw)
        geo = geometry(info, params)
        files = extract_video(path, info, spans, params, str(tmp_path / name))
        if info.rotation:  # PyAV hands the stored (unrotated) frames; the clips are upright
            assert (geo.width < geo.height) == (info.width < info.height) and ref[0].shape[0] < ref[0].shape[1]
            first = decode(files[0].path)[0]
            k = min((1, 3), key=lambda k: np.abs(
                cv2.resize(np.rot90(ref[7], k).astype(np.uint8), first.shape[1::-1]).astype(np.int16) - first).mean())
            ref = [np.ascontiguousarray(np.rot90(f, k)) for f in ref]
        checked = 0
        for span, f in zip(spans, files):
            assert f.error is None, f.error
            out = decode(f.path)
            kept = kept_frames(span, geo.rate)
            assert len(out) == len(kept), name
            checked += _check_frames(ref, out, kept)
        assert checked >= len(spans) * 5, name


def test_samples_carried_within_a_budget_then_left_to_the_sample_step(tmp_path, three_shots, monkeypatch):
    """A very long input does not carry all its clips' frames in memory: past the budget its
    later clips come without samples, and the sample step decodes exactly those."""
    import pyarrow as pa

    from curate import clips, schema
    from curate.clips import extract_video
    from curate.sample import SampleParams, SamplePlan, SampleStage
    from curate.stage import binary_column, unpack

    monkeypatch.setattr(clips, "GROUP_CLIPS", 2)
    info = probe(three_shots.path)
    # the budget by the plan (one 64x48 frame per clip, as packed): two clips carry theirs
    monkeypatch.setattr(clips, "SAMPLE_BUDGET_BYTES", 2 * 64 * 48 * 3 - 1)
    spans = [ClipSpan(a, a + 30) for a in (0, 40, 100, 170, 220)]
    plan = SamplePlan("mid", positions=(0.5,), max_side=64)
    files = extract_video(three_shots.path, info, spans, ClipsParams(), str(tmp_path), [plan])
    assert [f.sample is not None for f in files] == [True, True, False, False, False]
    rows = pa.table({schema.CLIP_URI: [f.path for f in files], schema.START_FRAME: [s.start for s in spans],
                     schema.END_FRAME: [s.end for s in spans], schema.FPS: [24.0] * 5, schema.ERRORS: [[]] * 5,
                     schema.SAMPLES: binary_column([f.sample for f in files])})  # fmt: skip
    out = SampleStage(SampleParams(), [plan])(rows)
    blobs = out.column(schema.SAMPLES).to_pylist()
    assert blobs[:2] == [files[0].sample, files[1].sample]  # kept, not decoded again
    assert all(unpack(b)["mid"].shape == (1, 48, 64, 3) for b in blobs)
