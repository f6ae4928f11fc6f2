"""The one ordered registry of scorers. It drives the config's `scorers` section, the stage checks,
model preflight, the shard schema (each scorer declares its own columns) and the Ray wiring, so a
new scorer is one file and one entry point. Scorers come from the `curate.scorers` entry points (this project's, in
pyproject.toml, and any installed plugin's) or from `register()`; curate/ never imports scoring/.
They run in `order` (captions before the LLM merges them, before CLIP scores them), then by name.
"""

from __future__ import annotations

from importlib.metadata import entry_points

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


def unregister(name: str) -> None:
    global version
    _registered.pop(name, None)
    version += 1
