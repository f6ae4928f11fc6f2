"""The one ordered registry of scorers. It drives the config's `scorers` section, the stage checks,
model preflight, the shard schema (each scorer declares its own columns) and the Ray wiring, so a
new scorer is one file and one entry point. Scorers come from the `curate.scorers` entry points (this project's, in
pyproject.toml, and any installed plugin's) or from `register()`; curate/ never imports scoring/.
They run in `order` (captions before the LLM merges them, before CLIP scores them), then by name.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

import pyarrow as pa

from curate import schema

from curate.stage import check_stage

GROUP = "curate.scorers"
_registered: dict[str, type] = {}
_loaded: dict[str, type] | None = None
version = 0  # bumped on every change, so models built from the registry can be cached per version


def _from_entry_points() -> dict[str, type]:
    found = {}
    for ep in entry_points(group=GROUP):
        cls = ep.load()
        if cls.name != ep.name:
            raise TypeError(f"entry point {ep.name} = {ep.value}: the stage is named {cls.name!r}")
        check_stage(cls)
        found[ep.name] = cls
    return found


def scorers() -> dict[str, type]:
    """name -> scorer class, in run order."""
    global _loaded
    if _loaded is None:
        _loaded = _from_entry_points()
    both = {**_loaded, **_registered}
    return dict(sorted(both.items(), key=lambda kv: (getattr(kv[1], "order", 100), kv[0])))


def reload() -> None:
    """Read the entry points again (a plugin installed or removed since they were read)."""
    global _loaded, version
    import importlib

    importlib.invalidate_caches()
    _loaded = None
    version += 1


def register(cls: type) -> type:
    """Add (or replace) a scorer by its `name`; usable as a class decorator."""
    global version
    check_stage(cls)
    _registered[cls.name] = cls
    version += 1
    return cls


# --- the shard schema: the clip fields, then every registered scorer's own --------------------------
def score_fields() -> list[pa.Field]:
    """The columns of every registered scorer (curate.registry), in run order: a plugin's too."""
    return list(_score_fields(version))


@functools.lru_cache(maxsize=4)
def _score_fields(version: int) -> tuple[pa.Field, ...]:
    fields: dict[str, pa.Field] = {f.name: f for f in schema.CLIP_FIELDS}
    for name, cls in scorers().items():
        for f in cls.output_fields:
            if f.name in fields and not fields[f.name].type.equals(f.type):
                raise TypeError(f"scorer {name!r} declares column {f.name!r} as {f.type}; it is already {fields[f.name].type}")
            fields.setdefault(f.name, f)
    return tuple(list(fields.values())[len(schema.CLIP_FIELDS):])


def clip_schema() -> pa.Schema:
    """A shard row: the clip fields, then the scorers' (score_fields)."""
    return _clip_schema(version)


@functools.lru_cache(maxsize=4)
def _clip_schema(version: int) -> pa.Schema:
    return pa.schema(schema.CLIP_FIELDS + list(_score_fields(version)))


def family_of(name: str) -> tuple[str, pa.DataType] | None:
    """(scorer, type) of a column a registered scorer's family names (StageBase.column_families)."""
    return _family_of(version, name)


@functools.lru_cache(maxsize=1024)
def _family_of(version: int, name: str) -> tuple[str, pa.DataType] | None:
    import re

    for scorer, cls in scorers().items():
        for pattern, typ in cls.column_families:
            if re.fullmatch(pattern, name):
                return scorer, typ
    return None


def conform(table: pa.Table) -> pa.Table:
    """Shard-ready table: the declared columns in schema order, cast to their types, then the
    columns of the scorers' families (by name), cast to theirs; anything else is dropped."""
    target = clip_schema()
    cols = []
    for field in target:
        if field.name in table.column_names:
            cols.append(table.column(field.name).cast(field.type))
        else:
            cols.append(pa.nulls(table.num_rows, field.type))
    fields = list(target)
    for name in sorted(set(table.column_names) - set(target.names)):
        family = family_of(name)
        if family is not None:
            cols.append(table.column(name).cast(family[1]))
            fields.append(pa.field(name, family[1]))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))
