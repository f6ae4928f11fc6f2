"""The curation graph on Ray Data (or in-process): the one executor `curate run` and `curate
rescore` both call, and the only module that knows about Ray.

Every stage is a class with the Stage contract (curate.stage); here each becomes a `map_batches`
step: model-free stages as Ray tasks, stages that hold state (models) as actor pools set up once
per actor. `execute` streams tables through the steps; `regroup` hands back each unit of work (an
input, a committed part) once all its rows came through, which is what the callers commit.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import pyarrow as pa
from pydantic import BaseModel

from curate import schema
from curate.config import ConfigError, PipelineConfig
from curate.models import ModelRef
from curate.per_video import VideoStage
from curate import registry
from curate.registry import scorers as registered_scorers
from curate.sample import SampleStage
from curate.stage import AUTO, check_stage

log = logging.getLogger("curate")

for _cls in (VideoStage, SampleStage):
    check_stage(_cls)  # (the scorers are checked as the registry loads them)

def enabled_scorers(cfg: PipelineConfig, skip: set[str] = frozenset()) -> list[tuple[type, BaseModel]]:
    """(scorer class, its params) for every enabled scorer, in run order (curate.registry)."""
    return [(cls, getattr(cfg.scorers, name)) for name, cls in registered_scorers().items()
            if getattr(cfg.scorers, name).enabled and name not in skip]  # fmt: skip


def model_stages(cfg: PipelineConfig) -> list[tuple[str, bool, list[ModelRef]]]:
    """(stage, optional, the weights it needs) for every enabled stage that loads a model."""
    return [(cls.name, params.optional, cls.model_refs(params))
            for cls, params in enabled_scorers(cfg) if cls.model_refs(params)]  # fmt: skip


@dataclass(frozen=True)
class StageSpec:
    """One step of the graph: the class, its constructor arguments (instances are built where
    they run) and the params its resources come from (none: the class's own declaration)."""

    cls: type
    args: tuple
    params: BaseModel | None = None


def timed(stage, batch: pa.Table) -> pa.Table:
    """Call a stage and charge its seconds to the batch's rows (evenly), in an internal column of
    its own (`_seconds.<stage>`); the driver sums them per input into the manifest's
    stage_seconds. The per-video stage times its own steps (probe, cuts, clips) in its record."""
    t0 = time.perf_counter()
    out = stage(batch)
    if stage.name == VideoStage.name or out.num_rows == 0:
        return out
    name = f"{schema.SECONDS}.{stage.name}"
    col = pa.array([(time.perf_counter() - t0) / out.num_rows] * out.num_rows, pa.float64())
    if name in out.column_names:  # (a stage runs once per row: only a retried batch gets here)
        return out.set_column(out.column_names.index(name), name, col)
    return out.append_column(name, col)


class CrashLedger:
    """Which batches and rows were running when a Ray worker died (held by a zero-CPU actor).

    Ray Data retries a task whose worker died without limit (an actor pool restarts the actor and
    retries; task steps retry forever too), so an input that kills native code every time (a
    segfault in a decoder or a model's kernels, the OOM killer) hung the whole run. Ray's own retry
    limits are no way out: remote arguments that differ from the sample step's keep Ray from fusing
    that step into the first pool, and on a cluster whose CPUs the pools hold it then never runs
    (measured, reverted in e59ca01). So the retry decides for itself, in `guarded`: a batch that
    was begun and never ended killed its worker."""

    def __init__(self) -> None:
        self.begun: dict[str, int] = {}

    def begin(self, key: str) -> int:
        """How often `key` was begun before and not ended (0: a first attempt)."""
        self.begun[key] = self.begun.get(key, 0) + 1
        return self.begun[key] - 1

    def end(self, key: str) -> None:
        self.begun.pop(key, None)


WORKER_DIED = "its Ray worker died running this clip alone (a crash in native code, or the OOM killer); not run again"


def row_keys(batch: pa.Table) -> list[str]:
    """Per row, what identifies it across a retry: its clip (its input where it has none)."""
    import hashlib

    n = batch.num_rows
    uris = batch.column(schema.SOURCE_URI).to_pylist() if schema.SOURCE_URI in batch.column_names else [None] * n
    clips = batch.column(schema.CLIP_ID).to_pylist() if schema.CLIP_ID in batch.column_names else [None] * n
    return [hashlib.sha1(f"{u}\0{c}\0{i if c is None else ''}".encode()).hexdigest() for i, (u, c) in enumerate(zip(uris, clips))]


def guarded(stage, batch: pa.Table, ledger) -> pa.Table:
    """`timed(stage, batch)`, safe against an input that kills its worker every time.

    A first attempt runs the batch whole. A retried one (its worker died: it was begun and never
    ended) runs its rows one at a time; a row that was running alone when a worker died is not run
    again but handed on with the stage's columns null and the cause in `errors`, so the other rows
    of the batch, which Ray bundles from several inputs, are scored and the run ends. Costs two
    calls to the ledger per batch. The per-video stage needs none: its work runs in a watchdog
    child (curate.per_video), and a crash there is a quarantine row."""
    import hashlib

    import ray

    if ledger is None or batch.num_rows == 0:
        return timed(stage, batch)
    keys = [f"{stage.name}/{k}" for k in row_keys(batch)]
    whole = f"{stage.name}/batch/" + hashlib.sha1(" ".join(keys).encode()).hexdigest()
    if ray.get(ledger.begin.remote(whole)) == 0:
        out = timed(stage, batch)
    else:
        parts = []
        for i, key in enumerate(keys):
            one = batch.slice(i, 1)
            if ray.get(ledger.begin.remote(key)) == 0:
                parts.append(timed(stage, one))
                ray.get(ledger.end.remote(key))  # synchronous: a later death must not find it begun
            else:
                parts.append(crashed(stage, one))
        out = pa.concat_tables(parts, promote_options="default")
    ray.get(ledger.end.remote(whole))
    return out


def crashed(stage, rows: pa.Table) -> pa.Table:
    """`rows` as `stage` hands on a row it could not run: its columns null, the cause in `errors`."""
    from curate.stage import add_error, set_columns

    n = rows.num_rows
    errors = rows.column(schema.ERRORS).to_pylist() if schema.ERRORS in rows.column_names else [None] * n
    values: dict[str, list] = {c: [None] * n for c in stage.output_columns if c != schema.ERRORS}
    values[schema.ERRORS] = [add_error(e, stage.name, WORKER_DIED) for e in errors]
    return set_columns(rows, values, (*getattr(stage, "output_fields", ()), *registry.score_fields()))


def task_function(cls: type, args: tuple, ledger=None) -> Callable[[pa.Table], pa.Table]:
    """A Ray task body around a stateless stage: construction and setup are cheap, so per batch.
    Named after the stage, as Ray's plans and stats name the operator. `ledger`: see `guarded`."""

    def apply(batch: pa.Table) -> pa.Table:
        stage = cls(*args)
        stage.setup()
        return guarded(stage, batch, ledger)

    apply.__name__ = apply.__qualname__ = cls.__name__
    return apply


def actor_class(cls: type, args: tuple, ledger=None) -> type:
    """A Ray Data callable class around a stage: built and set up once per actor, then called.
    `ledger`: see `guarded`."""

    class StageActor:
        def __init__(self) -> None:
            self.stage = cls(*args)
            self.stage.setup()

        def __call__(self, batch: pa.Table) -> pa.Table:
            return guarded(self.stage, batch, ledger)

    StageActor.__name__ = StageActor.__qualname__ = cls.__name__  # how Ray names the operator
    return StageActor


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Attach to `address`, or start a quiet local Ray (no dashboard, no usage stats)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return
    for name in ("ray", "ray.data", "ray._private"):
        logging.getLogger(name).setLevel(logging.ERROR)
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level=logging.WARNING)
    if address:
        ray.init(address=address, **kwargs)
    else:
        from curate import reaper

        reaper.start()  # a killed driver must not leave this Ray's processes behind
        ray.init(num_cpus=num_cpus, **kwargs)
    _say_worker_deaths_once()


