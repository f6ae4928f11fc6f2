"""Object storage under faults (a local S3 server behind a forwarder that cuts and stalls
connections): an outage or a stalled writer loses nothing, duplicates nothing, and never ends in
a traceback. Each test failed on the main it fixes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from curate.shards import read_shards
from curate.storage import OutputStore, is_transient, resolve_inputs, with_retries
from curate.verify import verify
from pipelines.run import run
from tests.faultproxy import FaultProxy
from tests.test_reliability import NO_SCORERS, cfg

ROOT = Path(__file__).parents[1]
SETS = ["clips.min_s=1", "clips.max_s=3", "shards.max_rows=2", "executor=local", *NO_SCORERS]


def clip_set(out) -> set[tuple]:
    return {(r["clip_id"], r["start_frame"], r["end_frame"]) for r in read_shards(str(out)).to_pylist()}


@pytest.fixture()
def proxy(s3):
    p = FaultProxy(int(os.environ["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]))
    yield p
    p.close()


@pytest.fixture()
def corpus(s3, three_shots, text_video, fade_video, tmp_path):
    """Three inputs in the bucket, and the clips a run without faults makes of them."""
    for name, v in (("a.mp4", three_shots), ("b.mp4", text_video), ("c.mp4", fade_video)):
        s3.upload_file(v.path, "corpus", f"f/raw/{name}")
    truth = tmp_path / "truth"
    run(cfg(), [three_shots.path, text_video.path, fade_video.path], str(truth))
    return {(cid.split("-", 1)[1], s, e) for cid, s, e in clip_set(truth)}


def span_set(out) -> set[tuple]:
    return {(cid.split("-", 1)[1], s, e) for cid, s, e in clip_set(out)}


def cli(out: str, proxy: FaultProxy, *extra: str, **env) -> subprocess.Popen:
    args = [sys.executable, "-m", "curate_cli.main", "run", "demo", "-i", "s3://corpus/f/raw/", "-o", out,
            *[x for s in [*SETS, *extra] for x in ("--set", s)]]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CI": "true", "AWS_ENDPOINT_URL": proxy.url, **env})  # fmt: skip


def keys(s3, prefix: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket="corpus", Prefix=prefix).get("Contents", [])]


def wait_for(pred, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.05)


def test_real_s3_connection_errors_are_transient_and_retried(proxy):
    """pyarrow's S3 errors carry no errno (curl's code in the text): they were called permanent."""
    fs = pafs.S3FileSystem(endpoint_override=proxy.url.split("://")[1], scheme="http", connect_timeout=2,
                           request_timeout=2, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))  # fmt: skip
    proxy.set("down")
    with pytest.raises(OSError) as err:
        fs.get_file_info("corpus/nothing")
    assert err.value.errno is None and is_transient(err.value), str(err.value)
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=proxy.url, config=Config(retries={"max_attempts": 0}, connect_timeout=2))
    with pytest.raises(Exception) as err2:
        client.head_bucket(Bucket="corpus")
    assert is_transient(err2.value), repr(err2.value)
    assert not is_transient(FileNotFoundError(2, "No such file")) and not is_transient(ValueError("bad parquet"))
    calls = []

    def flaky():  # down for the first calls, then back
        calls.append(1)
        if len(calls) == 3:
            proxy.set("up")
        return fs.get_file_info("corpus/nothing").type

    assert with_retries(flaky, "test", budget_s=30) == pafs.FileType.NotFound and len(calls) == 3


def test_a_short_outage_mid_run_loses_no_clip(s3, proxy, corpus):
    """An outage of the S3 endpoint in the middle of a run (data kept): before, 4 clips were
    failed for good (rc 0, `failed_clips: 4`, verify ok, a rerun found everything done)."""
    out = "s3://corpus/f/out1"
    p = cli(out, proxy)
    wait_for(lambda: keys(s3, "f/out1/clips/") or p.poll() is not None)  # the run is writing clips
    assert p.poll() is None, p.communicate()[1][-3000:]
    proxy.set("down")
    time.sleep(25)  # the outage the issue measured (12-30 s), within curate's retry budget (60 s)
    proxy.set("up")
    stdout, stderr = p.communicate(timeout=600)
    assert "Traceback" not in stderr, stderr[-3000:]
    if p.returncode != 0 or "run the same command again" in stderr:  # left to the next run, and said so
        again = cli(out, proxy)
        stdout, stderr = again.communicate(timeout=600)
        assert again.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
    assert span_set(out) == corpus
    m = json.loads(OutputStore(out).read_bytes("manifest.json"))
    assert m["counts"]["failed_clips"] == 0 and m["counts"]["to_retry"] == 0
    assert verify(out, deep=True).ok, verify(out, deep=True).problems


def test_a_writer_stalled_past_its_lease_never_commits_after_a_takeover(s3, proxy, corpus):
    """Driver A stalls at its commit point (its connection held) past its lease; run B takes OUT
    over, and A's held commit lands after B's recovery removed A's uncommitted part. Before, that
    record named a part that was gone: B and every later run failed and verify said "no
    manifest.json"."""
    out = "s3://corpus/f/out2"
    ttl = {"CURATE_LEASE_TTL_S": "4"}
    proxy.stall_on = b"/_commits/commit-"  # A's first commit record request, and all after it, held
    a = cli(out, proxy, "shards.commit_every_videos=1", **ttl)
    tmp = lambda: [k for k in keys(s3, "f/out2/shards/.tmp/") if "/part-" in k]  # noqa: E731
    assert proxy.stalled.wait(120)
    assert tmp()  # A's part is written; its record is in flight
    lease = json.loads(s3.get_object(Bucket="corpus", Key="f/out2/_lease")["Body"].read())
    wait_for(lambda: time.time() > lease["expires"] + 0.5, timeout=30)
    b = subprocess.Popen([sys.executable, "-m", "curate_cli.main", "run", "demo", "-i", "s3://corpus/f/raw/", "-o", out,
                          *[x for s in SETS for x in ("--set", s)]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "CI": "true", **ttl})  # fmt: skip
    wait_for(lambda: not tmp())  # B took the lease over and its recovery removed A's uncommitted part
    proxy.set("up")  # A's held commit goes through now, before B's first commit
    _, a_err = a.communicate(timeout=300)
    _, b_err = b.communicate(timeout=600)
    assert b.returncode == 0, b_err[-3000:]
    assert "took over the expired lease" in b_err
    assert a.returncode != 0 and "Traceback" not in a_err, a_err[-3000:]
    assert "stopped" in a_err
    assert span_set(out) == corpus  # readable, complete, no duplicate
    assert verify(out, deep=True).ok, verify(out, deep=True).problems
    again = subprocess.run([sys.executable, "-m", "curate_cli.main", "run", "demo", "-i", "s3://corpus/f/raw/", "-o", out,
                            *[x for s in SETS for x in ("--set", s)]], capture_output=True, text=True, timeout=600,
                           env={**os.environ, "CI": "true"})  # fmt: skip
    assert again.returncode == 0 and "0 inputs processed, 3 already done" in again.stderr, again.stderr[-2000:]


