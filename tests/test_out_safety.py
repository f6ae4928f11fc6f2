"""OUT is never corrupted: one writer, no self-ingestion, kills at every commit step, a full disk,
a killed Ray worker, and `curate verify` on whole and damaged outputs."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate_cli.main import app
from curate.lease import LeaseHeld, LeaseLost, LocalLease, S3Lease
from curate.shards import read_shards
from curate.storage import AlreadyExists, InputError, OutError, OutputStore, check_out_path, resolve_inputs
from curate.verify import verify
from pipelines.run import run
from tests.conftest import DATA, clip_set
from tests.test_reliability import NO_SCORERS, cfg

ROOT = Path(__file__).parents[1]
CLI = [sys.executable, "-m", "curate_cli.main", "run", str(ROOT / "curate" / "configs" / "demo.yaml")]
SETS = ["executor=local", "clips.min_s=1", "clips.max_s=3", "shards.max_rows=2", "shards.commit_every_videos=1",
        "clips.mode=exact", *NO_SCORERS]  # fmt: skip


def cli_args(inputs, out, *extra_sets):
    return [*CLI, "-i", str(inputs), "-o", str(out), *[x for s in [*SETS, *extra_sets] for x in ("--set", s)]]


def env(**kw):
    return {**os.environ, "CI": "true", **kw}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, three_shots, text_video, fade_video):
    d = tmp_path_factory.mktemp("safety") / "in"
    d.mkdir()
    for k, v in enumerate([three_shots, text_video, fade_video, three_shots, text_video]):
        shutil.copy(v.path, d / f"v{k}.mp4")  # v3, v4: byte-identical copies -> duplicate rows
    shutil.copy(DATA / "counter.mp4", d / "counter.mp4")
    return d


@pytest.fixture(scope="module")
def clean(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "out"
    subprocess.run(cli_args(corpus, out), check=True, capture_output=True, env=env())
    return out


def assert_whole(out, clean_out):
    """The resumed OUT is the uninterrupted one: same clips, no duplicates, no orphans, verified."""
    assert clip_set(out) == clip_set(clean_out)
    ids = [r["clip_id"] for r in read_shards(str(out)).to_pylist()]
    assert len(ids) == len(set(ids))
    named = {r["clip_uri"] for r in read_shards(str(out)).to_pylist()}
    on_disk = {str(p) for p in Path(out, "clips").rglob("*") if p.is_file()}
    assert on_disk == named  # no orphan, no .part leftover
    assert not list(Path(out, "shards", ".tmp").glob("*"))
    rep = verify(str(out))
    assert rep.ok, rep.problems
    assert rep.checked_files == len(clip_set(clean_out))


# -- one writer ------------------------------------------------------------------------------------


def test_second_run_on_a_busy_out_fails_at_once_naming_the_first(tmp_path, corpus, clean):
    out = tmp_path / "out"
    first = subprocess.Popen(cli_args(corpus, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env())
    lease = out / "_lease"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (lease.is_file() and lease.read_bytes()):
        try:
            first.wait(timeout=0.05)
            pytest.fail("the first run ended before it took the lease")
        except subprocess.TimeoutExpired:
            pass
    assert first.poll() is None  # still writing
    second = CliRunner().invoke(app, ["run", str(ROOT / "curate" / "configs" / "demo.yaml"), "-i", str(DATA / "counter.mp4"),
                                      "-o", str(out), *[x for s in SETS for x in ("--set", s)]])  # fmt: skip
    assert second.exit_code == 2
    assert f"pid {first.pid}" in second.output and "another curate run" in second.output
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert_whole(out, clean)
    assert lease.read_bytes() == b""  # released: no stale holder named next time


def test_the_lock_dies_with_its_holder(tmp_path):
    """SIGKILL never leaves a stale lock: the kernel drops the flock with the process."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from curate.lease import LocalLease; l = LocalLease(sys.argv[1]); l.acquire(); "
        "print('held', flush=True); sys.stdin.read()"), str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)  # fmt: skip  (it holds the lock until killed)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LeaseHeld, match=f"pid {holder.pid} on "):
        LocalLease(str(out)).acquire()
    holder.kill()
    holder.wait()
    lease = LocalLease(str(out))
    lease.acquire()
    lease.release()


