"""Where inputs come from and where outputs go: local paths or any URI pyarrow.fs understands.

Decoders (PyAV, the ffmpeg binary) need local files, so a remote input is copied to a local temp
file by the worker that processes it (`localize`) and removed when the video is done.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import glob as globlib
import hashlib
import logging
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote_to_bytes, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from curate.errors import UserError

log = logging.getLogger("curate")

VIDEO_EXTENSIONS = {
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".wmv", ".mpg", ".mpeg", ".ts",
    ".mts", ".m2ts", ".3gp", ".ogv", ".gif", ".vob", ".asf", ".y4m",
}  # fmt: skip
MANIFEST_EXTENSIONS = {".txt", ".lst", ".parquet"}
_MANIFEST_COLUMNS = ("source_uri", "uri", "url", "path")


class InputError(UserError, ValueError):
    pass


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _local(uri: str) -> str:
    """The OS path of a local input: file:// URIs are percent-decoded (RFC 8089), so names that
    are not UTF-8 come back byte for byte."""
    return os.fsdecode(unquote_to_bytes(uri[len("file://"):])) if uri.startswith("file://") else uri


def row_uri(path: str) -> str:
    """How a local path is recorded: as it is, or, when the name is not valid UTF-8 (which parquet
    strings cannot hold), as a percent-encoded file:// URI that `_local` turns back into it."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return "file://" + quote(os.fsencode(path), safe="/")


def _is_video_name(name: str) -> bool:
    return Path(name).suffix.lower() in VIDEO_EXTENSIONS


def _is_curate_output_dir(dirpath: str, dirnames: list[str], filenames: list[str]) -> bool:
    if "_curate" in filenames or "_commits" in dirnames:
        return True
    if "manifest.json" in filenames:
        try:
            with open(os.path.join(dirpath, "manifest.json"), "rb") as fh:
                return b'"curate_version"' in fh.read(1 << 16)
        except OSError:
            return False
    return False


def is_output_dir(p: str) -> bool:
    """Whether local directory `p` is a curate output: its marks looked up by name (no listing)."""
    dirs = ["_commits"] if os.path.isdir(os.path.join(p, "_commits")) else []
    return _is_curate_output_dir(p, dirs, [n for n in ("_curate", "manifest.json") if os.path.isfile(os.path.join(p, n))])


def _walk_local(root: str, skipped: list[str] | None = None, exclude: set[str] = frozenset()) -> list[str]:
    """Video files under root, following directory symlinks once (a symlink loop ends, not hangs).

    curate outputs (and the `exclude`d directories, real paths) are not inputs: they are left out
    and listed in `skipped`, so a run never curates its own clips."""
    found: list[str] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        if real in exclude or _is_curate_output_dir(dirpath, dirnames, filenames):
            if skipped is not None:
                skipped.append(dirpath)
            dirnames[:] = []
            continue
        dirnames.sort()
        for f in sorted(filenames):
            if _is_video_name(f):
                found.append(os.path.join(dirpath, f))
    return found


def _read_manifest(path: str, fs: pafs.FileSystem | None = None, scheme: str = "") -> list[str]:
    try:
        return _read_manifest_unchecked(path, fs, scheme)
    except UnicodeDecodeError as e:
        raise InputError(f"manifest {display(path)} is not UTF-8 text (byte {e.start}); write one URI per line "
                         "in UTF-8") from None  # fmt: skip
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"manifest {display(path)} cannot be read: {str(e).splitlines()[0]}") from None


