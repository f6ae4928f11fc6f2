"""Faults: garbage inputs, hostile names, kills, multi-node Ray, object storage, path safety."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate import schema
from curate.config import load_config
from curate.shards import read_shards
from curate.storage import InputError, resolve_inputs
from curate.synth import Scene, encode, render_scene
from pipelines.run import run
from tests.conftest import DATA, clip_set

ROOT = Path(__file__).parents[1]
NO_SCORERS = ["scorers.flow.enabled=false", "scorers.ocr.enabled=false", "scorers.quality.enabled=false"]


def cfg(*sets):
    return load_config(None, ["executor=local", "clips.min_s=1", "clips.max_s=3", "shards.max_rows=2", *NO_SCORERS, *sets])


def quarantine(out) -> dict[str, str]:
    return {Path(r["source_uri"]).name: r["reason"] for r in pq.read_table(Path(out) / "quarantine.parquet").to_pylist()}


def test_edge_inputs_end_as_quarantine_or_correct_clips(tmp_path, synth_dir, three_shots, text_video):
    d = tmp_path / "in"
    d.mkdir()
    one = render_scene(Scene("static", 1.0, seed=3), 1, 64, 48)
    encode(str(d / "single_frame.mp4"), one, 24.0)
    shutil.copy(three_shots.path, d / "ünïcödé – 名前.mp4")
    shutil.copy(text_video.path, d / '"; rm -rf ~ #.mp4')  # a name that would hurt in a shell
    os.mkfifo(d / "pipe.mp4")  # would block a demuxer forever
    big = np.zeros((2, 4320, 7680, 3), np.uint8)
    big[:, :, 3840:] = 200
    encode(str(d / "eight_k.mp4"), big, 2.0)
    out = tmp_path / "out"
    run(cfg("probe.max_pixels=8294400"), resolve_inputs([str(d)]), str(out))  # 4K limit
    assert quarantine(out) == {"pipe.mp4": schema.Q_UNREADABLE, "eight_k.mp4": schema.Q_TOO_LARGE}
    rows = read_shards(str(out)).to_pylist()
    names = {Path(r["source_uri"]).name for r in rows}
    assert names == {"ünïcödé – 名前.mp4", '"; rm -rf ~ #.mp4'}  # single frame: too short for a clip
    for r in rows:
        assert Path(r["clip_uri"]).resolve().is_relative_to(out.resolve())
    m = (out / "manifest.json").read_text()
    assert '"short_scenes_dropped": 1' in m  # the single-frame video: counted, not lost


def test_eight_k_is_decoded_downscaled_when_allowed(tmp_path):
    big = np.zeros((4, 4320, 7680, 3), np.uint8)
    big[2:] = 255  # a cut from black to white at frame 2
    encode(str(tmp_path / "eight_k.mp4"), big, 4.0)
    out = tmp_path / "out"
    run(cfg("clips.min_s=0.5", "clips.mode=exact"), [str(tmp_path / "eight_k.mp4")], str(out))
    rows = sorted((r["start_frame"], r["end_frame"], r["width"]) for r in read_shards(str(out)).to_pylist())
    assert rows == [(0, 2, 7680), (2, 4, 7680)]


def test_per_input_timeout_quarantines(tmp_path, three_shots):
    out = tmp_path / "out"
    run(cfg("input_timeout_s=0.001"), [three_shots.path], str(out))
    assert quarantine(out) == {Path(three_shots.path).name: schema.Q_TIMEOUT}


def test_manifest_cannot_point_outside_its_directory(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "m.txt").write_text("../secret.mp4\n")
    with pytest.raises(InputError, match="outside the manifest's directory"):
        resolve_inputs([str(tmp_path / "lists" / "m.txt")])


def test_no_shell_anywhere():
    for p in [*ROOT.glob("curate/*.py"), *ROOT.glob("pipelines/*.py"), *ROOT.glob("scoring/*.py")]:
        text = p.read_text()
        assert "shell" + "=True" not in text and "os.system(" not in text, p  # (split: this file is grepped too)


@pytest.mark.slow
def test_sigkill_of_the_driver_then_resume_is_exactly_once(tmp_path, three_shots, text_video, fade_video):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k, v in enumerate([three_shots, text_video, fade_video, three_shots, text_video]):
        shutil.copy(v.path, inputs / f"v{k}.mp4")
    shutil.copy(DATA / "counter.mp4", inputs / "counter.mp4")
    args = ["-i", str(inputs), "--set", "executor=local", "--set", "clips.min_s=1", "--set", "clips.max_s=3",
            "--set", "shards.max_rows=1", "--set", "clips.mode=exact", *[x for s in NO_SCORERS for x in ("--set", s)]]  # fmt: skip
    cli = [sys.executable, "-m", "curate_cli.main", "run", str(ROOT / "curate" / "configs" / "demo.yaml")]
    clean = tmp_path / "clean"
    subprocess.run([*cli, *args, "-o", str(clean)], check=True, capture_output=True, env={**os.environ, "CI": "true"})
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cli, *args, "-o", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "CI": "true"})  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((killed / "_commits").glob("commit-*.json"))) < 2:
        try:  # wait on the process itself between looks at the commits on disk
            proc.wait(timeout=0.05)
            pytest.fail("the run finished before it could be killed")
        except subprocess.TimeoutExpired:
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = clip_set(killed) if (killed / "shards").exists() else set()
    assert partial < clip_set(clean)  # died part-way
    subprocess.run([*cli, *args, "-o", str(killed)], check=True, capture_output=True, env={**os.environ, "CI": "true"})
    assert clip_set(killed) == clip_set(clean)
    ids = [r["clip_id"] for r in read_shards(str(killed)).to_pylist()]
    assert len(ids) == len(set(ids))
    assert not list((killed / "shards" / ".tmp").glob("*"))
    # every clip file a row names exists and is complete (no .part leftovers)
    for r in read_shards(str(killed)).to_pylist():
        assert Path(r["clip_uri"]).is_file()
    assert not list(killed.glob("clips/*/.*.part"))


def test_object_storage_inputs_and_outputs_with_resume(tmp_path, s3, three_shots, text_video, bad_inputs):
    for name, path in (("a/three.mp4", three_shots.path), ("b/text.mp4", text_video.path), ("b/zero.mp4", str(bad_inputs["empty"]))):
        s3.upload_file(path, "corpus", f"raw/{name}")
    local = tmp_path / "local"
    run(cfg(), resolve_inputs([three_shots.path, text_video.path]), str(local))
    inputs = resolve_inputs(["s3://corpus/raw/"])
    assert sorted(inputs) == ["s3://corpus/raw/a/three.mp4", "s3://corpus/raw/b/text.mp4", "s3://corpus/raw/b/zero.mp4"]
    first = run(cfg(), inputs[:2], "s3://corpus/out")  # a run that stops after two inputs ...
    again = run(cfg(), inputs, "s3://corpus/out")  # ... resumed with the full list
    assert (first.processed, again.skipped, again.processed) == (2, 2, 1)
    rows = read_shards("s3://corpus/out").to_pylist()
    assert {(r["clip_id"], r["start_frame"], r["end_frame"]) for r in rows} == clip_set(local)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="corpus", Prefix="out/")["Contents"]}
    for r in rows:
        assert r["clip_uri"].startswith("s3://corpus/out/clips/") and r["clip_uri"][len("s3://corpus/"):] in keys
    assert "out/quarantine.parquet" in keys and "out/manifest.json" in keys
    assert not [k for k in keys if "/.tmp/" in k and not k.endswith("/")]  # (directory markers aside)


@pytest.mark.slow
def test_multi_node_cluster_gives_the_local_result(tmp_path, three_shots, text_video, fade_video):
    """Two Ray nodes on this machine (ray.cluster_utils.Cluster); the CLI attaches with --ray-address."""
    from ray.cluster_utils import Cluster

    inputs = tmp_path / "in"
    inputs.mkdir()
    for v in (three_shots, text_video, fade_video):
        shutil.copy(v.path, inputs / Path(v.path).name)
    shutil.copy(DATA / "counter.mp4", inputs / "counter.mp4")
    sets = ["clips.min_s=1", "clips.max_s=3", "scorers.ocr.enabled=false"]
    demo = ROOT / "curate" / "configs" / "demo.yaml"
    run(load_config(demo, ["executor=local", *sets]), resolve_inputs([str(inputs)]), str(tmp_path / "local"))
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        args = [sys.executable, "-m", "curate_cli.main", "run", str(ROOT / "curate" / "configs" / "demo.yaml"), "-i", str(inputs),
                "-o", str(tmp_path / "cluster"), "--ray-address", cluster.address,
                *[x for s in [*sets, "ray.num_cpus=null"] for x in ("--set", s)]]  # fmt: skip
        proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "CI": "true"}, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    finally:
        cluster.shutdown()
    key = lambda out: sorted((r["clip_id"], r["start_frame"], r["end_frame"], round(r["flow_mean"], 5))  # noqa: E731
                             for r in read_shards(str(out)).to_pylist())  # fmt: skip
    assert key(tmp_path / "cluster") == key(tmp_path / "local")


@pytest.mark.slow
def test_remote_inputs_on_a_two_node_cluster_give_the_local_result(tmp_path, s3, three_shots, text_video):
    """The per-video stage owns the local copy of a remote input wherever Ray runs it."""
    from ray.cluster_utils import Cluster

    for name, path in (("a.mp4", three_shots.path), ("b.mp4", text_video.path)):
        s3.upload_file(path, "corpus", f"cluster/raw/{name}")
    run(cfg(), [three_shots.path, text_video.path], str(tmp_path / "local"))
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    before = set(tmp.glob("curate-in-*")) | set(tmp.glob("curate-video-*"))
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        args = [sys.executable, "-m", "curate_cli.main", "run", str(ROOT / "curate" / "configs" / "demo.yaml"),
                "-i", "s3://corpus/cluster/raw/", "-o", "s3://corpus/cluster/out", "--ray-address", cluster.address,
                *[x for s in ["clips.min_s=1", "clips.max_s=3", "shards.max_rows=2", "ray.num_cpus=null", *NO_SCORERS]
                  for x in ("--set", s)]]  # fmt: skip
        proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "CI": "true"}, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    finally:
        cluster.shutdown()
    assert clip_set("s3://corpus/cluster/out") == clip_set(tmp_path / "local")
    after = set(tmp.glob("curate-in-*")) | set(tmp.glob("curate-video-*"))
    assert after <= before  # every local copy of a remote input was removed