def test_commit_records_are_never_overwritten(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    store.create_exclusive(b"first", "_commits", "commit-000000.json")
    with pytest.raises(AlreadyExists):
        store.create_exclusive(b"second", "_commits", "commit-000000.json")
    assert store.read_bytes("_commits", "commit-000000.json") == b"first"
    assert store.list("_commits") == ["commit-000000.json"]  # no temp file left behind


def test_s3_lease_refuses_a_second_writer_and_the_first_result_is_complete(tmp_path, s3, three_shots, text_video, fade_video):
    for name, path in (("a.mp4", three_shots.path), ("b.mp4", text_video.path), ("c.mp4", fade_video.path)):
        s3.upload_file(path, "corpus", f"t1/raw/{name}")
    inputs = resolve_inputs(["s3://corpus/t1/raw/"])
    local = tmp_path / "local"
    run(cfg(), [three_shots.path, text_video.path, fade_video.path], str(local))
    held = threading.Event()
    result: dict = {}

    def first():
        from curate import lease as lease_mod

        original = lease_mod.S3Lease.acquire

        def acquire(self):  # signal once the lease is taken, then let the run go on
            original(self)
            held.set()

        lease_mod.S3Lease.acquire = acquire
        try:
            result["r"] = run(cfg(), inputs, "s3://corpus/t1/out")
        finally:
            lease_mod.S3Lease.acquire = original
            held.set()

    t = threading.Thread(target=first)
    t.start()
    assert held.wait(60)
    if t.is_alive():
        with pytest.raises(LeaseHeld, match=f"pid {os.getpid()} on .*renewed until"):
            run(cfg(), inputs[:1], "s3://corpus/t1/out")
    t.join(300)
    assert result["r"].processed == 3
    assert clip_set("s3://corpus/t1/out") == clip_set(local)
    assert "t1/out/_lease" not in {o["Key"] for o in s3.list_objects_v2(Bucket="corpus", Prefix="t1/out/")["Contents"]}
    assert verify("s3://corpus/t1/out", deep=True).ok


def test_s3_expired_lease_is_taken_over_and_a_lost_one_stops_commits(tmp_path, s3, three_shots, caplog):
    s3.upload_file(three_shots.path, "corpus", "t2/raw/a.mp4")
    stale = {"owner": "x", "host": "gone-host", "pid": 1, "since": 0, "expires": time.time() - 1}
    s3.put_object(Bucket="corpus", Key="t2/out/_lease", Body=json.dumps(stale).encode())
    r = run(cfg(), ["s3://corpus/t2/raw/a.mp4"], "s3://corpus/t2/out")
    assert r.processed == 1 and "took over the expired lease" in caplog.text
    # a writer whose lease object was replaced (it stalled past expiry) cannot commit any more
    lease = S3Lease("s3://corpus/t2/lost")
    lease.acquire()
    s3.put_object(Bucket="corpus", Key="t2/lost/_lease", Body=b"{}")  # someone else's now
    assert lease.renew() is False  # what the renewal thread does every ttl/3
    with pytest.raises(LeaseLost):
        lease.check()
    lease.release()
    store = OutputStore("s3://corpus/t2/out")
    with pytest.raises(AlreadyExists):
        store.create_exclusive(b"{}", "_commits", "commit-000000.json")


# -- no self-ingestion, OUT belongs to curate --------------------------------------------------------


def test_out_inside_the_input_directory_is_not_read_back(tmp_path, caplog, three_shots, text_video):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(three_shots.path, videos / "a.mp4")
    shutil.copy(text_video.path, videos / "b.mp4")
    out = videos / "curated"
    first = run(cfg(), resolve_inputs([str(videos)], str(out)), str(out))
    before = clip_set(out)
    again = resolve_inputs([str(videos)], str(out))
    assert sorted(Path(u).name for u in again) == ["a.mp4", "b.mp4"]
    assert "not reading curate output directories as inputs" in caplog.text
    second = run(cfg(), again, str(out))
    assert (first.processed, second.processed, second.skipped) == (2, 0, 2) and clip_set(out) == before
    # another curate output in the tree is skipped too, recognised by its files, not by its name
    shutil.copytree(out, videos / "old_run")
    assert sorted(Path(u).name for u in resolve_inputs([str(videos)])) == ["a.mp4", "b.mp4"]
    clip = next(out.rglob("*.mp4"))
    with pytest.raises(InputError, match="inside the output directory"):
        resolve_inputs([str(clip)], str(out))


def test_s3_out_under_the_input_prefix_is_not_read_back(s3, three_shots):
    s3.upload_file(three_shots.path, "corpus", "t3/raw/a.mp4")
    run(cfg(), resolve_inputs(["s3://corpus/t3/raw/"], "s3://corpus/t3/raw/curated"), "s3://corpus/t3/raw/curated")
    assert resolve_inputs(["s3://corpus/t3/raw/"], "s3://corpus/t3/raw/curated") == ["s3://corpus/t3/raw/a.mp4"]
    assert resolve_inputs(["s3://corpus/t3/raw/"]) == ["s3://corpus/t3/raw/a.mp4"]  # recognised by its _curate


def test_out_that_is_not_curates_is_refused_unless_forced(tmp_path, three_shots):
    foreign = tmp_path / "project"
    (foreign / "shards").mkdir(parents=True)
    (foreign / "shards" / "mine.parquet").write_bytes(b"user data")
    (foreign / "notes.txt").write_text("keep me")
    args = ["run", str(ROOT / "curate" / "configs" / "demo.yaml"), "-i", three_shots.path, *[x for s in SETS for x in ("--set", s)]]
    r = CliRunner().invoke(app, [*args, "-o", str(foreign)])
    assert r.exit_code == 2 and "not a curate output" in r.output and "--force" in r.output
    assert sorted(p.name for p in foreign.rglob("*")) == ["mine.parquet", "notes.txt", "shards"]
    r = CliRunner().invoke(app, [*args, "-o", str(foreign), "--force"])
    assert r.exit_code == 0, r.output
    assert (foreign / "shards" / "mine.parquet").read_bytes() == b"user data" and (foreign / "notes.txt").is_file()
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "manifest.json").write_text('{"name": "someone else"}')
    r = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "theirs"), "--force"])
    assert r.exit_code == 2 and "not curate's" in r.output
    assert (tmp_path / "theirs" / "manifest.json").read_text() == '{"name": "someone else"}'