def _read_manifest_unchecked(path: str, fs: pafs.FileSystem | None = None, scheme: str = "") -> list[str]:
    base = os.path.dirname(path)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path, filesystem=fs)
        col = next((c for c in _MANIFEST_COLUMNS if c in table.column_names), None)
        if col is None:
            raise InputError(f"manifest {path} has none of the columns {', '.join(_MANIFEST_COLUMNS)}")
        entries = [u for u in table.column(col).to_pylist() if u]
    else:
        if fs is not None:
            with fs.open_input_stream(path) as fh:
                text = fh.read().decode("utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        entries = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    out = []
    root = os.path.realpath(base)
    for e in entries:
        if fs is not None and scheme and not is_remote(e) and not e.startswith(("/", "file://")):
            # relative to the manifest's own prefix, as for a local manifest (not the driver's cwd)
            joined = posixpath.normpath(posixpath.join(base, e))
            if not joined.startswith(base.rstrip("/") + "/"):
                raise InputError(f"manifest {scheme}://{path}: entry {e!r} points outside the manifest's prefix")
            e = f"{scheme}://{joined}"
        elif fs is None and not is_remote(e) and not os.path.isabs(_local(e)):
            e = os.path.join(base, e)  # relative entries are relative to the manifest ...
            if os.path.commonpath([root, os.path.realpath(e)]) != root:  # ... and stay under it
                raise InputError(f"manifest {path}: entry {e!r} points outside the manifest's directory")
        out.append(e)
    return out


def display(uri: str) -> str:
    """A name for messages: bytes that are not UTF-8 (kept as surrogates by the OS layer) escaped."""
    return uri.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def resolve_inputs(specs: list[str], out: str | None = None) -> list[str]:
    """Expand files, directories (recursive), globs and manifests into a de-duplicated URI list.

    Names that do not exist are kept (they end as `missing` quarantine rows, so nothing a user
    asked for disappears silently). OUT and any other curate output found while expanding a
    directory are skipped (said once); an input named explicitly inside OUT is an InputError."""
    local_out = os.path.realpath(_local(out)) if out and not is_remote(out) else None
    remote_out = out.split("?", 1)[0].rstrip("/") + "/" if out and is_remote(out) else None
    skipped: list[str] = []
    uris: list[str] = []
    walk = lambda d: _walk_local(d, skipped, {local_out} if local_out else set())  # noqa: E731
    for spec in specs:
        if is_remote(spec):
            uris += _resolve_remote(spec, skipped, remote_out)
            continue
        path = _local(spec)
        if os.path.isdir(path):
            uris += walk(path)
        elif os.path.isfile(path) and Path(path).suffix.lower() in MANIFEST_EXTENSIONS:
            uris += _read_manifest(path)
        elif os.path.exists(path) or os.path.islink(path):
            uris.append(path)
        elif any(ch in path for ch in "*?["):
            matches = sorted(globlib.glob(path, recursive=True))
            if not matches:
                raise InputError(f"glob matches nothing: {spec}")
            for m in matches:
                uris += walk(m) if os.path.isdir(m) else [m]
        else:
            uris.append(path)
    if skipped:
        shown = ", ".join(display(s) for s in skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        log.warning("not reading curate output directories as inputs: %s", shown)
    seen: set[str] = set()
    result = []
    for u in uris:
        key = u if is_remote(u) else os.path.abspath(u)
        if local_out and not is_remote(u):
            real = os.path.realpath(key)
            if real == local_out or real.startswith(local_out + os.sep):
                raise InputError(f"input {display(key)} is inside the output directory {display(out)}: "
                                 "curate does not read its own output")  # fmt: skip
        if remote_out and is_remote(u) and u.startswith(remote_out):
            raise InputError(f"input {u} is inside the output {out}: curate does not read its own output")
        if key not in seen:
            seen.add(key)
            result.append(key if is_remote(key) else row_uri(key))
    return result


def _outside_outputs(scheme: str, infos: list, skipped: list[str], remote_out: str | None) -> list:
    """Drop listed objects under OUT or under any prefix that is a curate output."""
    roots = {i.path.rsplit("/", 1)[0] for i in infos if i.path.endswith(("/_curate", "/_lease"))}
    roots |= {i.path.split("/_commits/", 1)[0] for i in infos if "/_commits/" in i.path}
    if remote_out:
        roots.add(remote_out.split("://", 1)[1].rstrip("/"))
    kept = [i for i in infos if not any(i.path.startswith(r + "/") for r in roots)]
    if len(kept) < len(infos):
        skipped += sorted(f"{scheme}://{r}" for r in roots if any(i.path.startswith(r + "/") for i in infos))
    return kept


def _resolve_remote(spec: str, skipped: list[str] | None = None, remote_out: str | None = None) -> list[str]:
    skipped = [] if skipped is None else skipped
    scheme = spec.split("://", 1)[0]
    if scheme in ("http", "https"):
        raise InputError(f"{spec}: http(s) inputs are not supported; download them first, or use s3:// / gs:// URIs")
    try:
        return _list_remote(spec, scheme, skipped, remote_out)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise InputError(f"{spec}: {e}") from None


def _list_remote(spec: str, scheme: str, skipped: list[str], remote_out: str | None) -> list[str]:
    if any(ch in spec for ch in "*?["):
        prefix = spec.split("*")[0].split("?")[0].split("[")[0]
        root = prefix.rsplit("/", 1)[0]
        fs, root_path = pafs.FileSystem.from_uri(root)
        pattern = spec.split("://", 1)[1]
        infos = _outside_outputs(scheme, fs.get_file_info(pafs.FileSelector(root_path, recursive=True)), skipped, remote_out)
        return sorted(f"{scheme}://{i.path}" for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, pattern))
    fs, path = pafs.FileSystem.from_uri(spec)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        infos = _outside_outputs(scheme, fs.get_file_info(pafs.FileSelector(path, recursive=True)), skipped, remote_out)
        return sorted(f"{scheme}://{i.path}" for i in infos if i.type == pafs.FileType.File and _is_video_name(i.path))
    if info.type == pafs.FileType.File and Path(path).suffix.lower() in MANIFEST_EXTENSIONS:
        return _read_manifest(path, fs, scheme)
    return [spec]


_localized: dict[str, str] = {}


def localize(uri: str) -> str:
    """A local path for `uri` (remote files are downloaded once per process until `release`)."""
    if not is_remote(uri):
        return _local(uri)
    if uri in _localized and os.path.exists(_localized[uri]):
        return _localized[uri]
    fs, path = pafs.FileSystem.from_uri(uri)
    fd, local = tempfile.mkstemp(prefix="curate-in-", suffix=Path(path).suffix)
    os.close(fd)

    def download() -> None:
        with open(local, "wb") as out, fs.open_input_stream(path) as src:
            shutil.copyfileobj(src, out, 8 << 20)

    try:
        with_retries(download, f"download {uri}")
    except BaseException:
        os.unlink(local)
        raise
    _localized[uri] = local
    return local


def release(uri: str) -> None:
    local = _localized.pop(uri, None)
    if local and os.path.exists(local):
        os.unlink(local)


def fingerprint(path: str, size: int) -> str:
    """Content identity of a file: its size and a hash of all of it up to 2 MiB, of its first
    and last MiB beyond.

    Cheap for any size, independent of where the file lives (a bucket, a renamed copy), and
    equal for byte-identical copies, which the committer turns into `duplicate` quarantine rows.
    (Before, a file of 1-2 MiB was hashed on its first MiB only: two such files that differed
    after it were called duplicates.)
    """
    h = hashlib.sha1(str(size).encode())
    with open(path, "rb") as fh:
        if size <= 2 << 20:
            h.update(fh.read())
        else:
            h.update(fh.read(1 << 20))
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


# -- transient storage failures ------------------------------------------------------------------
# Object storage fails in ways that say nothing about the data: a dropped or refused connection,
# a timeout, throttling (503 SlowDown), a 5xx. pyarrow's S3 errors are OSErrors without an errno
# (curl's code and text only), botocore's are its own classes; both are recognised here, retried
# in place with backoff, and, if still failing, left to the next run (never a clip lost for good).
_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                     errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPIPE, errno.EAGAIN}  # fmt: skip
_TRANSIENT_TEXT = (
    "No space left on device", "Disk quota exceeded",  # a full disk may be emptied
    "NETWORK_CONNECTION", "curlCode", "Could not connect", "Connection refused", "Connection reset",
    "connection was closed", "Connection was closed", "timed out", "Timeout", "SlowDown", "ServiceUnavailable",
    "Service Unavailable", "InternalError", "RequestTimeout", "Throttl", "Broken pipe", "SERVICE_UNAVAILABLE",
    "INTERNAL_FAILURE", "THROTTLING", "SLOW_DOWN", "REQUEST_TIMEOUT", "HTTP response code: 5",
)  # fmt: skip
_BOTO_TRANSIENT = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                   "ConnectionError", "ProxyConnectionError", "ResponseStreamingError", "IncompleteReadError")  # fmt: skip


