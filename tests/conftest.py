"""Shared fixtures: environment, one Ray per session, synthetic videos with known truth."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402

from curate.synth import Scene, make_video  # noqa: E402
from curate.video import ffmpeg_exe  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATA = Path(__file__).resolve().parents[1] / "curate" / "data"


@pytest.fixture(autouse=True)
def _fail_on_error_logs(caplog):
    """Like PySceneDetect's suite: a test that logs at ERROR from curate fails."""
    yield
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR and r.name.startswith("curate")]
    assert not errors, f"ERROR logged: {[r.getMessage() for r in errors]}"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "truth.json").is_file():
        pytest.skip(f"real test videos not present at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def truth(shared_data) -> dict:
    return json.loads((shared_data / "truth.json").read_text())


@pytest.fixture(scope="session")
def ray_session():
    """Ray costs ~5 s and ~1.5 GB to start: once per test session."""
    from pipelines.graph import init_ray

    init_ray(None, num_cpus=2)
    yield
    import ray

    ray.shutdown()


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="session")
def three_shots(synth_dir):
    """Moving texture (4 s) | static (3 s) | slow pan (5 s) at 24 fps: cuts at 96 and 168."""
    return make_video(str(synth_dir / "three_shots.mp4"), [
        Scene("moving", 4.0, seed=1, speed_px=3.0),
        Scene("static", 3.0, seed=2),
        Scene("moving", 5.0, seed=3, speed_px=1.0),
    ])  # fmt: skip


@pytest.fixture(scope="session")
def text_video(synth_dir):
    return make_video(str(synth_dir / "text.mp4"), [Scene("static", 3.0, seed=4), Scene("text", 3.0, seed=5, text="HELLO 123")])


@pytest.fixture(scope="session")
def fade_video(synth_dir):
    return make_video(str(synth_dir / "fade.mp4"), [
        Scene("moving", 3.0, seed=6, speed_px=2.0), Scene("moving", 3.0, seed=7, speed_px=2.0),
    ], fade_frames=12)  # fmt: skip


def run_ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="session")
def bad_inputs(synth_dir, three_shots) -> dict[str, Path]:
    """One file per bad-input kind, named by the quarantine reason it must produce."""
    d = synth_dir / "bad"
    d.mkdir()
    good = Path(three_shots.path).read_bytes()
    files = {}
    (d / "zero.mp4").write_bytes(b"")
    files["empty"] = d / "zero.mp4"
    (d / "random.mp4").write_bytes(os.urandom(40_000))
    files["unreadable"] = d / "random.mp4"
    (d / "notes.mp4").write_text("this is a text file, not a video\n" * 100)
    files["unreadable_text"] = d / "notes.mp4"
    # moov-less: the first 40% of a faststart-less mp4 is mdat with no index
    run_ffmpeg("-i", three_shots.path, "-c", "copy", "-movflags", "-faststart", str(d / "tail_moov.mp4"))
    data = (d / "tail_moov.mp4").read_bytes()
    (d / "truncated_moovless.mp4").write_bytes(data[: len(data) // 2])
    files["truncated_moovless"] = d / "truncated_moovless.mp4"
    run_ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", str(d / "audio_only.mp4"))
    files["no_video_stream"] = d / "audio_only.mp4"
    files["missing"] = d / "does_not_exist.mp4"
    # truncated mid-mdat but with the index up front: decodes partially -> clips from what decodes
    run_ffmpeg("-i", three_shots.path, "-c", "copy", "-movflags", "+faststart", str(d / "faststart.mp4"))
    data = (d / "faststart.mp4").read_bytes()
    (d / "truncated_mid_mdat.mp4").write_bytes(data[: int(len(data) * 0.6)])
    files["truncated_mid_mdat"] = d / "truncated_mid_mdat.mp4"
    assert good
    return files


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    pytest.importorskip("torch", reason="model stages need the 'models' extra (torch, open_clip, transformers)")
    from tests.tiny_models import build_all

    return build_all(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture()
def s3(monkeypatch):
    """A throwaway S3 server on 127.0.0.1 (moto), with the env pyarrow and boto3 read."""
    import socket

    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    client = boto3.client("s3")
    client.create_bucket(Bucket="corpus")
    yield client
    server.stop()


# Float scores from model stages (float32 matmuls, reductions) depend on how rows are batched and
# on thread counts: Ray groups rows into batches differently from the local loop, and a sum over
# hundreds of float32 terms taken in another order moves the 7th significant digit (measured:
# clip_sim 0.05653177 on Ray vs 0.05653176 local). 1e-5 relative (about 80 float32 ulps) allows
# that reordering and nothing a real bug would produce. Everything else (ids, spans, strings,
# counts, integers) must match exactly.
FLOAT_RTOL = 1e-5
FLOAT_ATOL = 1e-6


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    """Rows equal column by column: exact except floats (see FLOAT_RTOL for why)."""
    import math

    assert len(got) == len(want)

    def same(a, b) -> bool:
        if isinstance(a, float) or isinstance(b, float):
            if a is None or b is None:
                return a is b
            return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=FLOAT_RTOL, abs_tol=FLOAT_ATOL)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return a == b

    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        bad = [k for k in g if not same(g[k], w[k])]
        assert not bad, {k: (g[k], w[k]) for k in bad}


def one_line_error(result, *needles, code=2):
    """A CLI result that is curate's one-line error (exit `code`, no traceback) naming each of `needles`."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    for n in needles:
        assert n in result.output, result.output


def clip_set(out) -> set[tuple]:
    """An OUT's committed clips as (clip_id, start_frame, end_frame)."""
    from curate.shards import read_shards

    return {(r["clip_id"], r["start_frame"], r["end_frame"]) for r in read_shards(str(out)).to_pylist()}