@pytest.mark.parametrize("out", ["", "  ", "/", "s3://", "FILE"])
def test_out_values_that_are_mistakes_are_refused(tmp_path, out):
    if out == "FILE":
        out = str(tmp_path / "a_file")
        Path(out).write_text("x")
    with pytest.raises(OutError):
        check_out_path(out)


# -- kills at every step of a commit, a killed worker, a full disk -----------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before_parts@3", "between_parts@1", "before_record@2", "after_record@2",
                                   "between_moves@1", "before_compaction@1"])  # fmt: skip
def test_kill_at_every_commit_step_then_resume_is_exactly_once(tmp_path, corpus, clean, point):
    out = tmp_path / "out"
    killed = subprocess.run(cli_args(corpus, out), capture_output=True, env=env(CURATE_FAULT=point))
    assert killed.returncode == -9, killed.stderr[-2000:]  # it really died at that point
    partial = clip_set(out) if (out / "shards").exists() else set()
    assert partial <= clip_set(clean)
    for part in (out / "shards").glob("*.parquet"):  # readers only ever see whole files
        pq.read_table(part)
    resumed = subprocess.run(cli_args(corpus, out), capture_output=True, env=env())
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_whole(out, clean)


@pytest.mark.slow
def test_a_ray_worker_killed_mid_batch_is_retried_without_duplicates(tmp_path, corpus, clean):
    out = tmp_path / "out"
    once = tmp_path / "killed-once"
    p = subprocess.run(cli_args(corpus, out, "executor=ray", "ray.num_cpus=2"), capture_output=True, text=True,
                       env=env(CURATE_FAULT="worker", CURATE_FAULT_ONCE=str(once)), timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert once.exists()  # a worker did die mid-batch
    assert_whole(out, clean)


def test_full_disk_while_writing_parts_commits_nothing_half(tmp_path, corpus, clean, monkeypatch):
    out = tmp_path / "out"
    original = OutputStore.write_bytes
    calls = {"n": 0}

    def write_bytes(self, data, *parts):  # the disk fills up at the second part written after the first committed one
        if parts[:2] == ("shards", ".tmp") and any((out / "shards").glob("part-*.parquet")):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path(*parts))
        return original(self, data, *parts)

    monkeypatch.setattr(OutputStore, "write_bytes", write_bytes)
    args = ["run", str(ROOT / "curate" / "configs" / "demo.yaml"), "-i", str(corpus), "-o", str(out), *[x for s in SETS for x in ("--set", s)]]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and "No space left on device" in r.output and "resume" in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)  # one line, no traceback
    monkeypatch.undo()
    for part in (out / "shards").glob("*.parquet"):
        pq.read_table(part)
    committed = clip_set(out)
    assert committed and committed < clip_set(clean)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert_whole(out, clean)


