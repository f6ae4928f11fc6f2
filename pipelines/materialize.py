"""`curate export --materialize`: the clip files of a subset's deferred rows, one task per source
(curate.deferred.materialize_source), in threads here or as Ray tasks on a cluster (whose nodes
must all see the export directory: a shared mount)."""

from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable, Iterator

from curate import schema
from curate.clips import Geometry
from curate.config import ClipsParams
from curate.deferred import materialize_source
from pipelines.graph import init_ray

Result = dict[str, tuple[str, Geometry] | Exception]


def materialize(rows: list[dict], clips_dir: str, params: ClipsParams, resize: bool = False, executor: str = "local",
                ray_address: str | None = None, on_progress: Callable[[int, int], None] | None = None) -> Result:
    """clip_id -> (its file, how it is stored) or why it has none, for every row."""
    by_source: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        by_source[(r[schema.SOURCE_URI], r[schema.VIDEO_ID])].append(r)
    out: Result = {}
    if on_progress:
        on_progress(0, len(rows))
    for got in _per_source(list(by_source.values()), clips_dir, params, resize, executor, ray_address):
        out |= got
        if on_progress:
            on_progress(len(out), len(rows))
    return out


def _per_source(groups: list[list[dict]], clips_dir: str, params: ClipsParams, resize: bool, executor: str,
                ray_address: str | None) -> Iterator[Result]:
    """Each source's results as its task ends, a Ray task each or a thread per CPU here (each task
    is an ffmpeg process that decodes and encodes)."""
    if executor == "ray":
        import ray

        init_ray(ray_address)
        task = ray.remote(num_cpus=1, max_retries=3)(materialize_source)  # a retried task skips the files it made
        pending = [task.remote(g, clips_dir, params, resize) for g in groups]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
        return
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(materialize_source, g, clips_dir, params, resize) for g in groups]
        yield from (f.result() for f in as_completed(futures))