_DEATH_LINES = ("worker died or was killed", "retries remaining, so the task will be retried")


def _say_worker_deaths_once() -> None:
    """Ray's driver prints every worker death the raylet reports (two paragraphs of Ray's advice
    each, even with log_to_driver off); a clip that crashes native code costs one per retry. curate
    says it once, in its own words (what `guarded` then does). Ray has no public switch for it: the
    module function its listener thread calls is wrapped, and left alone if Ray renames it."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "curate", False):
        return
    said: set[str] = set()  # what was said once: "death", "state"

    def print_to_stdstream(data, ignore_prefix, *args, **kwargs):
        lines = data.get("lines", [])
        if any("[state-dump]" in line for line in lines):  # a raylet's state when a node dies: ~36 lines
            kept = [line for line in lines if "[state-dump]" not in line]
            if "state" not in said:
                said.add("state")
                log.warning("a Ray node reported its state (a node died or stalled): Ray runs its work on the "
                            "nodes left; nothing committed is lost")  # fmt: skip
            if not kept:
                return
            data = {**data, "lines": kept}
        if data.get("pid") == "raylet" and any(m in line for line in data.get("lines", []) for m in _DEATH_LINES):
            if "death" not in said:
                said.add("death")
                log.warning("a Ray worker died (a crash in native code, or the OOM killer: dmesg says which); Ray "
                            "restarts it and curate runs the clips it held one at a time: a clip that kills it again "
                            "is kept unscored, with the cause in its errors column")  # fmt: skip
            return
        return original(data, ignore_prefix, *args, **kwargs)

    print_to_stdstream.curate = True
    ray_worker.print_to_stdstream = print_to_stdstream


class ResourcesShort(ConfigError):
    """The scorers' actor pools cannot all start on this Ray cluster: the run would wait forever."""