def test_a_copied_s3_prefix_keeps_its_clips_on_resume(s3, corpus):
    out = "s3://corpus/f/out3"
    run(cfg(), resolve_inputs(["s3://corpus/f/raw/"]), out)
    for k in keys(s3, "f/out3/"):  # how buckets are backed up and migrated
        s3.copy_object(Bucket="corpus", Key=k.replace("f/out3/", "f/copy3/", 1), CopySource={"Bucket": "corpus", "Key": k})
    before = sorted(k.split("/", 2)[2] for k in keys(s3, "f/copy3/clips/"))
    r = run(cfg(), resolve_inputs(["s3://corpus/f/raw/"]), "s3://corpus/f/copy3")
    assert r.processed == 0 and r.skipped == 3
    assert sorted(k.split("/", 2)[2] for k in keys(s3, "f/copy3/clips/")) == before
    assert verify("s3://corpus/f/copy3", deep=True).ok


def test_a_manifest_on_s3_resolves_relative_entries_against_its_prefix(s3, corpus, tmp_path, monkeypatch):
    s3.put_object(Bucket="corpus", Key="f/raw/list.txt", Body=b"a.mp4\nsub/../b.mp4\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_inputs(["s3://corpus/f/raw/list.txt"]) == ["s3://corpus/f/raw/a.mp4", "s3://corpus/f/raw/b.mp4"]
    s3.put_object(Bucket="corpus", Key="f/raw/bad.txt", Body=b"../../secret.mp4\n")
    from curate.storage import InputError

    with pytest.raises(InputError, match="outside the manifest's prefix"):
        resolve_inputs(["s3://corpus/f/raw/bad.txt"])


def test_the_lease_of_a_run_that_died_on_this_host_is_taken_at_once(s3, corpus):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"owner": "x", "host": socket.gethostname(), "pid": dead.pid, "since": time.time(), "expires": time.time() + 3600}
    s3.put_object(Bucket="corpus", Key="f/out4/_lease", Body=json.dumps(stale).encode())
    r = run(cfg(), resolve_inputs(["s3://corpus/f/raw/"]), "s3://corpus/f/out4")
    assert r.processed == 3
    assert span_set("s3://corpus/f/out4") == corpus


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_store_restarted_empty_mid_run_is_one_line(s3, proxy, corpus, executor):
    """An S3 server restarted empty in the middle of a run: the fault pass saw a 125-line
    traceback (`Bucket 'bkt' not found`) on a cluster."""
    import urllib.request

    p = cli("s3://corpus/f/out5", proxy, "shards.commit_every_videos=1", f"executor={executor}", "ray.num_cpus=2")
    wait_for(lambda: keys(s3, "f/out5/clips/") or p.poll() is not None)
    urllib.request.urlopen(urllib.request.Request(os.environ["AWS_ENDPOINT_URL"] + "/moto-api/reset", method="POST"))
    _, err = p.communicate(timeout=600)
    assert p.returncode != 0 and "Traceback" not in err, err[-3000:]
    errors = [x for x in err.splitlines() if x.startswith("error")]
    assert len(errors) == 1 and "corpus" in err, err[-2000:]


def test_a_raylet_state_dump_is_one_curate_line(capsys, caplog):
    """When a node dies, ~36 lines of a raylet's [state-dump] reached the driver's terminal."""
    pytest.importorskip("ray")
    from ray._private import worker as ray_worker

    from pipelines.graph import _say_worker_deaths_once

    _say_worker_deaths_once()
    dump = "\n".join(["[state-dump] NodeManager:", *[f"[state-dump] Queue {k}: 0 tasks" for k in range(35)]])
    for _ in range(3):
        ray_worker.print_to_stdstream({"lines": [dump], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    out = capsys.readouterr()
    assert "state-dump" not in out.out + out.err
    said = [r for r in caplog.records if "reported its state" in r.getMessage()]
    assert len(said) <= 1  # once per driver (an earlier test's dying node may have said it already)
    ray_worker.print_to_stdstream({"lines": ["hello from a task"], "pid": 123, "is_err": False, "ip": "1.2.3.4",
                                   "task_name": "t", "actor_name": ""}, ignore_prefix=True)  # fmt: skip
    assert "hello from a task" in capsys.readouterr().out  # anything else still reaches the terminal
