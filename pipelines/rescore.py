"""`curate rescore OUT --set scorers...`: add or recompute scorer columns on an existing OUT from
its clip files, without redoing cuts and clips (a new scorer on last month's corpus).

The new config is OUT's own (manifest.json) with the overrides applied; only the scorer and
runtime sections may change (`scorers`, `sample`, `executor`, `ray`): anything else would change
the clips, which is a new `curate run`. The scorers that run are those that are new, changed,
skipped by the run for missing weights, or named with `--scorer`; a scorer switched off has its
columns set to null. The sample step decodes the clip files (the run's extraction decode is gone).

Exactly-once like `run`, on the same commit protocol: each committed part is one transaction:
its rows are rescored and written as a new part, and a commit record of kind `rescore` names the
new part and removes the old one (recover() rolls it forward or back). A resumed rescore skips
the parts a `rescore` commit of the same config already wrote. A last `rescore_done` record makes
the new config OUT's config: a later `curate run` resumes with it (and is refused with the old
one), and the hashes of the rows it replaced are accepted from then on.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from curate import registry, schema
from curate.config import ConfigError, PipelineConfig, _set_dotted, format_error, parse_override, pipeline_config_model
from curate.dataset import open_out
from curate.errors import UserError
from curate.lease import lease_for
from curate.shards import MANIFEST_FILE, RESCORE, RESCORE_DONE, SHARDS, Committer, resolve_clip_uris
from curate.storage import OutputStore, check_out_path
from pipelines.graph import enabled_scorers, execute, model_stages, regroup, scorer_specs

RESCORE_KEYS = ("scorers", "sample", "executor", "ray", "name")
PART_COLUMN = "_part"  # in flight: which committed part a row came from ...
ROW_COLUMN = "_row"  # ... and where in it


class RescoreError(UserError, ValueError):
    """A rescore that cannot start (not a finished OUT, an override outside the scorers)."""


@dataclass
class RescoreResult:
    out: str
    scorers: list[str]  # recomputed
    cleared: list[str]  # switched off: columns set to null
    parts_done: int  # parts rescored by this call
    parts_skipped: int  # already rescored by an interrupted call with the same config
    rows: int
    manifest: dict


def new_config(out: str, sets: list[str]) -> tuple[PipelineConfig, PipelineConfig, dict]:
    """(OUT's config, the config with `sets` applied, OUT's manifest)."""
    check_out_path(out)
    _, manifest = open_out(out)
    data = manifest["config"]
    model = pipeline_config_model()
    try:
        old = model.model_validate(data)
    except ValidationError as e:  # a manifest from another version of curate
        raise RescoreError(format_error(f"{out}/{MANIFEST_FILE} (config)", e)) from None
    data = copy.deepcopy(data)
    for item in sets:
        key, value = parse_override(item)
        if key.split(".", 1)[0] not in RESCORE_KEYS:
            raise ConfigError(f"--set {item!r}: rescore changes scores only ({', '.join(RESCORE_KEYS)}); "
                              f"{key} changes the clips: that is a new `curate run`")  # fmt: skip
        _set_dotted(data, key, value)
    try:
        new = model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_error("--set", e)) from None
    return old, new, manifest


def plan(old: PipelineConfig, new: PipelineConfig, manifest: dict, named: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """(scorers to compute, scorers switched off) in registry order."""
    from curate.registry import scorers

    named = set(named)
    unknown = named - set(scorers())
    if unknown:
        raise ConfigError(f"--scorer {sorted(unknown)[0]!r}: no such scorer ({', '.join(scorers())})")
    skipped = set(manifest.get("skipped_stages") or {})
    known = set(((manifest.get("config") or {}).get("scorers") or {}))  # a scorer newer than OUT is new to it
    run, cleared = [], []
    for name in scorers():
        o, n = getattr(old.scorers, name), getattr(new.scorers, name)
        if n.enabled and (not o.enabled or o != n or name in skipped or name in named or name not in known):
            run.append(name)
        elif o.enabled and not n.enabled:
            cleared.append(name)
        elif name in named:
            raise ConfigError(f"--scorer {name}: it is not enabled (add --set scorers.{name}.enabled=true)")
    return run, cleared


def rescore(out: str, sets: list[str], named: Iterable[str] = (), *,
            on_progress: Callable[[int, int], None] | None = None) -> RescoreResult:
    from curate.models import preflight

    named = list(named)
    old, new, _ = new_config(out, sets)
    store = OutputStore(out, create=False)
    lease = lease_for(store)
    lease.acquire()
    try:
        manifest = json.loads(store.read_bytes(MANIFEST_FILE))  # under the lease: the settled one
        run_names, cleared = plan(old, new, manifest, named)
        if not (run_names or cleared):
            return RescoreResult(store.uri, [], [], 0, 0, 0, manifest)  # nothing to do: OUT untouched (its hash too)
        skip, reasons = preflight([s for s in model_stages(new) if s[0] in run_names])
        run_names = [n for n in run_names if n not in skip]  # optional and without weights: loud, not fatal
        committer = Committer(store, new.hash(), new.shards.max_rows, new.shards.compression, lease=lease)
        committer.also_accept = {old.hash()}
        committer.recover()
        done = {p for rec in committer.records if rec.get("kind") == RESCORE and rec["config_hash"] == new.hash()
                for p in rec["parts"]}  # fmt: skip
        todo = [p for p in committer.live_parts if p not in done] if (run_names or cleared) else []
        skipped = len(committer.live_parts) - len(todo)
        rows = _rescore_parts(new, store, committer, todo, run_names, cleared, old.hash(), on_progress,
                              {"overrides": list(sets), "named": sorted(set(named))})
        if old.hash() != new.hash():
            committer.mark(kind=RESCORE_DONE, from_hash=old.hash(), scorers=run_names, cleared=cleared)
        info = {"started": time.time(), "rescore": run_names, "cleared": cleared, "parts": len(todo),
                "skipped_stages": reasons, "executor": new.executor}  # fmt: skip
        analysis = {cls.name: params.model_dump(mode="json") for cls, params in enabled_scorers(new, set(skip))}
        skipped_stages = {k: v for k, v in (manifest.get("skipped_stages") or {}).items() if k not in run_names}
        skipped_stages.update(reasons)
        manifest = committer.write_manifest(new.model_dump(mode="json"), info,
                                            {"scorers": analysis, "skipped_stages": skipped_stages})  # fmt: skip
        return RescoreResult(store.uri, run_names, cleared, len(todo), skipped, rows, manifest)
    finally:
        lease.release()


def _rescore_parts(cfg: PipelineConfig, store: OutputStore, committer: Committer, parts: list[str],
                   run_names: list[str], cleared: list[str], from_hash: str, on_progress, how: dict) -> int:
    """`how`: the overrides and --scorer names, kept in each rescore record so that a rescore
    killed half-way can be named and finished exactly (shards.rescore_in_progress)."""
    from curate.registry import scorers as registered

    if on_progress:
        on_progress(0, len(parts))
    specs = scorer_specs(cfg, names=run_names)
    null_cols = [c for name in cleared for c in registered()[name].output_columns if c != schema.ERRORS]
    redo = {*run_names, *cleared, *(["sample"] if specs else [])}
    base_names = set(registry.clip_schema().names)

    def rescored_family(column: str) -> bool:  # a rubric's vlm_<name> of a scorer that runs again
        family = registry.family_of(column)
        return column not in base_names and family is not None and family[0] in redo

    def prepare(part: str) -> pa.Table:
        table = pq.read_table(store.path(SHARDS, part), filesystem=store.fs)
        table = registry.conform(table)  # a part from before a column existed gets it (null)
        table = resolve_clip_uris(store, table)  # OUT may have been moved since: its clips are where it is now
        # the recomputed stages' old errors go: their new ones (if any) are added as they run
        errors = [[e for e in (errs or []) if e.split(":", 1)[0] not in redo] for errs in table.column(schema.ERRORS).to_pylist()]
        table = table.set_column(table.column_names.index(schema.ERRORS), schema.ERRORS, pa.array(errors, pa.list_(pa.string())))
        # a recomputed or cleared scorer's named columns (a rubric's) go: the new config says which exist
        table = table.drop_columns([c for c in table.column_names if rescored_family(c)])
        for c in null_cols:
            table = table.set_column(table.column_names.index(c), c, pa.nulls(table.num_rows, table.schema.field(c).type))
        table = table.append_column(PART_COLUMN, pa.array([part] * table.num_rows, pa.string()))
        return table.append_column(ROW_COLUMN, pa.array(range(table.num_rows), pa.int64()))

    rows = finished = 0
    for part, table in _scored(cfg, parts, prepare, specs):
        drop = [c for c in table.column_names if c.startswith(schema.INTERNAL_PREFIX)]
        committer.replace_part(part, table.drop_columns(drop), kind=RESCORE, from_hash=from_hash, **how)
        rows += table.num_rows
        finished += 1
        if on_progress:
            on_progress(finished, len(parts))
    return rows


def _scored(cfg: PipelineConfig, parts: list[str], prepare, specs):
    """(part, its rescored rows in their stored order) as each part completes."""
    units = []
    counts = {}
    for p in parts:
        table = prepare(p)
        counts[p] = table.num_rows
        if table.num_rows:
            units.append(table)
        else:
            yield p, table  # nothing to score: the part is rewritten as it is
    if not units:
        return
    for part, rows in regroup(execute(cfg, units, specs, local_rows=16), PART_COLUMN, lambda p, _: counts[p]):
        yield part, rows.sort_by(ROW_COLUMN)  # the part's own order, whatever Ray's