def check_pools_fit(stages: list[StageSpec], cluster: dict[str, float]) -> float:
    """The CPUs left beside the scorers' actor pools (each holds its first actor from the start) on
    a cluster of these resources (ray.cluster_resources()). Raises ResourcesShort when the pools
    alone do not fit: Ray would start some of them and wait forever for the rest."""
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    need = {}
    for spec in stages:
        res = spec.cls.resources_for(spec.params, gpus > 0)
        if res.actors is not None:
            need[spec.cls.name] = (res.num_cpus, res.num_gpus)
    held_cpu, held_gpu = sum(c for c, _ in need.values()), sum(g for _, g in need.values())
    if held_cpu > cpus + 1e-9 or held_gpu > gpus + 1e-9:
        each = ", ".join(f"{name} {c:g} CPU" + (f" + {g:g} GPU" if g else "") for name, (c, g) in need.items())
        raise ResourcesShort(
            f"the scorers' actor pools need {held_cpu:g} CPUs and {held_gpu:g} GPUs at once ({each}); this Ray "
            f"cluster has {cpus:g} CPUs and {gpus:g} GPUs: lower scorers.<stage>.num_cpus (num_gpus), turn a stage off, "
            "or give Ray more (ray.num_cpus, ray.address)")  # fmt: skip
    return cpus - held_cpu


def video_tasks_apart(stages: list[StageSpec], cluster: dict[str, float]) -> bool:
    """Whether the per-video stage gets tasks of its own, beside the scorers' actor pools.

    Ray Data fuses a task step into the actor pool after it when their remote arguments match.
    The per-video stage (cuts and clips, most of the pass) then runs only in as many processes as
    that pool holds (a model's one actor), in bundles of the scorer's batch size (measured on the
    demo: 8 inputs per call, one lane busy; 68 s against 60 s apart). Apart it needs a CPU the
    pools do not hold; where there is none (a small machine with several model stages), the
    fused layout is the one that can run. Raises as check_pools_fit does."""
    spare = check_pools_fit(stages, cluster)
    video = next((spec for spec in stages if spec.cls is VideoStage), None)
    return video is not None and spare >= video.cls.resources_for(video.params).num_cpus - 1e-9


def add_steps(ds, cfg: PipelineConfig, stages: list[StageSpec], gpus_in_cluster: bool = False,
              video_apart: bool = True):
    """One Ray Data step per stage on `ds` (lazy: nothing runs until it is iterated); the one
    place that turns Stage resources into Ray compute (curate run and curate rescore).
    `video_apart` (video_tasks_apart): the per-video stage's declared memory, which keeps Ray
    from fusing it into the next pool (ray#54433 gives that advice), is passed on."""
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    # held by the steps' closures (so it lives as long as the dataset), one per run; if its node
    # goes, it comes back empty (a retry then looks like a first attempt) rather than failing the run
    ledger = ray.remote(CrashLedger).options(num_cpus=0, max_restarts=-1, max_task_retries=-1).remote()
    for spec in stages:
        res = spec.cls.resources_for(spec.params, gpus_in_cluster)
        memory = None if spec.cls is VideoStage and not video_apart else res.memory
        watch = None if spec.cls is VideoStage else ledger  # its work runs in a watchdog child
        if res.actors is not None:  # stateful (a model, an OCR engine): set up once per actor
            fn = actor_class(spec.cls, spec.args, watch)
            compute = ActorPoolStrategy(min_size=1, max_size=None if res.actors == AUTO else res.actors)
        else:
            fn, compute = task_function(spec.cls, spec.args, watch), TaskPoolStrategy(size=cfg.ray.video_concurrency)
        ds = ds.map_batches(fn, batch_size=res.batch_size, batch_format="pyarrow", num_cpus=res.num_cpus,
                            num_gpus=res.num_gpus, memory=memory, compute=compute)  # fmt: skip
    return ds


