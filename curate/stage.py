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


@dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int | None = 1
    # Stateful stages (models) run as an actor pool of this size; None = run as Ray tasks.
    actors: int | None = None


@runtime_checkable
class Stage(Protocol):
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    resources: ClassVar[Resources]
    output_columns: ClassVar[tuple[str, ...]]

    def __init__(self, params: BaseModel) -> None: ...

    def setup(self) -> None: ...

    def __call__(self, batch: pa.Table) -> pa.Table: ...


def check_stage(cls: type) -> None:
    """Fail early (at import of the pipeline) when a stage declares columns the schema lacks."""
    unknown = [c for c in cls.output_columns if c not in schema.column_names()]
    if unknown:
        raise TypeError(f"stage {cls.name!r} declares columns missing from curate/schema.py: {unknown}")


def add_error(errors: list[str] | None, stage: str, message: str) -> list[str]:
    """The `errors` list of a row with one more "<stage>: <message>" entry."""
    return [*(errors or []), f"{stage}: {message}"]


# --- the per-video record that travels from probe to clips -----------------------------------
# Video-level stages (probe, cuts, clips) carry one JSON column, schema.VIDEO_META, per input
# row: probe writes it, cuts adds to it, clips expands each input into its clip rows. A video
# that fails anywhere gets `quarantine` set and later stages pass it through untouched.

import json as _json  # noqa: E402
import time as _time  # noqa: E402


def read_meta(batch: pa.Table) -> list[dict]:
    if schema.VIDEO_META not in batch.column_names:
        return [{} for _ in range(batch.num_rows)]
    return [_json.loads(m) if m else {} for m in batch.column(schema.VIDEO_META).to_pylist()]


def with_meta(batch: pa.Table, metas: list[dict]) -> pa.Table:
    col = pa.array([_json.dumps(m) for m in metas], pa.string())
    if schema.VIDEO_META in batch.column_names:
        return batch.set_column(batch.column_names.index(schema.VIDEO_META), schema.VIDEO_META, col)
    return batch.append_column(schema.VIDEO_META, col)


def quarantine(meta: dict, reason: str, detail: str) -> dict:
    meta["quarantine"] = {"reason": reason, "detail": detail[:2000]}
    return meta


def remaining_s(meta: dict) -> float | None:
    """Seconds left of this input's time budget (set by probe), or None when unlimited."""
    deadline = meta.get("deadline")
    return None if deadline is None else deadline - _time.time()
