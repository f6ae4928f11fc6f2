"""`curate run`: inputs -> the curation graph (pipelines.graph) -> OUT, one transaction.

The driver consumes the stream and commits whole inputs (curate.shards), which is what makes a
killed run resumable without duplicates.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from curate import __version__, schema
from curate.config import PipelineConfig, config_differences
from curate.lease import lease_for
from curate.models import preflight
from curate.per_video import VideoStage
from curate.record import VideoRecord
from curate.shards import MANIFEST_FILE, MARKER_FILE, Committer, ConfigMismatch, OutNotOurs, ownership_problem
from curate.storage import OutputStore, check_out_path, duplicates_by_content, largest_first
from pipelines.graph import StageSpec, enabled_scorers, execute, model_stages, regroup, scorer_specs

@dataclass
class RunResult:
    out: str
    manifest: dict
    skipped: int  # inputs already done by an earlier run
    processed: int  # inputs finished by this run


def build_stages(cfg: PipelineConfig, out: str, skip: set[str] = frozenset()) -> list[StageSpec]:
    """The per-video stage, then the sample step and the scorers: the extraction decode hands the
    scorers their frames where it decodes (mode exact); the sample step decodes only the clips it
    did not sample (copy, smart)."""
    scorers = scorer_specs(cfg, skip=skip) if cfg.clips.extract else []
    plans = tuple(scorers[0].args[1]) if scorers else ()
    video = StageSpec(VideoStage, (cfg.probe, cfg.cuts, cfg.clips, out, cfg.input_timeout_s, cfg.watchdog, plans,
                                   cfg.segment_s))  # fmt: skip
    return [video, *scorers]


def run(
    cfg: PipelineConfig,
    inputs: list[str],
    out: str,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    force: bool = False,
) -> RunResult:
    """Curate `inputs` (already resolved URIs) into OUT, resuming whatever OUT already holds."""
    t_start = time.time()
    check_out_path(out)
    store = OutputStore(out, create=False)
    problem = ownership_problem(store)
    if problem and not (force and problem[1]):
        raise OutNotOurs(problem[0] + ("" if not problem[1] else "; pass --force to write into it anyway "
                                       "(curate then deletes only files it named itself)"))  # fmt: skip
    store = OutputStore(out)
    lease = lease_for(store)
    lease.acquire()  # before anything in OUT is touched; a second run fails here, naming this one
    try:
        if not store.exists(MARKER_FILE):
            store.write_bytes(json.dumps({"curate_version": __version__, "created": t_start}).encode(), MARKER_FILE)
        return _run_locked(cfg, inputs, store, lease, t_start, on_progress)
    finally:
        lease.release()


def what_differs(store: OutputStore, cfg: PipelineConfig) -> str:
    """The keys that part this config from the one OUT's manifest.json records, for a refused
    resume (a hash alone says only that something differs)."""
    try:
        old = json.loads(store.read_bytes(MANIFEST_FILE))["config"]
    except Exception:  # noqa: BLE001 - no manifest yet (a first run killed early), or not readable
        return ""
    diffs = config_differences(old, cfg.model_dump(mode="json"))
    return f". What differs from OUT's manifest.json: {'; '.join(diffs)}" if diffs else ""


def _run_locked(cfg: PipelineConfig, inputs: list[str], store: OutputStore, lease, t_start: float,
                on_progress: Callable[[int, int], None] | None) -> RunResult:
    committer = Committer(store, cfg.hash(), cfg.shards.max_rows, cfg.shards.compression,
                          every_s=cfg.shards.commit_every_s, every_videos=cfg.shards.commit_every_videos,
                          lease=lease)  # fmt: skip
    try:
        done = committer.recover(check_clips=cfg.clips.extract and cfg.clips.mode != "deferred")  # deferred: spans, no files
    except ConfigMismatch as e:
        raise ConfigMismatch(f"{e}{what_differs(store, cfg)}") from None
    todo = [u for u in inputs if u not in done]
    skipped = len(inputs) - len(todo)
    # byte-identical copies are known from a stat and a fingerprint: quarantined before any work
    dups = duplicates_by_content(todo, committer.done_video_ids, committer.done_sizes)
    for uri, (vid, first) in dups.items():
        committer.add_video(VideoRecord(source_uri=uri, video_id=vid, clips=0, quarantine={
            "reason": schema.Q_DUPLICATE, "detail": f"same content as {first}"}), None)
    todo = largest_first([u for u in todo if u not in dups])
    # Missing weights: fail now (before any work), or skip optional stages loudly.
    skip_stages, skip_reasons = preflight(model_stages(cfg))
    if cfg.cuts.detector != "classical":
        from curate.transnet import check_available

        check_available()
    stages = build_stages(cfg, store.uri, skip_stages)
    finished = len(dups)
    if on_progress:
        on_progress(finished, finished + len(todo))
    if todo:
        def commit(record: VideoRecord, rows: pa.Table | None) -> None:
            nonlocal finished
            committer.add_video(record, rows if record.clips else None)
            finished += 1
            if on_progress:
                on_progress(finished, len(dups) + len(todo))

        units = pa.table({schema.SOURCE_URI: pa.array(todo, pa.string())})  # a unit per row
        long: dict[str, dict] = {}  # inputs longer than segment_s: worked as segments below
        for uri, rows in regroup(execute(cfg, units, stages), schema.UNIT, _rows_of_input):
            record, rows, segment = _finished_input(rows)
            if segment is not None:
                long[uri] = segment
                continue
            commit(record, rows)
        if long:
            _run_segments(cfg, long, stages, commit)
        committer.flush()
    committer.flush()  # the duplicates found before any work, when nothing else was to do
    committer.compact()
    committer.sweep_orphans()  # clips of inputs that were quarantined, failed or killed before a commit
    committer.write_quarantine()
    run_info = {
        "started": t_start, "wall_s": round(time.time() - t_start, 3), "inputs_given": len(inputs),
        "skipped_done": skipped, "processed": finished, "executor": cfg.executor,
    }  # fmt: skip
    run_info["skipped_stages"] = skip_reasons
    analysis = {cls.name: params.model_dump(mode="json") for cls, params in enabled_scorers(cfg, skip_stages)}
    manifest = committer.write_manifest(cfg.model_dump(mode="json"), run_info,
                                        {"scorers": analysis, "skipped_stages": skip_reasons})  # fmt: skip
    return RunResult(out=store.uri, manifest=manifest, skipped=skipped, processed=finished)


def _rows_of_input(uri: str, first: pa.Table) -> int:
    """How many rows make a unit of work (an input, a segment) whole: its clips, or its one marker row."""
    return max(1, VideoRecord.from_json(first.column(schema.VIDEO_META)[0].as_py()).clips)


def _finished_input(rows: pa.Table) -> tuple[VideoRecord, pa.Table, dict | None]:
    """A unit's summary (with the seconds each stage charged its rows), its shard rows, and what a
    segment's task found (None for a whole input)."""
    record = VideoRecord.from_json(rows.column(schema.VIDEO_META)[0].as_py())
    segment = rows.column(schema.SEGMENT)[0].as_py() if schema.SEGMENT in rows.column_names else None
    timings = [c for c in rows.column_names if c.startswith(schema.SECONDS + ".")]
    for c in timings:
        stage = c.split(".", 1)[1]
        record.stage_seconds[stage] = record.stage_seconds.get(stage, 0.0) + (pc.sum(rows.column(c)).as_py() or 0.0)
    internal = [c for c in (schema.VIDEO_META, schema.UNIT, schema.SEGMENT) if c in rows.column_names]
    return record, rows.drop_columns([*timings, *internal]), json.loads(segment) if segment else None