def is_transient(e: BaseException) -> bool:
    """A failure that says nothing about the input or the data (a full disk, a network fault,
    throttling, a server error): retry it, now and on the next run."""
    if getattr(e, "errno", None) in _TRANSIENT_ERRNOS:
        return True
    if type(e).__name__ in _BOTO_TRANSIENT or any(c.__name__ in _BOTO_TRANSIENT for c in type(e).__mro__):
        return True
    response = getattr(e, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = response.get("Error", {}).get("Code", "")
        return status >= 500 or status == 429 or code in ("SlowDown", "Throttling", "RequestTimeout", "InternalError",
                                                          "ServiceUnavailable", "RequestTimeTooSkewed")  # fmt: skip
    text = str(e)
    return any(t in text for t in _TRANSIENT_TEXT)


def retry_s() -> float:
    """How long one storage call is retried before it is given up (left to the next run)."""
    try:
        return float(os.environ.get("CURATE_STORAGE_RETRY_S", "60"))
    except ValueError:
        return 60.0


def with_retries(fn, what: str, budget_s: float | None = None):
    """`fn()`, retried on transient failures with exponential backoff (0.25 s doubling, at most
    8 s apart) for up to `budget_s` (retry_s()); the last failure is raised."""
    import time

    budget = retry_s() if budget_s is None else budget_s
    deadline, delay, attempt = time.monotonic() + budget, 0.25, 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - only transient ones are retried
            # at least 3 attempts, however long one took (a connection that hung until its timeout)
            if not is_transient(e) or (attempt >= 3 and time.monotonic() + delay > deadline):
                raise
            if attempt == 1:
                log.warning("%s: %s; retrying for up to %.0f s", what, str(e).splitlines()[0][:200], budget)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


def largest_first(uris: list[str]) -> list[str]:
    """The order in which inputs are worked: the largest local files first (a stat each), then
    the rest (remote ones, which have no size without a request, and missing ones) in the given order.
    A long input given last held the run's tail alone on a lane while the others sat idle: the
    1080p talk, last of ../shared/data by name, is 14 of the deferred pass's 33 stage-seconds
    (longest-processing-time-first, with the file's size standing in for its decode)."""
    def size(u: str) -> int:
        try:
            return -1 if is_remote(u) else os.stat(_local(u)).st_size
        except OSError:
            return -1

    return sorted(uris, key=size, reverse=True)  # (stable: equal sizes keep the given order)


def duplicates_by_content(uris: list[str], known: dict[str, str] | None = None,
                          known_sizes: set[int] | None = frozenset()) -> dict[str, tuple[str, str]]:
    """{uri: (video_id, the input it duplicates)} for the local inputs whose bytes equal an earlier
    input's (in `uris` order) or an input already done (`known`: video_id -> its source, of the
    sizes `known_sizes`; None: sizes unknown), found before any work: only inputs that share their
    size with another are read (fingerprint), so the cost is one stat per input. Remote inputs
    are left to the committer (after their work)."""
    known = known or {}
    sizes: dict[int, list[str]] = {}
    for u in uris:
        if is_remote(u):
            continue
        try:
            st = os.stat(_local(u))
        except OSError:
            continue  # missing: its own quarantine row
        if st.st_size:
            sizes.setdefault(st.st_size, []).append(u)
    out: dict[str, tuple[str, str]] = {}
    first: dict[str, str] = {}
    for size, group in sizes.items():
        if len(group) < 2 and not (known and (known_sizes is None or size in known_sizes)):
            continue
        for u in group:
            try:
                vid = fingerprint(_local(u), size)
            except OSError:
                continue
            if vid in known and known[vid] != u:
                out[u] = (vid, known[vid])
            elif vid in first:
                out[u] = (vid, first[vid])
            else:
                first[vid] = u
    return out


class OutError(UserError, ValueError):
    """OUT is not a place curate may write to."""


def enclosing_output(path: str) -> str | None:
    """The curate output that `path` is (or lies inside), following symlinks; None when none.

    Only the run holding an OUT's lease writes inside it: a subset, an export or a dedup
    output written among its files would be read back as OUT's own (a `subset.parquet` in
    shards/ is every row twice to a reader of shards/*.parquet)."""
    if is_remote(path):
        return None
    p = os.path.realpath(os.path.abspath(_local(path)))
    while True:
        if is_output_dir(p):
            return p
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent


def refuse_inside_output(path: str, flag: str = "-o") -> None:
    """OutError when `path` is a curate output or lies inside one (see enclosing_output)."""
    root = enclosing_output(path)
    if root is not None:
        where = "is" if os.path.realpath(os.path.abspath(_local(path))) == root else "is inside"
        raise OutError(f"{flag} {display(path)}: {where} the curate output {display(root)}, which only `curate run` "
                       "writes to; choose a directory outside it")  # fmt: skip


class AlreadyExists(FileExistsError):
    pass


def check_out_path(out: str) -> None:
    """Refuse OUT values that are almost always a mistake (an unset variable, `/`, a file)."""
    if not out or not out.strip():
        raise OutError("-o/--out is empty (an unset variable?): name an output directory")
    if is_remote(out):
        if not out.split("://", 1)[1].strip("/"):
            raise OutError(f"-o {out}: name a bucket and prefix, not the root of the store")
        return
    path = os.path.abspath(_local(out))
    if row_uri(path) != path:
        raise OutError(f"-o {display(out)}: the output path must be valid UTF-8 (rows record clip paths as text)")
    if path == os.path.dirname(path):
        raise OutError(f"-o {out}: the root of the filesystem cannot be an output directory")
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutError(f"-o {out}: exists and is not a directory")


class OutputStore:
    """OUT on a local disk or object storage. Every write is atomic: readers see whole files."""

    def __init__(self, out: str, create: bool = True):
        self.uri, self.local = out.rstrip("/"), not is_remote(out)
        if self.local:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(_local(out))
        else:
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        if create:
            self._r(lambda: self.fs.create_dir(self.root, recursive=True), "create OUT")

    def _r(self, fn, what: str):
        """`fn()`; on object storage retried through transient faults (with_retries). A local disk
        is not retried here: a full disk is the run's to report (the next run retries it)."""
        return fn() if self.local else with_retries(fn, f"{self.uri}: {what}")

    def _parent_dir(self, path: str) -> None:
        self._r(lambda: self.fs.create_dir(os.path.dirname(path), recursive=True), "create a directory")

    def top_level(self) -> list[str]:
        """Names directly in OUT (files and directories); empty when OUT does not exist."""
        infos = self._r(lambda: self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True)), "list")
        return sorted(os.path.basename(i.path.rstrip("/")) for i in infos)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def uri_of(self, *parts: str) -> str:
        """What rows record: an absolute local path, or the full URI on object storage."""
        p = self.path(*parts)
        return p if self.local else f"{self.uri.split('://', 1)[0]}://{p}"

    def exists(self, *parts: str) -> bool:
        return self._r(lambda: self.fs.get_file_info(self.path(*parts)), "stat").type != pafs.FileType.NotFound

    def list(self, *parts: str) -> list[str]:
        infos = self._r(lambda: self.fs.get_file_info(pafs.FileSelector(self.path(*parts), allow_not_found=True)), "list")
        return sorted(os.path.basename(i.path) for i in infos if i.type == pafs.FileType.File)

    def write_bytes(self, data: bytes, *parts: str) -> None:
        final = self.path(*parts)
        self._parent_dir(final)
        if self.local:
            tmp = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        else:
            def put() -> None:
                with self.fs.open_output_stream(final) as fh:  # one PUT: all or nothing
                    fh.write(data)

            self._r(put, f"write {'/'.join(parts)}")

    def create_exclusive(self, data: bytes, *parts: str) -> None:
        """Write a new file, failing with AlreadyExists instead of replacing one that exists.

        Local: a hard link of a complete temp file (atomic, refuses an existing name). S3: a PUT
        with `If-None-Match: *`. Other stores have no conditional write: check, then write."""
        final = self.path(*parts)
        self._parent_dir(final)
        if self.local:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(final), prefix=f".{os.path.basename(final)}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.link(tmp, final)
            except FileExistsError:
                raise AlreadyExists(final) from None
            finally:
                os.unlink(tmp)
        elif self.uri.startswith("s3://"):
            from botocore.exceptions import ClientError

            bucket, _ = split_s3(self.uri)
            key = final[len(bucket) + 1:]
            client = s3_client(self.uri)

            def put() -> None:
                try:
                    client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
                except ClientError as e:
                    if precondition_failed(e):
                        # an earlier attempt (ours, or botocore's own retry) whose answer a dropped
                        # connection lost may have landed: it is ours if the bytes are (a record
                        # holds its time and its writer's part names: nobody else writes these bytes)
                        if client.get_object(Bucket=bucket, Key=key)["Body"].read() == data:
                            return
                        raise AlreadyExists(self.uri_of(*parts)) from None
                    raise

            self._r(put, f"create {'/'.join(parts)}")
        else:
            if self.exists(*parts):
                raise AlreadyExists(self.uri_of(*parts))
            self.write_bytes(data, *parts)

    def read_bytes(self, *parts: str) -> bytes:
        def read() -> bytes:
            with self.fs.open_input_stream(self.path(*parts)) as fh:
                return fh.read()

        return self._r(read, f"read {'/'.join(parts)}")

    def put_file(self, local_path: str, *parts: str) -> None:
        """Move a finished local file into OUT (rename locally, upload to object storage)."""
        final = self.path(*parts)
        self._parent_dir(final)
        if self.local:
            os.replace(local_path, final)
        else:
            def upload() -> None:
                with open(local_path, "rb") as src, self.fs.open_output_stream(final) as dst:
                    shutil.copyfileobj(src, dst, 8 << 20)

            self._r(upload, f"upload {'/'.join(parts)}")
            os.unlink(local_path)

    def move(self, src: tuple[str, ...], dst: tuple[str, ...]) -> None:
        """Rename; locally it refuses to replace an existing file (link, then unlink)."""
        self._parent_dir(self.path(*dst))
        if self.local:
            try:
                os.link(self.path(*src), self.path(*dst))
            except FileExistsError:
                raise AlreadyExists(self.path(*dst)) from None
            os.unlink(self.path(*src))
        else:
            tried: list[bool] = []

            def move() -> None:  # a copy then a delete on S3: a retry after the copy may find no source
                if tried and self.fs.get_file_info(self.path(*src)).type == pafs.FileType.NotFound \
                        and self.fs.get_file_info(self.path(*dst)).type == pafs.FileType.File:
                    return
                tried.append(True)
                self.fs.move(self.path(*src), self.path(*dst))

            self._r(move, f"move {'/'.join(src)}")

    def delete(self, *parts: str) -> None:
        p = self.path(*parts)

        def delete() -> None:
            if self.fs.get_file_info(p).type != pafs.FileType.NotFound:
                self.fs.delete_file(p)

        self._r(delete, f"delete {'/'.join(parts)}")


# --- S3 requests boto3 makes directly (conditional writes, the lease: curate.lease) ---------------
@functools.lru_cache(maxsize=16)
def s3_client(uri: str):
    """A boto3 client (one per URI and process: boto3 clients are thread-safe) for the bucket of `uri`, honouring pyarrow's `?endpoint_override=&region=`."""
    import boto3
    from botocore.config import Config

    q = {k: v[-1] for k, v in parse_qs(urlsplit(uri).query).items()}
    # Short timeouts: these are small requests (the lease, commit records), and curate retries
    # them itself (curate.storage.with_retries) within the lease; botocore's default read timeout
    # of 60 s would spend a whole lease on one dead connection.
    kwargs = {"config": Config(connect_timeout=5, read_timeout=15, retries={"mode": "standard", "max_attempts": 3})}
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
