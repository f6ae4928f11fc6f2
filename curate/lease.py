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

import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("curate")

LEASE_FILE = "_lease"


class LeaseHeld(RuntimeError):
    """Another run holds OUT."""


class LeaseLost(RuntimeError):
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


@functools.lru_cache(maxsize=16)
def s3_client(uri: str):
    """A boto3 client (one per URI and process: boto3 clients are thread-safe) for the bucket of `uri`, honouring pyarrow's `?endpoint_override=&region=`."""
    import boto3

    q = {k: v[-1] for k, v in parse_qs(urlsplit(uri).query).items()}
    kwargs = {}
    if "endpoint_override" in q:
        scheme = q.get("scheme", "https")
        ep = q["endpoint_override"]
        kwargs["endpoint_url"] = ep if "://" in ep else f"{scheme}://{ep}"
    if "region" in q:
        kwargs["region_name"] = q["region"]
    return boto3.client("s3", **kwargs)


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/a/b?x=y -> ("bucket", "a/b")."""
    parts = urlsplit(uri)
    return parts.netloc, parts.path.lstrip("/")


def precondition_failed(err: Exception) -> bool:
    code = getattr(err, "response", {}).get("Error", {}).get("Code", "")
    status = getattr(err, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


class S3Lease:
    """Create-if-absent lease object with an expiry, renewed by a daemon thread."""

    def __init__(self, uri: str, ttl_s: float = 60.0):
        self.uri = uri
        self.bucket, prefix = split_s3(uri)
        self.key = f"{prefix.rstrip('/')}/{LEASE_FILE}".lstrip("/")
        self.ttl_s = ttl_s
        self.info = _holder()
        self._etag: str | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = s3_client(uri)

    def _body(self) -> bytes:
        return json.dumps({**self.info, "expires": time.time() + self.ttl_s}).encode()

    def acquire(self) -> None:
        from botocore.exceptions import ClientError

        c = self._client
        try:
            r = c.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), IfNoneMatch="*")
        except ClientError as e:
            if not precondition_failed(e):
                raise
            obj = c.get_object(Bucket=self.bucket, Key=self.key)
            try:
                other = json.loads(obj["Body"].read())
            except ValueError:
                other = {}
            if other.get("expires", 0) > time.time():
                raise LeaseHeld(f"{self.uri} is being written by another curate run ({describe(other)}, lease "
                                f"renewed until {time.ctime(other['expires'])}); wait for it or write to another OUT") from None
            try:  # expired: take it over, but only if nobody renewed or took it since we read it
                r = c.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), IfMatch=obj["ETag"])
            except ClientError as e2:
                if precondition_failed(e2):
                    raise LeaseHeld(f"{self.uri}: another curate run took the expired lease first") from None
                raise
            log.warning("took over the expired lease of %s (%s)", self.uri, describe(other))
        self._etag = r["ETag"]
        self._thread = threading.Thread(target=self._renew_loop, name="curate-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3) and self.renew():
            pass

    def renew(self) -> bool:
        """Extend the lease if it is still ours; False once it is lost (then `check` raises)."""
        from botocore.exceptions import ClientError

        try:
            r = self._client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), IfMatch=self._etag)
            self._etag = r["ETag"]
        except ClientError as e:
            if precondition_failed(e) or e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                self._lost = f"the lease object {self.key} was replaced or deleted by someone else"
                return False
            log.warning("could not renew the lease on %s (%s); retrying", self.uri, e)
        except Exception as e:  # network: keep trying while the lease has not expired
            log.warning("could not renew the lease on %s (%s); retrying", self.uri, e)
        return True

    def check(self) -> None:
        if self._lost:
            raise LeaseLost(f"{self.uri}: {self._lost}; this run stopped without committing further")

    def release(self) -> None:
        from botocore.exceptions import ClientError

        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self._etag and not self._lost:
            try:
                self._client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self._etag)
            except ClientError as e:
                log.warning("could not release the lease on %s: %s", self.uri, e)
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
        return S3Lease(store.uri)
    return UnguardedLease(store.uri)