def _run_segments(cfg: PipelineConfig, long: dict[str, dict], stages: list[StageSpec],
                  commit: Callable[[VideoRecord, pa.Table | None], None]) -> None:
    """The inputs longer than segment_s, in two rounds of one task per segment (curate.segments):
    their cuts (the per-video stage alone), then their clips through every stage; each input is
    committed once, when all its segments are in, as one pass would have committed it."""
    def units(round_: int, extra: dict[str, dict]) -> pa.Table:  # a segment per row
        each = [(uri, json.dumps({**seg, **extra.get(uri, {}), "round": round_, "k": k}))
                for uri, seg in long.items() for k in range(len(seg["ranges"]))]  # fmt: skip
        return pa.table({schema.SOURCE_URI: [u for u, _ in each], schema.SEGMENT: [t for _, t in each]})

    found: dict[str, dict[int, dict]] = {uri: {} for uri in long}  # what each segment's cuts task found
    failed: dict[str, VideoRecord] = {}
    for unit, rows in regroup(execute(cfg, units(1, {}), stages[:1]), schema.UNIT, _rows_of_input):
        record, _, result = _finished_input(rows)
        uri = record.source_uri
        if result is None and not record.quarantine:  # (a segment's cuts always come back with it)
            record.quarantine = {"reason": schema.Q_ERROR, "detail": f"{unit}: no cuts came back"}
        if record.quarantine:
            failed.setdefault(uri, record)
        else:
            found[uri][result["k"]] = result
    cuts: dict[str, dict] = {}
    for uri, seg in long.items():
        if uri in failed:
            continue
        parts = [found[uri][k] for k in range(len(seg["ranges"]))]
        n_frames = parts[-1]["n_frames"]
        if n_frames < cfg.probe.min_frames:
            failed[uri] = VideoRecord(uri, seg["video_id"], 0, quarantine={"reason": schema.Q_UNDECODABLE,
                                                                           "detail": f"{n_frames} frames decode"})  # fmt: skip
            continue
        cuts[uri] = {"cuts": [c for p in parts for c in p["cuts"] if c < n_frames], "n_frames": n_frames,
                     "cut_s": sum(p["seconds"] for p in parts)}  # fmt: skip
    for uri, record in failed.items():
        commit(_whole(long[uri], [record]), None)
    todo = {uri: seg for uri, seg in long.items() if uri in cuts}
    if not todo:
        return
    long = todo
    done: dict[str, dict[int, tuple[VideoRecord, pa.Table]]] = {uri: {} for uri in long}
    for unit, rows in regroup(execute(cfg, units(2, cuts), stages), schema.UNIT, _rows_of_input):
        record, rows, _ = _finished_input(rows)
        uri = record.source_uri
        done[uri][int(unit.rsplit("#", 1)[1])] = (record, rows)  # (unit: "<input>#<segment>")
        if len(done[uri]) == len(long[uri]["ranges"]):
            parts = [done[uri][i] for i in range(len(done[uri]))]
            record = _whole(long[uri], [r for r, _ in parts], cuts[uri]["cut_s"])
            tables = [t for r, t in parts if r.clips and not r.quarantine]
            rows = pa.concat_tables(tables, promote_options="default").sort_by(schema.CLIP_INDEX) if tables else None
            commit(record, None if record.quarantine else rows)
            del done[uri]


def _whole(seg: dict, records: list[VideoRecord], cut_s: float = 0.0) -> VideoRecord:
    """One input's record from its segments' (a segment's quarantine is the input's: its other
    segments' clips are then not committed, as for an input that failed in one piece)."""
    from curate.segments import info_from_json

    info = info_from_json(seg["info"])
    bad = next((r for r in records if r.quarantine), None)
    seconds: dict[str, float] = {"probe": seg.get("probe_s", 0.0), "cuts": cut_s}
    for r in records:
        for k, v in r.stage_seconds.items():
            seconds[k] = seconds.get(k, 0.0) + v
    first = records[0]
    return VideoRecord(
        source_uri=first.source_uri, video_id=seg["video_id"], clips=0 if bad else sum(r.clips for r in records),
        duration_s=info.duration_s, size_bytes=info.size_bytes,
        clip_seconds=0.0 if bad else sum(r.clip_seconds for r in records), scenes=first.scenes,
        short_scenes_dropped=first.short_scenes_dropped, held_frames_dropped=first.held_frames_dropped,
        failed_clips=[c for r in records for c in r.failed_clips][:20], stage_seconds=seconds,
        quarantine=bad.quarantine if bad else None, segments=len(seg["ranges"]),
    )  # fmt: skip