# -- curate verify -----------------------------------------------------------------------------------


def test_verify_passes_on_a_whole_out_and_names_each_damage(tmp_path, clean):
    ok = CliRunner().invoke(app, ["verify", str(clean)])
    assert ok.exit_code == 0 and "ok" in ok.output

    def damaged(name):
        d = tmp_path / name
        shutil.copytree(clean, d)
        # rows record absolute clip paths: point the copy's rows at its own clips
        for part in (d / "shards").glob("*.parquet"):
            t = pq.read_table(part)
            uris = [u.replace(str(clean), str(d)) if u else u for u in t.column("clip_uri").to_pylist()]
            pq.write_table(t.set_column(t.schema.get_field_index("clip_uri"), "clip_uri", pa.array(uris, pa.string())), part)
        assert verify(str(d)).ok
        return d

    d = damaged("deleted_clip")
    victim = sorted((d / "clips").rglob("*.mp4"))[0]
    victim.unlink()
    r = CliRunner().invoke(app, ["verify", str(d)])
    assert r.exit_code == 1 and f"clip file {victim} is missing" in r.output

    d = damaged("truncated_shard")
    part = sorted((d / "shards").glob("*.parquet"))[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    r = CliRunner().invoke(app, ["verify", str(d)])
    assert r.exit_code == 1 and f"shards/{part.name} does not parse" in r.output

    d = damaged("duplicated_row")
    part = sorted((d / "shards").glob("*.parquet"))[0]
    t = pq.read_table(part)
    pq.write_table(pa.concat_tables([t, t.slice(0, 1)]), part)
    r = CliRunner().invoke(app, ["verify", str(d)])
    assert r.exit_code == 1 and f"clip {t.column('clip_id')[0].as_py()} has 2 rows" in r.output

    d = damaged("orphan_and_wrong_frames")
    rows = read_shards(str(d)).to_pylist()
    a = next(r for r in rows if r["end_frame"] - r["start_frame"] == 72)
    b = next(r for r in rows if r["end_frame"] - r["start_frame"] != 72 and r["width"] == a["width"])
    shutil.copy(a["clip_uri"], Path(a["clip_uri"]).with_name("0123456789abcdef-0000000-0000009.mp4"))
    shutil.copy(a["clip_uri"], b["clip_uri"])  # b's file now holds 72 frames
    problems = verify(str(d)).problems
    assert any("orphan clip file" in p and "0123456789abcdef" in p for p in problems)
    n = b["end_frame"] - b["start_frame"]
    size = f"{a['width']}x{a['height']}"
    assert f"clip file {b['clip_uri']} has 72 frames at {size}, its row says {n} at {size}" in problems


@pytest.mark.slow
def test_a_real_full_disk_then_resume_is_exactly_once(tmp_path, corpus, clean):
    """OUT on a 256 KiB tmpfs (the clean output needs about 600 KiB): the run fails or leaves
    inputs to retry, nothing is committed half; with room again, a resume completes it exactly."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); the injected-ENOSPC test covers it")
    try:
        out = disk / "out"
        full = subprocess.run(cli_args(corpus, out), capture_output=True, text=True, env=env())
        assert "Traceback" not in full.stderr
        if full.returncode == 0:
            assert "run the same command again to retry" in full.stderr
        else:
            assert full.returncode == 1 and "No space left on device" in full.stderr and "resume" in full.stderr
        for part in (out / "shards").glob("*.parquet"):
            pq.read_table(part)  # whatever is visible is whole
        assert clip_set(out) < clip_set(clean)
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        resumed = subprocess.run(cli_args(corpus, out), capture_output=True, text=True, env=env())
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert_whole(out, clean)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