def input_blocks(n: int, cluster: dict[str, float], per_block: int = 8) -> int:
    """How many blocks `n` units of work (inputs) are cut into: one task per block, which runs its inputs one
    batch (one input) at a time, so a block of several inputs still hands each on as it finishes.
    One block per input cost a Ray task per input (290 -> 207 ms per 1-second input on 2 CPUs,
    bench/scale.py); blocks of `per_block` inputs, but never fewer than 4 blocks per CPU: a long
    input holds back at most the rest of its own block while the other blocks keep the CPUs busy
    (the long-input issue splits such inputs into segments). A retried block redelivers inputs the
    committer already has: it ignores them (Committer.add_video)."""
    cpus = max(1, int(cluster.get("CPU", 1)))
    return max(1, min(n, max(4 * cpus, -(-n // per_block))))


def storage_cause(e: BaseException) -> OSError | None:
    """The storage failure (an OSError) under a Ray task error `e`, if that is what it is: a
    step's setup or a write that found the store gone reaches the driver wrapped twice
    (RayTaskError, UserCodeException: no cause kept, only its text), with pages of Ray's frames;
    the cause alone is what a user can act on."""
    import re

    if isinstance(e, OSError):  # RayTaskError(OSError) is one
        return e
    for line in reversed(str(e).splitlines()):  # else Ray keeps only the text of a worker's exception
        m = re.match(r"^\s*(?:[\w.]+\.)?(OSError|FileNotFoundError|PermissionError|ConnectionError|"
                     r"TimeoutError|ClientError|EndpointConnectionError|NoCredentialsError): (.+)$", line)
        if m:
            return OSError(m.group(2).strip())
    return None


def scorer_specs(cfg: PipelineConfig, names: Iterable[str] | None = None, skip: Iterable[str] = ()) -> list[StageSpec]:
    """The sample step (one decode for all of them) and the enabled scorers (only `names`, when
    given), in run order; nothing when no scorer is left."""
    skip = set(skip)
    scorers = [(cls, p) for cls, p in enabled_scorers(cfg, skip) if names is None or cls.name in names]
    if not scorers:
        return []
    plans = [plan for cls, params in scorers for plan in cls.plans(params)]
    return [StageSpec(SampleStage, (cfg.sample, plans), cfg.sample)] + [StageSpec(cls, (p,), p) for cls, p in scorers]


def execute(cfg: PipelineConfig, units: list[pa.Table] | pa.Table, specs: list[StageSpec],
            local_rows: int = 1) -> Iterable[pa.Table]:
    """Stream the units of work (a committed part's rows; or one table, a unit per row: the inputs,
    with no Python object per input, which a million inputs would feel) through the stages: on
    Ray (units joined into `input_blocks` blocks; the stages' own batch sizes) or in this process
    (`local_rows` rows at a time into the first stage, whose rows go on through the others a
    stage's batch at a time: a batch's frames are in memory at once, not an input's). The scorers'
    frames (`_samples`) are dropped once the last stage has them: nothing after needs them, and an
    input's rows wait in `regroup` until all of them came. Batches come back in no promised order:
    `regroup` them."""
    if cfg.executor != "ray":
        stages = [spec.cls(*spec.args) for spec in specs]
        for s in stages:
            s.setup()
        first, rest = stages[:1], stages[1:]
        step = max([spec.cls.resources_for(spec.params).batch_size or 1 for spec in specs[1:]] or [1])
        plans = [p for s in rest if isinstance(s, SampleStage) for p in s.wanted]
        for unit in _each(units):
            for start in range(0, unit.num_rows, local_rows):
                batch = _through(first, unit.slice(start, local_rows))
                # no name holds a part past its yield: each part's frames go once it is scored
                parts = _parts(batch, step, plans) if rest else [batch]
                del batch
                while parts:
                    yield _without_samples(_through(rest, parts.pop(0)))
                    # what the part freed goes back to the OS: Arrow's pool would keep it, and the
                    # next input's decode (the watchdog child, ffmpeg) would sit on top of it
                    pa.default_memory_pool().release_unused()
        return
    import ray
    from ray.data import DataContext

    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # a failure reaches the driver as an exception: curate says it in one line
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI draws its own rich progress
    ctx.print_on_execution_start = False
    ds = build_dataset(cfg, units, specs, ray.cluster_resources())
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield _without_samples(batch)
    except Exception as e:
        if type(e).__module__.startswith("ray"):
            raise storage_cause(e) or e
        raise


PART_BYTES = 64 << 20  # scorers' frames in one part of the local executor, at most (or one row's)


def _parts(batch: pa.Table, step: int, plans: list) -> list[pa.Table]:
    """`batch` in parts of `step` rows and PART_BYTES of the frames the sample step gives each
    row (reckoned from the plans): 32 rows of a 1080p source are 121 MB, which the local
    executor held at once (bench/README, the deferred mode's memory)."""
    cols = [batch.column(c).to_pylist() if c in batch.column_names else [None] * batch.num_rows
            for c in (schema.WIDTH, schema.HEIGHT, schema.NUM_FRAMES, schema.FPS)]  # fmt: skip
    parts, at, held = [], 0, 0
    for i, (w, h, n, fps) in enumerate(zip(*cols)):
        size = sum(p.nbytes(w, h, n, fps) for p in plans) if None not in (w, h, n, fps) else 0
        if i > at and (i - at >= step or held + size > PART_BYTES):
            parts.append(batch.slice(at, i - at))
            at, held = i, 0
        held += size
    return parts + [batch.slice(at)] if batch.num_rows else parts


def _each(units: list[pa.Table] | pa.Table) -> Iterable[pa.Table]:
    return (units.slice(i, 1) for i in range(units.num_rows)) if isinstance(units, pa.Table) else iter(units)


def _through(stages: list, batch: pa.Table) -> pa.Table:
    for s in stages:
        batch = timed(s, batch)
    return batch


def _without_samples(batch: pa.Table) -> pa.Table:
    if schema.SAMPLES not in batch.column_names:
        return batch
    # the rest copied (it is small): its columns can share one buffer with the frames (an Arrow IPC
    # message's body, a Ray block), which would keep the frames until the input is committed
    return batch.drop_columns([schema.SAMPLES]).take(pa.array(range(batch.num_rows), pa.int64()))


def build_dataset(cfg: PipelineConfig, units: list[pa.Table] | pa.Table, specs: list[StageSpec], cluster: dict[str, float]):
    """The lazy Ray Data graph for a cluster of these resources (ray.cluster_resources()): the
    units joined into `input_blocks` blocks, then the stages. Refuses (ResourcesShort) before any
    work when the scorers' pools cannot all start: they would wait forever."""
    import ray

    apart = video_tasks_apart(specs, cluster)
    size = units.num_rows if isinstance(units, pa.Table) else len(units)
    n = input_blocks(size, cluster)
    cuts = [(size * i // n, size * (i + 1) // n) for i in range(n)]
    blocks = [units.slice(a, b - a) if isinstance(units, pa.Table) else pa.concat_tables(units[a:b]) for a, b in cuts]
    return add_steps(ray.data.from_arrow(blocks), cfg, specs, cluster.get("GPU", 0.0) > 0, apart)


def regroup(batches: Iterable[pa.Table], key: str, expected: Callable[[str, pa.Table], int]):
    """(key, its rows) for each value of column `key` once all its rows came through, whatever
    order and batching Ray delivered them in; `expected(key, first rows)` says how many make it
    whole. Leftovers (a unit that never completed) stay in the returned generator's `pending`."""
    pending: dict[str, list[pa.Table]] = {}
    for batch in batches:
        if batch.num_rows == 0:
            continue
        index: dict[str, list[int]] = {}
        for i, k in enumerate(batch.column(key).to_pylist()):
            index.setdefault(k, []).append(i)
        for k, rows in index.items():
            got = pending.setdefault(k, [])
            got.append(batch.take(rows))
            if sum(t.num_rows for t in got) >= expected(k, got[0]):
                yield k, pa.concat_tables(pending.pop(k), promote_options="default")
    if pending:
        raise RuntimeError(f"{len(pending)} units of work ended incomplete (first: {next(iter(pending))})")
