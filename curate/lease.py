"""One writer per OUT: an exclusive lease taken before a run touches anything in OUT.

Local disks: an OS lock (flock) on `OUT/_lease`. The kernel drops it when the process dies, so
a SIGKILL never leaves a stale lock; the file's content only names the holder for the message.
Object storage: a lease object `OUT/_lease` created only if absent (S3 conditional PUT,
`If-None-Match: *`), renewed in place by its owner (`If-Match: <etag>`) before it expires, taken
over by another run only once expired (again with `If-Match`, so two runs cannot both take it).
A run whose renewal fails has lost the lease and stops before its next commit; and since commit
records are created exclusively (`OutputStore.create_exclusive`), even a writer that lost its lease
cannot overwrite committed data.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from curate.errors import UserError
from curate.storage import precondition_failed, s3_client, split_s3, with_retries

log = logging.getLogger("curate")

LEASE_FILE = "_lease"


class LeaseHeld(UserError, RuntimeError):
    """Another run holds OUT."""


class LeaseLost(UserError, RuntimeError):
    """This run's lease on OUT expired or was taken: it must not commit again."""


def _holder() -> dict:
    return {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}


def describe(info: dict) -> str:
    since = datetime.fromtimestamp(info.get("since", 0), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, since {since}"


class LocalLease:
    def __init__(self, root: str):
        self.path = os.path.join(root, LEASE_FILE)
        self.info = _holder()
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                other = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                other = {}
            os.close(fd)
            raise LeaseHeld(f"{os.path.dirname(self.path)} is being written by another curate run "
                            f"({describe(other)}); wait for it or write to another OUT") from None  # fmt: skip
        data = json.dumps(self.info).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        self._fd = fd

    def check(self) -> None:  # an flock cannot be lost while the process lives
        pass

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # nobody holds it now: no stale name for the next message
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _dead_here(info: dict) -> bool:
    """Whether the lease holder `info` is a process of this host that is gone (a killed run):
    its lease may be taken at once instead of after it expires."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return False
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        pass
    return False


class S3Lease:
    """Create-if-absent lease object with an expiry, renewed by a daemon thread.

    What it guarantees under a network stall: a holder commits only while its lease is valid by
    its own clock (`check`: the last renewal the store acknowledged, plus the ttl, less a margin;
    near that it renews synchronously first), and a run that takes over an expired lease fences
    the commit log (`Committer.recover` creates the next commit record itself, so a commit the
    old holder still had in flight can never land after the takeover; if it landed first, it is
    read and rolled forward or repaired)."""

    MARGIN = 0.25  # of the ttl: stop committing when less than this is left by our own clock

    def __init__(self, uri: str, ttl_s: float = 60.0):
        self.uri = uri
        self.bucket, prefix = split_s3(uri)
        self.key = f"{prefix.rstrip('/')}/{LEASE_FILE}".lstrip("/")
        self.ttl_s = ttl_s
        self.info = _holder()
        self._etag: str | None = None
        self._lost: str | None = None
        self._valid_until = 0.0  # time.monotonic() by which the store's copy expires at the latest
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = s3_client(uri)
        self.took_over = False  # the lease was another run's (expired or dead): fence before committing

    def _body(self) -> bytes:
        return json.dumps({**self.info, "expires": time.time() + self.ttl_s}).encode()

    def acquire(self) -> None:

        with_retries(self._acquire, f"{self.uri}: take the lease")
        self._thread = threading.Thread(target=self._renew_loop, name="curate-lease", daemon=True)
        self._thread.start()

    def _acquire(self) -> None:
        from botocore.exceptions import ClientError

        c = self._client
        sent = time.monotonic()
        try:
            r = c.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), IfNoneMatch="*")
        except ClientError as e:
            if not precondition_failed(e):
                raise
            obj = c.get_object(Bucket=self.bucket, Key=self.key)
            try:
                other = json.loads(obj["Body"].read())
                other = other if isinstance(other, dict) else {}
            except ValueError:
                other = {}
            if other.get("owner") == self.info["owner"]:  # our own earlier attempt landed; its answer was lost
                self._etag, self._valid_until = obj["ETag"], sent + self.ttl_s
                return
            dead = _dead_here(other)
            if other.get("expires", 0) > time.time() and not dead:
                raise LeaseHeld(f"{self.uri} is being written by another curate run ({describe(other)}, lease "
                                f"renewed until {time.ctime(other['expires'])}); wait for it or write to another OUT") from None
            sent = time.monotonic()
            try:  # expired (or its holder died here): take it over, only if nobody renewed or took it since we read it
                r = c.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), IfMatch=obj["ETag"])
            except ClientError as e2:
                if precondition_failed(e2):
                    raise LeaseHeld(f"{self.uri}: another curate run took the expired lease first") from None
                raise
            self.took_over = True
            why = "the lease of a run that died on this host" if dead else "the expired lease"
            log.warning("took over %s of %s (%s)", why, self.uri, describe(other))
        self._etag, self._valid_until = r["ETag"], sent + self.ttl_s

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 6) and self.renew():
            pass

    def renew(self) -> bool:
        """Extend the lease if it is still ours; False once it is lost (then `check` raises).
        A network fault is retried on the next beat (every ttl/6) while the lease lasts."""
        from botocore.exceptions import ClientError

        with self._lock:
            if self._lost:
                return False
            sent = time.monotonic()
            try:
                r = self._client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), IfMatch=self._etag)
                self._etag, self._valid_until = r["ETag"], sent + self.ttl_s
            except ClientError as e:
                if precondition_failed(e) and self._ours_landed(sent):
                    return True  # an attempt whose answer a dropped connection lost had renewed it
                if precondition_failed(e) or e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    self._lost = f"the lease object {self.key} was replaced or deleted by someone else"
                    return False
                log.warning("could not renew the lease on %s (%s); retrying", self.uri, str(e).splitlines()[0])
            except Exception as e:  # noqa: BLE001 - network: keep trying while the lease has not expired
                log.warning("could not renew the lease on %s (%s); retrying", self.uri, str(e).splitlines()[0])
            return True

    def _ours_landed(self, sent: float) -> bool:
        """Whether the lease object is still ours (an earlier attempt landed): then adopt its etag."""
        try:
            obj = self._client.get_object(Bucket=self.bucket, Key=self.key)
            info = json.loads(obj["Body"].read())
        except Exception:  # noqa: BLE001 - unknown: the caller treats it as not ours
            return False
        if isinstance(info, dict) and info.get("owner") == self.info["owner"]:
            self._etag = obj["ETag"]
            self._valid_until = max(self._valid_until, sent + self.ttl_s - 1.0)
            return True
        return False

    def check(self) -> None:
        """Raise LeaseLost unless the lease is ours and valid for a while yet by our own clock."""
        if not self._lost and self._valid_until - time.monotonic() < self.MARGIN * self.ttl_s:
            self.renew()  # near expiry (renewals failing): one synchronous try before giving up
            if not self._lost and self._valid_until - time.monotonic() < self.MARGIN * self.ttl_s:
                self._lost = (f"the lease could not be renewed for {time.monotonic() - self._valid_until + self.ttl_s:.0f} s "
                              "(storage unreachable?) and may have expired, so another run may own OUT now")  # fmt: skip
        if self._lost:
            raise LeaseLost(f"{self.uri}: {self._lost}; this run stopped without committing further (what it "
                            "committed is whole: run the same command again to resume)")  # fmt: skip

    def release(self) -> None:
        from botocore.exceptions import ClientError

        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self._etag and not self._lost:
            try:
                try:
                    self._client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self._etag)
                except ClientError as e:
                    if not (precondition_failed(e) and self._ours_landed(time.monotonic())):
                        raise
                    self._client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self._etag)
            except Exception as e:  # noqa: BLE001 - it expires by itself; the next run on this host takes it at once
                log.warning("could not release the lease on %s (%s); it expires in %.0f s", self.uri,
                            str(e).splitlines()[0], self.ttl_s)  # fmt: skip
        self._etag = None


class UnguardedLease:
    """Object stores without conditional writes here (gs://, hdfs://): a best-effort marker."""

    def __init__(self, uri: str):
        self.uri = uri

    def acquire(self) -> None:
        log.warning("%s: no exclusive lease on this storage; make sure only one run writes to it", self.uri)

    def check(self) -> None:
        pass

    def release(self) -> None:
        pass


def lease_for(store) -> LocalLease | S3Lease | UnguardedLease:
    if store.local:
        return LocalLease(store.root)
    if store.uri.startswith("s3://"):
        ttl = float(os.environ.get("CURATE_LEASE_TTL_S", "60"))  # tests shorten it; > a storage call's timeout
        return S3Lease(store.uri, ttl_s=ttl)
    return UnguardedLease(store.uri)
