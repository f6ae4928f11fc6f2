"""The `curate` command line (it sits above every other module: it only calls into them)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import curate

console = Console(stderr=True)


class _Verbs(TyperGroup):
    """Every verb: a mistake the user can fix (curate.errors.UserError) is one line and exit 2."""

    def invoke(self, ctx):
        from curate.errors import UserError
        from curate.storage import display

        try:
            return super().invoke(ctx)
        except UserError as e:
            _fail(display(str(e)))


app = typer.Typer(cls=_Verbs, add_completion=False, no_args_is_help=True, help="Curate video corpora into training data.")


PACKAGE = Path(curate.__file__).resolve().parent
REPO_CONFIGS = PACKAGE / "configs"  # the recipes ship inside the package
DATA_DIR = PACKAGE / "data"


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)  # one line, whatever the width
    raise typer.Exit(code)


def _log_to_console() -> None:
    """curate's warnings (e.g. a skipped optional stage) through rich, once each."""
    from rich.logging import RichHandler

    log = logging.getLogger("curate")
    if not any(isinstance(h, RichHandler) for h in log.handlers):
        log.addHandler(RichHandler(console=console, show_time=False, show_path=False, markup=False))
        log.setLevel(logging.WARNING)


# Lines that native code (Ray's C++ core worker) writes straight to fd 2 and that say nothing a
# curate user can act on: ray-project/ray#57733 logs this for every Ray Data actor pool.
_NATIVE_NOISE = re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* max_restarts > 0")


def _filter_native_stderr() -> None:
    """Route fd 2 through a filter that drops known native noise; Python's own stderr (rich, the
    logs) keeps the real terminal, so colours and progress bars are unchanged. Once per process."""
    try:
        ours = sys.stderr.fileno() == 2  # not when a test runner captured sys.stderr
    except (AttributeError, OSError, ValueError):
        ours = False
    if getattr(_filter_native_stderr, "done", False) or os.name != "posix" or not ours:
        return
    _filter_native_stderr.done = True
    real = os.dup(2)
    sys.stderr.flush()
    # rich's Console(stderr=True) looks sys.stderr up on every write, so it follows to the terminal
    sys.stderr = open(real, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace", closefd=False)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)

    def pump() -> None:
        with os.fdopen(r, "rb") as src:
            for line in src:
                if not _NATIVE_NOISE.search(line):
                    os.write(real, line)

    threading.Thread(target=pump, name="curate-stderr", daemon=True).start()


@contextmanager
def _progress(description: str, total: int | None = None, visible: bool = True):
    """A progress bar; yields the on_progress(done, total) callback that moves it."""
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False, disable=not console.is_terminal and os.environ.get("CI") == "true",
    ) as progress:  # fmt: skip
        task = progress.add_task(description, total=total, visible=visible)
        yield lambda done, total: progress.update(task, total=total, completed=done)


def _run(config: Optional[Path], inputs: list[str], out: str, sets: list[str], ray_address: Optional[str],
         force: bool = False) -> dict:
    from curate.config import load_config
    from curate.storage import check_out_path, display, resolve_inputs

    cfg = load_config(config, sets)
    if ray_address:
        cfg.ray.address = ray_address
    _log_to_console()
    try:
        check_out_path(out)
        uris = resolve_inputs(inputs, out)
    except OSError as e:
        _fail(display(str(e)))
    if not uris:
        _fail(f"no video inputs found in: {' '.join(inputs)}")
    from pipelines.run import run

    if cfg.executor == "ray":
        _filter_native_stderr()
    with _progress("curating inputs", len(uris)) as on_progress:
        try:
            result = run(cfg, uris, out, on_progress=on_progress, force=force)
        except OSError as e:  # a full disk, a vanished mount: what was committed stays whole
            _fail(f"{display(str(e))} -- everything committed before this is intact; run the same command again "
                  "to resume", code=1)
        except Exception as e:  # noqa: BLE001 - object storage answering with an error of its own
            if not type(e).__module__.startswith(("botocore", "boto3")):
                raise
            _fail(f"object storage: {str(e).splitlines()[0]} -- everything committed before this is intact; fix "
                  "the store (a missing bucket, credentials) and run the same command again", code=1)
    c = result.manifest["counts"]
    console.print(
        f"[green]done[/green]: {result.processed} inputs processed, {result.skipped} already done; "
        f"{c['clips']} clips, {c['quarantined']} quarantined -> {escape(display(result.out))}"
    )
    if c.get("clips_with_errors"):
        console.print(f"[yellow]{c['clips_with_errors']} clips kept with a stage's scores missing: their `errors` "
                      "column says which stage and why (a filter on a missing score refuses them unless told: "
                      "select's `nulls`)[/yellow]", soft_wrap=True)
    if c.get("to_retry"):
        console.print(f"[yellow]{c['to_retry']} inputs failed for a reason that may pass (a missing file, a full "
                      "disk, a storage outage): run the same command again to retry them[/yellow]", soft_wrap=True)
    return result.manifest


