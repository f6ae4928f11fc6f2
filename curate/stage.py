"""The Stage contract shared by every pipeline step and scorer (see DESIGN.md).

A stage is a class: a cheap constructor (runs on the driver too), `setup()` for heavy imports and
model loading (once per Ray actor), and `__call__(batch) -> batch` that keeps the rows and adds
columns. The Ray wiring lives in pipelines/curate.py; without Ray a test does
`s = Stage(params); s.setup(); s(table)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

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


@runtime_checkable
class Stage(Protocol):
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    resources: ClassVar[Resources]
    output_columns: ClassVar[tuple[str, ...]]

    def __init__(self, params: BaseModel) -> None: ...

    def setup(self) -> None: ...

    def __call__(self, batch: pa.Table) -> pa.Table: ...


class StageBase:
    """The contract's defaults; every stage subclasses it (the Protocol above stays the spec).

    The wiring (pipelines/curate.py) builds a stage where it runs, calls `setup()` once (per Ray
    actor, per task, or once locally) and then only `__call__`: a stage never calls its own
    setup. The hooks below have defaults, so the wiring never asks `hasattr`."""

    resources: ClassVar[Resources] = Resources()
    output_columns: ClassVar[tuple[str, ...]] = ()
    order: ClassVar[int] = 100  # scorers run in this order (curate.registry)

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


def check_stage(cls: type) -> None:
    """Fail early (at import of the pipeline) when a stage declares columns the schema lacks."""
    unknown = [c for c in cls.output_columns if c not in schema.column_names()]
    if unknown:
        raise TypeError(f"stage {cls.name!r} declares columns missing from curate/schema.py: {unknown}")


def add_error(errors: list[str] | None, stage: str, message: str) -> list[str]:
    """The `errors` list of a row with one more "<stage>: <message>" entry."""
    return [*(errors or []), f"{stage}: {message}"]


# --- helpers for scorers ------------------------------------------------------------------------
def set_columns(batch: pa.Table, values: dict[str, list]) -> pa.Table:
    """Set (or add) columns, typed as curate/schema.py declares them."""
    types = {f.name: f.type for f in schema.CLIP_SCHEMA}
    for name, vals in values.items():
        col = pa.array(vals, types[name])
        if name in batch.column_names:
            batch = batch.set_column(batch.column_names.index(name), name, col)
        else:
            batch = batch.append_column(name, col)
    return batch


def score_each(batch: pa.Table, stage_name: str, frames: list, columns: tuple[str, ...], fn) -> pa.Table:
    """Apply `fn(frames) -> {column: value}` to each row that has frames.

    Rows without frames (no clip, or decode failed) keep null scores; a row whose scoring raises
    gets null scores and an "<stage>: <message>" entry in `errors`: one bad row never kills a batch.
    """
    out: dict[str, list] = {c: [None] * batch.num_rows for c in columns}
    errors = batch.column(schema.ERRORS).to_pylist() if schema.ERRORS in batch.column_names else [None] * batch.num_rows
    uris = batch.column(schema.CLIP_URI).to_pylist() if schema.CLIP_URI in batch.column_names else [None] * batch.num_rows
    for i, f in enumerate(frames):
        if f is None:
            if uris[i]:
                errors[i] = add_error(errors[i], stage_name, "no frames sampled")
            continue
        try:
            result = fn(f)
        except Exception as e:  # noqa: BLE001
            errors[i] = add_error(errors[i], stage_name, f"{type(e).__name__}: {e}")
            continue
        for c in columns:
            out[c][i] = result[c]
    out[schema.ERRORS] = errors
    return set_columns(batch, out)
