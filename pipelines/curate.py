"""Config -> the curation graph, on Ray Data (or in-process for debugging), committed to OUT.

This is the only module that knows about Ray. Every stage is a class with the Stage contract;
here each becomes a `map_batches` step: model-free stages as Ray tasks, stages that hold state
(models, later) as actor pools. The driver consumes the stream and commits whole videos
(curate.shards), which is what makes a killed run resumable without duplicates.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import pyarrow as pa
from pydantic import BaseModel

from curate import schema
from curate.clips import ClipStage
from curate.config import PipelineConfig
from curate.cuts import CutStage
from curate.shards import Committer, VideoRecord
from curate.stage import check_stage
from curate.storage import OutputStore
from curate.video import ProbeStage

log = logging.getLogger("curate")

from curate.sample import SampleStage  # noqa: E402
from scoring.flow import FlowScorer  # noqa: E402
from scoring.ocr import OcrScorer  # noqa: E402
from scoring.quality import QualityScorer  # noqa: E402

for _cls in (ProbeStage, CutStage, ClipStage, SampleStage, FlowScorer, OcrScorer, QualityScorer):
    check_stage(_cls)


@dataclass
class RunResult:
    out: str
    manifest: dict
    skipped: int  # inputs already done by an earlier run
    processed: int  # inputs finished by this run


SCORERS = {"flow": FlowScorer, "ocr": OcrScorer, "quality": QualityScorer}  # run in this order


def enabled_scorers(cfg: PipelineConfig) -> list[tuple[type, BaseModel]]:
    out = []
    for name, cls in SCORERS.items():
        params = getattr(cfg.scorers, name)
        if params.enabled:
            out.append((cls, params))
    return out


def build_stages(cfg: PipelineConfig, out: str) -> list[tuple[type, tuple]]:
    """The graph as (stage class, constructor args): instances are built where they run."""
    specs: list[tuple[type, tuple]] = [
        (ProbeStage, (cfg.probe, cfg.input_timeout_s)),
        (CutStage, (cfg.cuts, cfg.probe.min_frames)),
        (ClipStage, (cfg.clips, out)),
    ]
    scorers = enabled_scorers(cfg)
    if scorers and cfg.clips.extract:
        plans = [plan for cls, params in scorers for plan in cls.plans(params)]
        specs.append((SampleStage, (cfg.sample, plans)))  # decode each clip once for all scorers
        specs += [(cls, (params,)) for cls, params in scorers]
    return specs


def _apply_stage(batch: pa.Table, stage_cls: type, args: tuple) -> pa.Table:
    """Ray task body for a stateless stage: construction and setup are cheap, so per batch."""
    stage = stage_cls(*args)
    stage.setup()
    return stage(batch)


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
        ray.init(num_cpus=num_cpus, **kwargs)


def _batches_ray(cfg: PipelineConfig, uris: list[str], stages: list[tuple[type, tuple]]) -> Iterable[pa.Table]:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI draws its own rich progress
    ctx.print_on_execution_start = False
    ds = ray.data.from_items([{schema.SOURCE_URI: u} for u in uris], override_num_blocks=max(1, len(uris)))
    for cls, args in stages:
        res = cls.resources
        if res.actors:  # stateful stages (models): load once per actor
            ds = ds.map_batches(
                cls, fn_constructor_args=args, batch_size=res.batch_size,
                batch_format="pyarrow", num_cpus=res.num_cpus, num_gpus=res.num_gpus,
                compute=ActorPoolStrategy(min_size=1, max_size=res.actors),
            )  # fmt: skip
        else:
            ds = ds.map_batches(
                _apply_stage, fn_kwargs={"stage_cls": cls, "args": args},
                batch_size=res.batch_size, batch_format="pyarrow", num_cpus=res.num_cpus,
                concurrency=cfg.ray.video_concurrency,
            )  # fmt: skip
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def _batches_local(uris: list[str], specs: list[tuple[type, tuple]]) -> Iterable[pa.Table]:
    stages = [cls(*args) for cls, args in specs]
    for s in stages:
        s.setup()
    for uri in uris:
        table = pa.table({schema.SOURCE_URI: pa.array([uri], pa.string())})
        for s in stages:
            table = s(table)
        yield table


def run(
    cfg: PipelineConfig,
    inputs: list[str],
    out: str,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Curate `inputs` (already resolved URIs) into OUT, resuming whatever OUT already holds."""
    t_start = time.time()
    store = OutputStore(out)
    committer = Committer(store, cfg.hash(), cfg.shards.max_rows, cfg.shards.compression)
    done = committer.recover()
    todo = [u for u in inputs if u not in done]
    skipped = len(inputs) - len(todo)
    stages = build_stages(cfg, store.uri)
    finished = 0
    if on_progress:
        on_progress(0, len(todo))
    if todo:
        if cfg.executor == "ray":
            init_ray(cfg.ray.address, cfg.ray.num_cpus)
            batches = _batches_ray(cfg, todo, stages)
        else:
            batches = _batches_local(todo, stages)
        pending: dict[str, list[pa.Table]] = {}
        for batch in batches:
            for uri, rows, meta in _complete_videos(batch, pending):
                committer.add_video(_record(uri, meta), rows if meta["clips"] else None)
                finished += 1
                if on_progress:
                    on_progress(finished, len(todo))
        committer.flush()
        if pending:
            raise RuntimeError(f"{len(pending)} inputs ended incomplete (first: {next(iter(pending))})")
    committer.write_quarantine()
    run_info = {
        "started": t_start, "wall_s": round(time.time() - t_start, 3), "inputs_given": len(inputs),
        "skipped_done": skipped, "processed": finished, "executor": cfg.executor,
    }  # fmt: skip
    analysis = {cls.name: params.model_dump(mode="json") for cls, params in enabled_scorers(cfg)}
    manifest = committer.write_manifest(cfg.model_dump(mode="json"), run_info, {"scorers": analysis})
    return RunResult(out=store.uri, manifest=manifest, skipped=skipped, processed=finished)


def _complete_videos(batch: pa.Table, pending: dict[str, list[pa.Table]]):
    """Group streamed rows by input; yield (uri, clip rows, summary) once all rows of it arrived."""
    if batch.num_rows == 0:
        return
    uris = batch.column(schema.SOURCE_URI).to_pylist()
    metas = batch.column(schema.VIDEO_META).to_pylist()
    order: list[str] = []
    index: dict[str, list[int]] = {}
    for i, u in enumerate(uris):
        if u not in index:
            index[u] = []
            order.append(u)
        index[u].append(i)
    for u in order:
        pending.setdefault(u, []).append(batch.take(index[u]))
        meta = json.loads(metas[index[u][0]])
        have = sum(t.num_rows for t in pending[u])
        if have >= max(1, meta["clips"]):
            rows = pa.concat_tables(pending.pop(u))
            if meta["clips"]:
                rows = rows.drop_columns([schema.VIDEO_META])
            yield u, rows, meta


def _record(uri: str, meta: dict) -> VideoRecord:
    return VideoRecord(
        source_uri=uri,
        video_id=meta.get("video_id"),
        clips=meta["clips"],
        duration_s=meta.get("duration_s", 0.0),
        clip_seconds=meta.get("clip_seconds", 0.0),
        scenes=meta.get("scenes", 0),
        short_scenes_dropped=meta.get("short_scenes_dropped", 0),
        stage_seconds=meta.get("stage_seconds", {}),
        quarantine=meta.get("quarantine"),
    )
