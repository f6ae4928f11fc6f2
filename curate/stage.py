"""The Stage contract shared by every pipeline step and scorer (see DESIGN.md).

A stage is a class: a cheap constructor (runs on the driver too), `setup()` for heavy imports and
model loading (once per Ray actor), and `__call__(batch) -> batch` that keeps the rows and adds
columns. The Ray wiring lives in pipelines/run.py; without Ray a test does
`s = Stage(params); s.setup(); s(table)`.
"""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

from curate import schema


AUTO = "auto"


@dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int | None = 1
    # Stateful stages (models) run as an actor pool of up to this many replicas, or AUTO: as many
    # as the cluster's free resources allow (Ray Data adds them while input waits); None = tasks.
    actors: int | str | None = None
    # Bytes the step holds beyond its worker's baseline, reserved on the node by Ray's scheduler.
    memory: int | None = None


class StageBase:
    """The contract's defaults; every stage subclasses it.

    The wiring (pipelines/run.py) builds a stage where it runs, calls `setup()` once (per Ray
    actor, per task, or once locally) and then only `__call__`: a stage never calls its own
    setup. The hooks below have defaults, so the wiring never asks `hasattr`."""

    resources: ClassVar[Resources] = Resources()  # a model stage's come from its params (resources_for)
    # a scorer's own columns, typed: they join the shard schema where the scorer is registered
    output_fields: ClassVar[tuple[pa.Field, ...]] = ()
    # the columns it writes (its fields' names unless it writes clip fields, as the core stages do)
    output_columns: ClassVar[tuple[str, ...]] = ()
    order: ClassVar[int] = 100  # scorers run in this order (curate.registry)
    # Columns whose names a config chooses (a rubric's `vlm_<name>`): (full-match regex, type),
    # first match wins. The shards keep a column of a family as that type (registry.conform); an
    # instance declares the ones it writes in its own output_fields / output_columns.
    column_families: ClassVar[tuple[tuple[str, pa.DataType], ...]] = ()

    def __init__(self, params: BaseModel | None = None):
        self.params = params

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "output_fields" in cls.__dict__ and "output_columns" not in cls.__dict__:
            cls.output_columns = tuple(f.name for f in cls.output_fields)

    @classmethod
    def plans(cls, params: BaseModel) -> list:
        """The frames this stage needs from the sample step (SamplePlans); none by default."""
        return []

    @classmethod
    def model_refs(cls, params: BaseModel) -> list:
        """The weights `setup()` loads (curate.models.ModelRef); none for a model-free stage."""
        return []

    @classmethod
    def resources_for(cls, params: BaseModel | None, gpus_available: bool = False) -> Resources:
        """The one source of batch size, replicas, CPUs and GPUs: the class's declaration, or for
        a model stage the settings in its params (device, batch_size, actors, num_cpus)."""
        from curate.params import ModelParams

        if isinstance(params, ModelParams):
            gpu = params.device == "cuda" or (params.device == "auto" and gpus_available)
            return Resources(num_cpus=params.num_cpus, num_gpus=params.num_gpus if gpu else 0.0,
                             batch_size=params.batch_size, actors=params.actors)  # fmt: skip
        return cls.resources

    def setup(self) -> None:
        pass

    # -- the batch loop: a scorer writes `score` (one row) or `score_batch` (rows at once) -------
    needs_frames: ClassVar[bool] = True  # a row with a clip and no sampled frames is an error

    def inputs(self, batch: pa.Table) -> list:
        """What each row hands `score` (None: nothing to score): by default its sampled frames."""
        return frames_for(batch, self.name)

    def score(self, item) -> dict:
        """One row's {column: value}."""
        raise NotImplementedError(f"{type(self).__name__} writes score() or score_batch()")

    def score_batch(self, items: list) -> list[dict]:
        """Several rows at once (a model's batch): one dict per item."""
        return [self.score(item) for item in items]

    def chunk_key(self, item) -> object:
        """Items that may share a score_batch call share this key (e.g. their frame count)."""
        return None

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Score every row that has inputs, in chunks (a model's batch_size, else one row); a
        chunk that raises leaves its rows' columns null with "<stage>: <message>" in `errors`,
        so one bad row never kills a batch."""
        from curate.params import ModelParams

        n = batch.num_rows
        items = self.inputs(batch)
        out: dict[str, list] = {c: [None] * n for c in self.output_columns}
        errors = batch.column(schema.ERRORS).to_pylist() if schema.ERRORS in batch.column_names else [None] * n
        uris = batch.column(schema.CLIP_URI).to_pylist() if schema.CLIP_URI in batch.column_names else [None] * n
        groups: dict[object, list[int]] = {}
        for i, item in enumerate(items):
            if item is not None:
                groups.setdefault(self.chunk_key(item), []).append(i)
            elif uris[i] and self.needs_frames:
                errors[i] = add_error(errors[i], self.name, "no frames sampled")
        params = getattr(self, "params", None)  # (a plugin's own __init__ may not set it)
        size = params.batch_size if isinstance(params, ModelParams) else 1
        for rows in groups.values():
            for k in range(0, len(rows), size):
                chunk = rows[k:k + size]
                try:
                    results = self.score_batch([items[i] for i in chunk])
                except Exception as e:  # noqa: BLE001 - the chunk's rows say why, the batch goes on
                    for i in chunk:
                        errors[i] = add_error(errors[i], self.name, f"{type(e).__name__}: {e}")
                    continue
                for i, result in zip(chunk, results):
                    for c, v in result.items():
                        out[c][i] = v
        out[schema.ERRORS] = errors
        return set_columns(batch, out, self.output_fields)


def check_stage(cls: type) -> None:
    """Fail early (at import of the pipeline) when a stage declares columns the schema lacks."""
    own = {f.name for f in getattr(cls, "output_fields", ())}
    unknown = [c for c in cls.output_columns if c not in own and c not in {f.name for f in schema.CLIP_FIELDS}]
    if unknown:
        raise TypeError(f"stage {cls.name!r} writes columns it does not declare in output_fields: {unknown}")


def add_error(errors: list[str] | None, stage: str, message: str) -> list[str]:
    """The `errors` list of a row with one more "<stage>: <message>" entry."""
    return [*(errors or []), f"{stage}: {message}"]


# --- helpers for scorers ------------------------------------------------------------------------
def set_columns(batch: pa.Table, values: dict[str, list], fields: tuple[pa.Field, ...] = ()) -> pa.Table:
    """Set (or add) columns, typed as the clip fields or the stage's own (`fields`) declare them:
    never from the registry, which in a Ray worker may predate a plugin installed since."""
    types = {f.name: f.type for f in schema.CLIP_FIELDS} | {f.name: f.type for f in fields}
    for name, vals in values.items():
        col = pa.array(vals, types[name])
        if name in batch.column_names:
            batch = batch.set_column(batch.column_names.index(name), name, col)
        else:
            batch = batch.append_column(name, col)
    return batch


# --- `_samples`: the frames each scorer asked for, packed once per clip (npz) ----------------------
class Spilled:
    """A packed sample in a watchdog child's spill file (`spill_to`): what a row carries in its
    place until the child writes its rows out, one row's frames read back at a time."""

    __slots__ = ("path", "offset", "size")

    def __init__(self, path: str, offset: int, size: int):
        self.path, self.offset, self.size = path, offset, size

    def __len__(self) -> int:
        return self.size

    def read(self) -> pa.Buffer:
        with pa.OSFile(self.path) as fh:
            return fh.read_at(self.size, self.offset)


_SPILL: str | None = None


def spill_to(path: str | None) -> None:
    """Pack into this file from now on (None: into memory). A watchdog child spills its unit's
    carried frames (up to clips.SAMPLE_BUDGET_BYTES): held in memory, they sat on top of the rest
    of the decode (bench/README, the deferred mode's memory)."""
    global _SPILL
    _SPILL = path


def loaded(blob: pa.Buffer | Spilled | bytes | None) -> pa.Buffer | bytes | None:
    return blob.read() if isinstance(blob, Spilled) else blob


def pack(arrays: dict[str, np.ndarray]) -> pa.Buffer | Spilled:
    """The arrays as npz: in the spill file where one is set (`spill_to`), else in Arrow's memory
    pool, where the frames that come in Arrow (a watchdog child's rows, a Ray block) live too: the
    pool reuses what a scored batch freed, which bytes from another allocator would not."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    view = buf.getbuffer()
    if _SPILL is not None:
        with open(_SPILL, "ab") as fh:
            offset = fh.tell()
            fh.write(view)
        return Spilled(_SPILL, offset, len(view))
    out = pa.allocate_buffer(len(view))
    np.frombuffer(out, np.uint8)[:] = np.frombuffer(view, np.uint8)
    return out


def pack_plans(plans: list, per_plan: dict[str, list[int]], frames: dict[int, np.ndarray]) -> pa.Buffer | Spilled:
    """One clip's sample: per plan, its frames (from `frames`, index -> RGB at the stored clip size)
    resized to the plan's size, and their indices. The sample stage and the extraction decode
    (curate.clips) both pack with this, so a scorer cannot tell which one fed it."""
    import cv2

    arrays: dict[str, np.ndarray] = {}
    for plan in plans:
        idx = [k for k in per_plan[plan.name] if k in frames]
        if not idx:
            continue
        h, w = frames[idx[0]].shape[:2]
        size = plan.size_for(w, h)
        resized = [frames[k] if size == (w, h) else cv2.resize(frames[k], size, interpolation=cv2.INTER_AREA) for k in idx]
        arrays[plan.name] = np.stack(resized)
        arrays[f"{plan.name}__idx"] = np.asarray(idx, np.int64)
    return pack(arrays)


def unpack(blob: bytes | pa.Buffer | None, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of a packed sample (only `keys`, when given: a scorer reads its own frames), as
    read-only views of `blob`. np.savez stores its members uncompressed, so each is a .npy header
    and the raw array in place; numpy's own reader would copy it twice and CRC it, per scorer."""
    if blob is None or len(blob) == 0:
        return {}
    src = pa.BufferReader(blob)
    out = {}
    with zipfile.ZipFile(src) as z:
        for info in z.infolist():
            name = info.filename.removesuffix(".npy")
            if keys is not None and name not in keys:
                continue
            if info.compress_type != zipfile.ZIP_STORED:  # (not what pack writes)
                out[name] = np.lib.format.read_array(z.open(info), allow_pickle=False)
                continue
            src.seek(info.header_offset + 26)  # the local header: 30 bytes, then its name and extra field
            name_len, extra_len = struct.unpack("<HH", src.read(4))
            src.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(src)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(src)
            flat = np.frombuffer(blob, dtype, count=int(np.prod(shape)), offset=src.tell())
            out[name] = flat.reshape(shape, order="F" if fortran else "C")
    return out


def binary_column(blobs: list[pa.Buffer | bytes | None], base: pa.ChunkedArray | None = None) -> pa.ChunkedArray:
    """A binary column over the blobs' own memory, a chunk per row (no copy of what can be 100+ MB
    of frames, and a scored row's frames can be freed alone); a row whose blob is None keeps
    `base`'s value (null without one)."""
    if base is not None and not (pa.types.is_binary(base.type) or pa.types.is_large_binary(base.type)):
        base = base.cast(pa.binary())  # (another layout, e.g. binary_view: its rows are built here as offsets)
    type_ = base.type if base is not None else pa.binary()
    width = np.int64 if pa.types.is_large_binary(type_) else np.int32
    chunks = []
    for i, blob in enumerate(blobs):
        if blob is None:
            chunks += base.slice(i, 1).chunks if base is not None else [pa.nulls(1, type_)]
        else:
            data = blob if isinstance(blob, pa.Buffer) else pa.py_buffer(blob)
            chunks.append(pa.Array.from_buffers(type_, 1, [None, pa.py_buffer(np.array([0, len(blob)], width)), data]))
    return pa.chunked_array(chunks, type_)


def _blobs(batch: pa.Table) -> list[pa.Buffer | None]:
    """Each row's packed sample, as a view of the batch's memory (not copied out)."""
    if schema.SAMPLES not in batch.column_names:
        return [None] * batch.num_rows
    out = []
    for chunk in batch.column(schema.SAMPLES).chunks:
        if not (pa.types.is_binary(chunk.type) or pa.types.is_large_binary(chunk.type)):
            out += chunk.to_pylist()  # (another layout, e.g. binary_view: copied, as before)
            continue
        _, offsets, data = chunk.buffers()  # (the chunk may be a slice of them: its offset)
        width = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        at = np.frombuffer(offsets, width, len(chunk) + 1, chunk.offset * np.dtype(width).itemsize)
        out += [data.slice(at[i], at[i + 1] - at[i]) if ok and data is not None else None for i, ok in enumerate(chunk.is_valid().to_pylist())]
    return out


def frames_and_indices(batch: pa.Table, plan_name: str) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Per row, the frames sampled for `plan_name` and their indices in the clip (None when none)."""
    out = []
    for blob in _blobs(batch):
        arrays = unpack(blob, (plan_name, f"{plan_name}__idx"))
        out.append((arrays[plan_name], arrays[f"{plan_name}__idx"]) if plan_name in arrays else None)
    return out


def frames_for(batch: pa.Table, plan_name: str) -> list[np.ndarray | None]:
    """Per row, the (N, H, W, 3) frames sampled for `plan_name` (None when the row has none)."""
    return [unpack(blob, (plan_name,)).get(plan_name) for blob in _blobs(batch)]