@app.command("run")
def run_cmd(
    config: Path = typer.Argument(..., help="pipeline config: a YAML path or a recipe name (demo, svd)"),
    inputs: list[str] = typer.Option(..., "-i", "--input", help="file, directory, glob, manifest (.txt/.parquet) or URI; repeatable"),
    out: str = typer.Option(..., "-o", "--out", help="output directory or URI (s3://...)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="attach to a running Ray cluster"),
    sets: list[str] = typer.Option([], "--set", help="override a config key: --set clips.max_s=8"),
    force: bool = typer.Option(False, "--force", help="write into a non-empty directory that is not a curate output"),
) -> None:
    """Curate INPUTs into clips, shards and a manifest in OUT (resumes an interrupted OUT)."""
    _run(config, inputs, out, sets, ray_address, force)


@app.command("rescore")
def rescore_cmd(
    out: str = typer.Argument(..., help="a curate OUT (directory or URI) that a run has finished once"),
    sets: list[str] = typer.Option([], "--set", help="scorer settings: --set scorers.ocr.backend=easyocr"),
    named: list[str] = typer.Option([], "--scorer", help="recompute this scorer even if its settings did not change; repeatable"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="attach to a running Ray cluster"),
) -> None:
    """Add or recompute scorer columns on OUT from its clip files (no new cuts or clips);
    resumable, exactly-once. Scorers that are new, changed, or named with --scorer run; one
    switched off (--set scorers.X.enabled=false) gets null columns."""
    from curate.storage import display
    from pipelines.rescore import rescore

    if ray_address:
        sets = [*sets, f"ray.address={ray_address}"]
    _log_to_console()
    _filter_native_stderr()
    with _progress("rescoring parts") as on_progress:
        try:
            result = rescore(out, sets, named, on_progress=on_progress)
        except OSError as e:
            _fail(f"{display(str(e))} -- every part rescored before this is committed; run the same command again "
                  "to resume", code=1)
    if not result.scorers and not result.cleared:
        console.print("nothing to rescore: no scorer is new, changed or named (--scorer NAME recomputes one)")
        return
    if result.manifest.get("counts", {}).get("to_retry"):
        console.print(f"[yellow]{result.manifest['counts']['to_retry']} inputs lost rows to damage and are to be redone: "
                      "`curate run` with OUT's config and inputs redoes them[/yellow]", soft_wrap=True)
    what = ", ".join(result.scorers) or "none"
    console.print(f"[green]done[/green]: recomputed {what}"
                  + (f"; cleared {', '.join(result.cleared)}" if result.cleared else "")
                  + f" on {result.rows} clips in {result.parts_done} parts"
                  + (f" ({result.parts_skipped} parts already rescored)" if result.parts_skipped else "")
                  + f" -> {escape(display(result.out))}")


@app.command("dedup")
def dedup_cmd(
    outs: list[str] = typer.Argument(..., help="one or several curate OUTs"),
    dest: Path = typer.Option(..., "-o", "--out", help="directory for dedup.parquet and dedup.json"),
    sets: list[str] = typer.Option([], "--set", help="a grouping setting: --set max_frames=8 (see datatools/dedup.py)"),
    on_ray: bool = typer.Option(False, "--ray", help="one Ray task per LSH table"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="attach to a running Ray cluster (implies --ray)"),
) -> None:
    """Group near-duplicate clips over OUTs by their perceptual hashes (and clip embeddings):
    DIR/dedup.parquet gives each clip its group's representative; `curate select --dedup DIR`
    keeps one per group."""
    from curate.config import load_model
    from datatools.dedup import DedupParams, run_dedup

    try:
        params = load_model(DedupParams, None, sets)
        if on_ray or ray_address:
            _filter_native_stderr()
        summary = run_dedup(outs, dest, params, "ray" if (on_ray or ray_address) else "local", ray_address)
    except (OSError, ValueError) as e:
        _fail(str(e))
    console.print(f"[green]done[/green]: {summary['clips']} clips ({summary['with_hashes']} hashed, "
                  f"{summary['with_embeddings']} with embeddings): {summary['groups_with_duplicates']} groups hold "
                  f"{summary['clips_in_groups']} clips, {summary['removable']} removable -> {escape(str(dest))}")
    if summary["with_hashes"] < summary["clips"]:
        console.print(f"[yellow]{summary['clips'] - summary['with_hashes']} clips have no perceptual hash (a run "
                      "without the phash scorer): `curate rescore OUT --scorer phash` adds it[/yellow]")


@app.command("verify")
def verify_cmd(
    out: str = typer.Argument(..., help="a curate OUT (directory or URI)"),
    deep: bool = typer.Option(False, "--deep", help="object storage: download each clip to check frames and size"),
) -> None:
    """Check that OUT is whole: clip files with the recorded frames and size, shards, no duplicates,
    no orphans, manifest counts. Exits 1 naming every problem."""
    from curate.storage import display
    from curate.verify import verify

    rep = verify(out, deep)
    for n in rep.notes:
        console.print(f"[yellow]note:[/yellow] {escape(display(n))}", soft_wrap=True)
    for p in rep.problems[:200]:
        console.print(f"[red]problem:[/red] {escape(display(p))}", soft_wrap=True)  # one greppable line each
    if len(rep.problems) > 200:
        console.print(f"... and {len(rep.problems) - 200} more problems")
    if not rep.ok:
        raise typer.Exit(1)
    console.print(f"[green]ok[/green]: {rep.checked_rows} rows, {rep.checked_files} clip files checked in {escape(out)}")


@app.command()
def demo(
    out: str = typer.Option("demo_out", "-o", "--out", help="where to write the demo corpus and results"),
    sets: list[str] = typer.Option([], "--set", help="override a config key"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address"),
) -> None:
    """Write a small demo corpus (generated + shipped real clips) and run the demo recipe on it."""
    from curate.synth import demo_corpus

    config = REPO_CONFIGS / "demo.yaml"
    corpus = Path(out) / "inputs"
    console.print(f"writing demo corpus to {corpus}")
    demo_corpus(str(corpus))
    for clip in sorted(DATA_DIR.glob("*.mp4")):
        shutil.copy2(clip, corpus / clip.name)
    _run(config, [str(corpus)], str(Path(out) / "curated"), sets, ray_address)
    console.print(f"inspect with: curate inspect {Path(out) / 'curated'}")


@app.command()
def inspect(out: str = typer.Argument(..., help="an OUT directory or URI"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Summarise an OUT: counts, hours in/out, per-stage timings, quarantine reasons."""
    from curate.dataset import open_out

    manifest = open_out(out)[1]
    if as_json:
        typer.echo(json.dumps(manifest, indent=2))
        return
    c = manifest["counts"]
    out_console = Console()
    t = Table(title=f"curate output {out}", show_header=False)
    t.add_row("config", f"{manifest['config'].get('name')} (hash {manifest['config_hash']})")
    t.add_row("inputs", str(c["inputs"]))
    t.add_row("videos ok", str(c["videos_ok"]))
    t.add_row("quarantined", str(c["quarantined"]))
    t.add_row("clips", str(c["clips"]))
    t.add_row("clips with errors", str(c.get("clips_with_errors", 0)))
    t.add_row("scenes / short dropped", f"{c['scenes']} / {c['short_scenes_dropped']}")
    t.add_row("hours in / out", f"{c['hours_in']:.4f} / {c['hours_out']:.4f}")
    t.add_row("shards", str(c["shards"]))
    runs = manifest.get("runs", [])
    t.add_row("runs", ", ".join(_run_line(r) for r in runs))
    out_console.print(t)
    st = Table(title="stage seconds (summed over workers)")
    st.add_column("stage")
    st.add_column("seconds", justify="right")
    for k, v in manifest.get("stage_seconds", {}).items():
        st.add_row(k, f"{v:.2f}")
    out_console.print(st)
    if c["quarantine_reasons"]:
        qt = Table(title="quarantine reasons")
        qt.add_column("reason")
        qt.add_column("inputs", justify="right")
        for k, v in c["quarantine_reasons"].items():
            qt.add_row(k, str(v))
        out_console.print(qt)


def _run_line(r: dict) -> str:
    """One entry of manifest.json's runs: a run, or a rescore (which has no inputs)."""
    if not isinstance(r, dict):
        return "?"
    if "rescore" in r:
        what = ", ".join(r.get("rescore") or []) or "nothing"
        return f"rescore of {what}" + (f" (cleared {', '.join(r['cleared'])})" if r.get("cleared") else "")
    wall = r.get("wall_s")
    return f"{r.get('processed', '?')} new" + (f" in {wall:.1f}s" if isinstance(wall, (int, float)) else "")


@app.command("select")
def select_cmd(
    rules: Optional[Path] = typer.Argument(None, help="RULES.yaml: filters and caption mix"),
    source: str = typer.Option(..., "-s", "--source", help="a curate OUT (or a shards parquet)"),
    out: Path = typer.Option(..., "-o", "--out", help="subset directory to write"),
    where: list[str] = typer.Option([], "--where", help='absolute filter, e.g. "flow_mean >= 0.5"'),
    drop_bottom: list[str] = typer.Option([], "--drop-bottom", help="COL=PCT: drop the PCT% lowest"),
    drop_top: list[str] = typer.Option([], "--drop-top", help="COL=PCT: drop the PCT% highest"),
    nulls: Optional[str] = typer.Option(None, "--nulls", help="for the flag filters: refuse (default) | drop | keep"),
    dedup: Optional[str] = typer.Option(None, "--dedup", help="a `curate dedup` output: keep one clip per near-duplicate group"),
    keep: str = typer.Option("longest", "--keep", help="with --dedup: longest, or a score column (its highest)"),
) -> None:
    """Apply thresholds to stored scores: write SUBSET/subset.parquet and SUBSET/funnel.json."""
    from datatools.select import DedupRule, load_rules, rules_from_flags, run_select

    if nulls not in (None, "refuse", "drop", "keep"):
        _fail(f"--nulls {nulls!r}: choose refuse, drop or keep")
    try:
        r = rules_from_flags(load_rules(rules), where, drop_bottom, drop_top, nulls)
        if dedup:
            r = r.model_copy(update={"dedup": DedupRule(groups=dedup, keep=keep)})
        funnel = run_select(source, out, r)
    except FileNotFoundError as e:
        _fail(str(e))
    t = Table(title=f"funnel -> {out}")
    for col in ("filter", "threshold", "removes alone", "removes here", "kept clips", "kept hours"):
        t.add_column(col)
    t.add_row("all clips", "", "", "", str(funnel["input"]["clips"]), f"{funnel['input']['hours']:.4f}")
    for s in funnel["filters"]:
        thr = s.get("threshold")
        t.add_row(s["filter"], f"{thr:.4g}" if isinstance(thr, (int, float)) else str(thr), str(s["alone_removed_clips"]),
                  str(s["removed_clips"]), str(s["kept_clips"]), f"{s['kept_hours']:.4f}")
    Console().print(t)


@app.command("export")
def export_cmd(
    subset: Path = typer.Argument(..., help="a subset directory from `curate select`"),
    out: Path = typer.Option(..., "-o", "--out"),
    fmt: str = typer.Option("parquet", "--format", help="parquet | webdataset"),
    max_rows: int = typer.Option(1000, "--max-rows"),
    max_bytes: Optional[int] = typer.Option(None, "--max-bytes", help="shard size limit in bytes"),
    embed: bool = typer.Option(True, "--embed/--no-embed", help="store clip bytes (default) or only their URIs"),
    materialize: bool = typer.Option(False, "--materialize", help="encode the clips of a deferred run (clips.mode "
                                     "deferred) that the subset keeps, into OUT/clips/"),
    short_side: Optional[int] = typer.Option(None, "--short-side", help="--materialize at this short side (default: the run's)"),
    max_side: Optional[int] = typer.Option(None, "--max-side", help="... or with at most this long side"),
    max_fps: Optional[float] = typer.Option(None, "--max-fps", help="... and at most this frame rate"),
    on_ray: bool = typer.Option(False, "--ray", help="--materialize as Ray tasks (the cluster must see OUT)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="attach to a running Ray cluster (implies --ray)"),
    caption_template: Optional[str] = typer.Option(None, "--caption-template", help="the caption with conditions, e.g. "
                                                   "'{caption}. camera: {camera_motion}; motion: {object_motion:.2f}'"),
) -> None:
    """Write training shards (clip bytes or paths, caption, scores) with an index.json."""
    from curate.config import ClipsParams
    from datatools.export import Materialize, run_clips, export

    if fmt not in ("parquet", "webdataset"):
        _fail(f"--format {fmt!r}: choose parquet or webdataset")
    if max_rows < 1 or (max_bytes is not None and max_bytes < 1):
        _fail("--max-rows and --max-bytes must be at least 1")
    resize = any(v is not None for v in (short_side, max_side, max_fps))
    if resize and not materialize:
        _fail("--short-side, --max-side and --max-fps set how --materialize encodes: add --materialize")
    m = None
    if materialize:
        run_clips = run_clips(subset) or ClipsParams(mode="exact")
        try:
            clips = run_clips.model_copy(update={"short_side": short_side, "max_side": max_side, "max_fps": max_fps}) if resize else run_clips
            clips = ClipsParams.model_validate(clips.model_dump())
        except ValueError as e:
            _fail(f"--short-side/--max-side/--max-fps: {str(e).splitlines()[-1].strip()}")
        if on_ray or ray_address:
            _filter_native_stderr()
        m = Materialize(clips, resize, "ray" if (on_ray or ray_address) else "local", ray_address)
    try:
        with _progress("materializing clips", visible=materialize) as on_progress:
            if m is not None:
                m.on_progress = on_progress
            index = export(subset, out, fmt, max_rows, max_bytes, embed, m, caption_template)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    for r in index.get("refused", [])[:50]:
        console.print(f"[yellow]refused[/yellow] clip {r['clip_id']}: {escape(r['reason'])}", soft_wrap=True)
    if len(index.get("refused", [])) > 50:
        console.print(f"... and {len(index['refused']) - 50} more refused (index.json lists them)")
    what = f" ({index['materialized']} materialized)" if "materialized" in index else ""
    console.print(f"[green]exported[/green] {index['rows']} clips{what} in {len(index['shards'])} {fmt} shards -> {out}")


@app.command("report")
def report_cmd(
    out: str = typer.Argument(..., help="a curate OUT"),
    dest: Optional[str] = typer.Option(None, "-o", "--output", help="HTML file (default OUT/report.html)"),
    rules: Optional[str] = typer.Option(None, "--rules", help="RULES.yaml whose thresholds to mark"),
    dedup: Optional[str] = typer.Option(None, "--dedup", help="a `curate dedup` output: show its largest groups"),
) -> None:
    """One self-contained HTML report: score histograms, funnel, decile thumbnails, timings, quarantine."""
    from curate.dataset import open_out
    from datatools.report import write_report

    open_out(out)
    if dest is not None and Path(dest).is_dir():
        _fail(f"-o {dest}: is a directory; name the HTML file to write")
    try:
        path = write_report(out, dest, rules, dedup)
    except ValueError as e:
        _fail(str(e))
    console.print(f"[green]report[/green] -> {path}")


@app.command("browse")
def browse_cmd(
    out: str = typer.Argument(..., help="a curate OUT (or a subset, or a shards parquet)"),
    rules: Optional[str] = typer.Option(None, "--rules", help="RULES.yaml (or recipe) whose filters the controls start from"),
    dedup: Optional[str] = typer.Option(None, "--dedup", help="a `curate dedup` output: one clip per group, kept clip shown"),
    save: Path = typer.Option(Path("browse_rules.yaml"), "--save", help="where the page's \"save rules\" writes"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (default: this machine only)"),
    port: int = typer.Option(8766, "--port", help="port (0: any free one)"),
) -> None:
    """Pick thresholds by looking: a live page with a control per score, the funnel `select` would
    give, histograms, moving previews sorted by any column and the clips at each threshold's margin;
    "save rules" writes a RULES file for `curate select`."""
    from curate.storage import refuse_inside_output
    from datatools.browse import Browser, serve
    from datatools.select import load_rules

    if save.is_dir():
        _fail(f"--save {save}: is a directory; name the RULES file to write")
    refuse_inside_output(str(save), "--save")
    browser = Browser(out, load_rules(rules), save, dedup)
    _listen(lambda: serve(browser, host, port), host, port)


@app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_cmd(
    config: Path = typer.Argument(..., help="trainer config: a YAML path or a recipe name (train/tiny)"),
    data: str = typer.Option(..., "--data", help="a curate OUT, a select subset, or an export directory"),
    out: Path = typer.Option(..., "-o", "--out", help="run directory (resumes when it holds ckpt.pt)"),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="warm start from a checkpoint"),
    sets: list[str] = typer.Option([], "--set", help="override a trainer config key"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="stop early (resume later)"),
) -> None:
    """Train a small ModelScope-style text-to-video model: metrics.jsonl, checkpoints, samples."""
    from t2v.train import load_train_config, train

    try:
        cfg = load_train_config(config, sets)
        result = train(cfg, data, out, init_from, max_steps)
    except (ValueError, FileNotFoundError) as e:  # bad data or settings: one line, no traceback
        _fail(str(e))
    ev = {k: round(v["loss"], 5) for k, v in result.get("eval", {}).items() if v.get("loss") is not None}
    console.print(f"[green]trained[/green] to step {result['step']} -> {out}; eval loss {ev}")


@app.command("train-vae")
def train_vae_cmd(
    config: Path = typer.Argument(..., help="trainer config (its data section sets frames/size)"),
    data: str = typer.Option(..., "--data"),
    out: Path = typer.Option(..., "-o", "--out", help="directory for the AutoencoderKL (save_pretrained)"),
    steps: int = typer.Option(500, "--steps"),
    sets: list[str] = typer.Option([], "--set"),
) -> None:
    """Train a small AutoencoderKL on the clips, for `model.mode: latent` (`--set model.vae=OUT`)."""
    from t2v.train import load_train_config, train_vae

    try:
        cfg = load_train_config(config, sets)
        r = train_vae(cfg, data, out, steps)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    console.print(f"[green]vae[/green] -> {out}: loss {r['first_loss']:.4f} -> {r['last_loss']:.4f}")


@app.command("compare")
def compare_cmd(
    config: Path = typer.Argument(..., help="trainer config shared by every arm"),
    arms: list[str] = typer.Option(..., "--arm", help="NAME=DATA, repeatable"),
    out: Path = typer.Option(..., "-o", "--out"),
    seeds: list[int] = typer.Option([0, 1], "--seed", help="seeds per arm, repeatable"),
    evals: list[str] = typer.Option([], "--eval", help="NAME=DATA: an extra eval set"),
    votes: Optional[str] = typer.Option(None, "--votes", help="JSON lines of human votes"),
    sets: list[str] = typer.Option([], "--set"),
) -> None:
    """Train every arm identically, evaluate all on shared sets, rank with bootstrap CIs and Elo."""
    from t2v.compare import compare
    from t2v.train import load_train_config

    def pairs(items: list[str], flag: str) -> dict[str, str]:
        out_: dict[str, str] = {}
        for it in items:
            if "=" not in it:
                _fail(f"{flag} {it!r}: expected NAME=PATH")
            k, v = it.split("=", 1)
            # names become directories under -o: one plain path component, never `..`
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", k) or ".." in k:
                _fail(f"{flag} {it!r}: NAME must be letters, digits, '.', '_' or '-' (at most 64, no '..')")
            if k in out_:
                _fail(f"{flag} {k!r} is given twice: every {flag} needs its own NAME")
            if not v or not Path(v).exists():
                _fail(f"{flag} {it!r}: {v or '(empty)'} does not exist")
            out_[k] = v
        return out_

    arm_map, eval_map = pairs(arms, "--arm"), pairs(evals, "--eval")
    if len(arm_map) < 2:
        _fail(f"--arm: a comparison needs at least two arms, got {len(arm_map)}")
    if len(set(seeds)) != len(seeds):
        _fail("--seed: each seed once")
    if votes is not None and not Path(votes).is_file():
        _fail(f"--votes {votes}: no such file")
    if out.exists() and not out.is_dir():
        _fail(f"-o {out}: exists and is not a directory")
    try:
        cfg = load_train_config(config, sets)
        board = compare(cfg, arm_map, out, seeds, eval_map, votes)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    Console().print((out / "leaderboard.md").read_text())
    console.print(f"[green]ranking[/green]: {' > '.join(board['ranking'])} -> {out / 'leaderboard.json'}")


@app.command("vote")
def vote_cmd(
    cmp: Path = typer.Argument(..., help="a `curate compare` output"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (default: this machine only)"),
    port: int = typer.Option(8765, "--port", help="port (0: any free one)"),
) -> None:
    """Serve a page where people vote which arm's sample video is better (arms hidden, sides
    random); votes go to CMP/votes.jsonl. `curate rerank CMP` folds them into the leaderboard."""
    from t2v.vote import index, serve

    if not (cmp / "arms").is_dir():
        _fail(f"{cmp}: not a `curate compare` output (no arms/)")
    files, pairs = index(cmp)
    if not pairs:
        _fail(f"{cmp}: no sample videos of two arms with the same prompt and seeds: nothing to vote on")
    console.print(f"{len(pairs)} pairs over {len(files)} sample videos")
    _listen(lambda: serve(cmp, host, port), host, port)


def _listen(serve, host: str, port: int) -> None:
    """Run a page's server until Ctrl-C; a bad port or an address in use is one line."""
    if not 0 <= port <= 65535:
        _fail(f"--port {port}: not a port number")
    try:
        serve()
    except OSError as e:
        _fail(f"cannot listen on {host}:{port}: {e.strerror or e}")
    except KeyboardInterrupt:
        pass


@app.command("rerank")
def rerank_cmd(
    cmp: Path = typer.Argument(..., help="a finished `curate compare` output"),
    votes: Optional[str] = typer.Option(None, "--votes", help="human votes (default: CMP/votes.jsonl from `curate vote`)"),
) -> None:
    """Rank the arms again with the human votes as a judge beside the automatic ones; nothing retrains."""
    from t2v.compare import rerank

    if votes is not None and not Path(votes).is_file():
        _fail(f"--votes {votes}: no such file")
    try:
        board = rerank(cmp, votes)
    except (FileNotFoundError, ValueError, KeyError) as e:
        _fail(str(e))
    Console().print((cmp / "leaderboard.md").read_text())
    console.print(f"[green]ranking[/green]: {' > '.join(board['ranking'])} -> {cmp / 'leaderboard.json'}")


models_app = typer.Typer(no_args_is_help=True, help="Model weights a config needs.")
app.add_typer(models_app, name="models")


def _model_statuses(config: Optional[Path], sets: list[str]):
    from curate.config import load_config
    from curate.models import check
    from curate.registry import scorers
    from pipelines.graph import model_stages

    cfg = load_config(config, sets)
    if config is None:  # no config: everything the model stages would load with their defaults
        for name, cls in scorers().items():
            if cls.model_refs(getattr(cfg.scorers, name)):
                getattr(cfg.scorers, name).enabled = True
    return [(stage, optional, check(ref)) for stage, optional, refs in model_stages(cfg) for ref in refs]


@models_app.command("list")
def models_list(config: Optional[Path] = typer.Argument(None, help="pipeline config (default: every model stage)"),
                sets: list[str] = typer.Option([], "--set")) -> None:
    """Every model the config needs and whether it is present on this machine."""
    t = Table(title="models")
    for col in ("stage", "model", "required", "present", "where / how"):
        t.add_column(col)
    for stage, optional, st in _model_statuses(config, sets):
        t.add_row(stage, f"{st.ref.role}: {st.ref.describe()}", "optional" if optional else "required",
                  "[green]yes[/green]" if st.present else "[red]no[/red]", escape(st.where if st.present else f"{st.where}. {st.how}"))
    Console(width=200).print(t)


@models_app.command("check")
def models_check(config: Path = typer.Argument(..., help="pipeline config"), sets: list[str] = typer.Option([], "--set")) -> None:
    """Exit non-zero when a model the config needs is missing (optional ones included), naming it."""
    missing = [(s, o, st) for s, o, st in _model_statuses(config, sets) if not st.present]
    for stage, optional, st in missing:
        console.print(f"[red]missing[/red] {stage} ({'optional' if optional else 'required'}): "
                      + escape(f"{st.ref.role} {st.ref.describe()}: {st.where}. {st.how}"))
    if missing:
        raise typer.Exit(1)
    console.print("[green]all models present[/green]")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
