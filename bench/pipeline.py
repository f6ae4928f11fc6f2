"""The whole pass against its peers, in one run: a bare decode of the inputs, PySceneDetect's
`detect-adaptive split-video`, and `curate run` at source and at training resolution.

Every figure is wall time on the same inputs in the same session, as ratios to the bare decode
(ffmpeg `-f null`, its own threads, one input after the other) and to PySceneDetect (its CLI, one
input after the other, as users run it). curate runs as users run it too (`curate run`, the CLI,
Ray on all cores, Ray's start included), scorers off for the cuts + clips rows; the manifest's
stage_seconds (summed over workers) give the per-stage split. Model stages are absent here (no
weights), so the demo recipe's figure is flow, quality and OCR.
Run: python bench/pipeline.py [--videos DIR] [--only NAME ...]
     python bench/pipeline.py --deferred   (the eager pass + select + export against the deferred
        pass + select + export --materialize, at the demo recipe's 320 px and the svd recipe's 576 px)
     python bench/pipeline.py --memory     (peak memory of a deferred pass: a 2-, a 10- and a
        25-minute 1080p input)
     python bench/pipeline.py --only fixed (what a run costs whatever its inputs: Ray's start and stop)
     python bench/pipeline.py --long       (a 24.5-minute 1080p talk in one piece and as
        segments, alone and beside the other inputs: wall time, identical rows)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "videos"
sys.path.insert(0, str(ROOT))

NO_SCORERS = ["scorers.flow.enabled=false", "scorers.camera.enabled=false", "scorers.phash.enabled=false",
              "scorers.ocr.enabled=false", "scorers.quality.enabled=false",
              "scorers.caption_coca.enabled=false", "scorers.caption_vblip.enabled=false",
              "scorers.caption_llm.enabled=false", "scorers.clip.enabled=false"]  # fmt: skip
ONLY_PHASH = [s for s in NO_SCORERS if not s.startswith("scorers.phash.")]
# (name, demo recipe overrides); the recipe's cut levels and clip lengths throughout
RUNS = [
    ("cuts+clips copy, source size", ["clips.mode=copy", "clips.short_side=null", *NO_SCORERS]),
    ("cuts+clips smart, source size", ["clips.mode=smart", "clips.short_side=null", *NO_SCORERS]),
    ("cuts+clips exact, source size", ["clips.mode=exact", "clips.short_side=null", *NO_SCORERS]),
    ("cuts+clips exact, 320 px", ["clips.mode=exact", "clips.short_side=320", *NO_SCORERS]),
    ("demo recipe (flow, quality, OCR), 320 px", ["clips.mode=exact", "clips.short_side=320"]),
    ("demo recipe, 320 px, executor local (no Ray)", ["clips.mode=exact", "clips.short_side=320", "executor=local"]),
    ("demo recipe, smart at source size (before)", ["clips.mode=smart", "clips.short_side=null"]),
    ("cuts + spans + previews, deferred (one decode), 320 px", ["clips.mode=deferred", *NO_SCORERS]),
    ("cuts + spans + previews, deferred, executor local (no Ray)", ["clips.mode=deferred", "executor=local", *NO_SCORERS]),
    # one scorer (phash) wants frames: the one decode spills every frame at the stored size
    ("cuts + spans + sampling (phash), deferred, 320 px", ["clips.mode=deferred", *ONLY_PHASH]),
    ("cuts + spans + sampling (phash), deferred, executor local", ["clips.mode=deferred", "executor=local", *ONLY_PHASH]),
    ("demo recipe, deferred (one decode), 320 px", ["clips.mode=deferred"]),
    ("demo recipe, deferred, executor local (no Ray)", ["clips.mode=deferred", "executor=local"]),
]


def machine_cpu() -> tuple[float, float]:
    """(busy, stolen) CPU-seconds of the whole machine so far (/proc/stat; (0, 0) elsewhere).
    Busy leaves out idle, iowait and steal: on a shared VM the hypervisor's steal (measured here:
    0.3 to 32 s within one 45 s run) stretches wall time but not the CPU work a run does, so CPU
    seconds compare runs where wall times are noise, and they are what a node with more cores
    divides among its lanes."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    steal = ticks[7] if len(ticks) > 7 else 0
    return (sum(ticks[:8]) - ticks[3] - ticks[4] - steal) / hz, steal / hz


LAST_CPU = [0.0, 0.0]  # (busy, stolen) CPU-seconds of the last `timed` command


def timed(cmd: list[str], env: dict | None = None) -> float:
    busy, stolen = machine_cpu()
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: {(p.stdout + p.stderr)[-800:]}")
    wall = time.perf_counter() - t
    now = machine_cpu()
    LAST_CPU[:] = [now[0] - busy, now[1] - stolen]
    return wall


def bare_decode(videos: list[Path]) -> float:
    """Seconds of a bare decode of `videos`, one after the other; its CPU-seconds in LAST_CPU."""
    from curate.video import ffmpeg_exe

    total, cpu = 0.0, [0.0, 0.0]
    for v in videos:
        total += timed([ffmpeg_exe(), "-v", "error", "-i", str(v), "-map", "0:v:0", "-f", "null", "-"])
        cpu = [a + b for a, b in zip(cpu, LAST_CPU)]
    LAST_CPU[:] = cpu
    return total


def pyscenedetect(videos: list[Path], work: Path) -> float:
    """`scenedetect -i V detect-adaptive split-video` per input (PySceneDetect re-encodes each
    scene with ffmpeg: libx264, its defaults)."""
    from curate.video import ffmpeg_exe

    env = {**os.environ, "PATH": f"{Path(ffmpeg_exe()).parent}:{os.environ.get('PATH', '')}"}
    shim = work / "bin"  # PySceneDetect calls `ffmpeg` by name
    shim.mkdir(exist_ok=True)
    if not (shim / "ffmpeg").exists():
        (shim / "ffmpeg").symlink_to(ffmpeg_exe())
    env["PATH"] = f"{shim}:{env['PATH']}"
    total = 0.0
    for i, v in enumerate(videos):
        out = work / f"psd{i}"
        total += timed([sys.executable, "-m", "scenedetect", "-q", "-i", str(v), "-o", str(out), "detect-adaptive",
                        "split-video"], env)  # fmt: skip
    return total


def fixed_cost(videos: list[Path], work: Path) -> None:
    """What a run costs whatever its inputs: `curate run` over the shortest input alone (cuts and
    spans), on Ray (its start and stop included) and with the local executor."""
    short = min(videos, key=lambda v: v.stat().st_size)
    one = work / "one"
    one.mkdir(exist_ok=True)
    if not (one / short.name).exists():
        (one / short.name).symlink_to(short)
    for executor in ("ray", "local"):
        wall, _ = curate_run(one, work / f"fixed-{executor}", ["clips.mode=deferred", f"executor={executor}", *NO_SCORERS])
        print(f"fixed cost, executor {executor}: {wall:.1f} s, {LAST_CPU[0]:.1f} CPU-s (`curate run` over {short.name} "
              "alone)", flush=True)  # fmt: skip


def curate_run(videos_dir: Path, out: Path, sets: list[str], recipe: str = "demo") -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "curate_cli.main", "run", recipe, "-i", str(videos_dir), "-o", str(out)]
    for s in sets:
        cmd += ["--set", s]
    wall = timed(cmd, {**os.environ, "CI": "true", "RAY_USAGE_STATS_ENABLED": "0"})
    return wall, json.loads((out / "manifest.json").read_text())


CLI = [sys.executable, "-m", "curate_cli.main"]
RULES = ROOT / "curate" / "configs" / "subsets" / "demo_clean.yaml"
WEIGHT_FREE = ["scorers.caption_coca.enabled=false", "scorers.caption_vblip.enabled=false",
               "scorers.caption_llm.enabled=false", "scorers.clip.enabled=false"]  # fmt: skip


def deferred_vs_eager(videos: list[Path], work: Path, base: float) -> None:
    """Per recipe: run, select demo_clean, export the survivors, eager (`exact`) against deferred
    (`export --materialize`); each step timed as users run it (the CLI)."""
    env = {**os.environ, "CI": "true", "RAY_USAGE_STATS_ENABLED": "0"}
    print("| recipe | mode | run s | select s | export s | sum s | x bare decode | clips kept / all |")
    print("|---|---|---|---|---|---|---|---|")
    for recipe in ("demo", "svd"):
        sums = {}
        for mode in ("exact", "deferred"):
            out, sub, exp = work / f"{recipe}-{mode}", work / f"{recipe}-{mode}-sub", work / f"{recipe}-{mode}-exp"
            t_run, m = curate_run(videos[0].parent, out, [f"clips.mode={mode}", *WEIGHT_FREE], recipe)
            t_sel = timed([*CLI, "select", str(RULES), "-s", str(out), "-o", str(sub)], env)
            t_exp = timed([*CLI, "export", str(sub), "-o", str(exp), *(["--materialize"] if mode == "deferred" else [])], env)
            kept = json.loads((exp / "index.json").read_text())["rows"]
            sums[mode] = t_run + t_sel + t_exp
            print(f"| {recipe} | {mode} | {t_run:.1f} | {t_sel:.1f} | {t_exp:.1f} | {sums[mode]:.1f} | {sums[mode] / base:.2f} "
                  f"| {kept} / {m['counts']['clips']} |", flush=True)  # fmt: skip
        print(f"| {recipe} | deferred / exact | | | | {sums['deferred'] / sums['exact']:.2f} | | |", flush=True)


def peak_memory(work: Path) -> None:
    """Peak RSS of the process tree (curate, its watchdog child, the forkserver, ffmpeg) of a
    deferred pass over one 1080p input of 2, 10 and 25 minutes (the long ones: the short one
    repeated, stream-copied), and each process's share at that peak."""
    import threading

    from curate.video import ffmpeg_exe

    def tree_rss(pid: int) -> dict[int, tuple[int, str]]:  # pid -> (bytes, command), descendants too
        out, todo = {}, [pid]
        while todo:
            p = todo.pop()
            try:
                rss = int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                cmd = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
                out[p] = (rss, Path(cmd[0].decode()).name + (" -m " + cmd[2].decode() if cmd[1:2] == [b"-m"] else ""))
                for t in Path(f"/proc/{p}/task").iterdir():
                    todo += [int(c) for c in (t / "children").read_text().split()]
            except (OSError, ValueError, IndexError):
                pass
        return out

    ff = ffmpeg_exe()
    two = work / "two_min.mp4"
    subprocess.run([ff, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=24:duration=120", "-c:v",
                    "libx264", "-preset", "ultrafast", "-g", "48", str(two)], check=True)  # fmt: skip
    inputs = {"2 min 1080p": two}
    for minutes in (10, 25):
        (work / "list.txt").write_text("".join(f"file '{two}'\n" for _ in range(minutes // 2 + 1)))
        inputs[f"{minutes} min 1080p"] = work / f"{minutes}_min.mp4"
        subprocess.run([ff, "-v", "error", "-f", "concat", "-safe", "0", "-i", str(work / "list.txt"), "-t",
                        str(minutes * 60), "-c", "copy", str(inputs[f"{minutes} min 1080p"])], check=True)  # fmt: skip
    print("| input | wall s | peak RSS MiB (process tree) | each process at that peak, MiB |")
    print("|---|---|---|---|")
    peaks = {}
    for name, path in inputs.items():
        cmd = [*CLI, "run", "demo", "-i", str(path), "-o", str(work / f"mem-{path.stem}"), "--set", "clips.mode=deferred",
               "--set", "executor=local", "--set", "input_timeout_s=7200", *sum((["--set", s] for s in WEIGHT_FREE), [])]  # fmt: skip
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "CI": "true"})
        peak: list = [0, {}]

        def watch() -> None:
            while proc.poll() is None:
                each = tree_rss(proc.pid)
                if sum(r for r, _ in each.values()) > peak[0]:
                    peak[:] = [sum(r for r, _ in each.values()), each]
                time.sleep(0.2)

        w = threading.Thread(target=watch)
        w.start()
        proc.wait()
        w.join()
        peaks[name] = peak[0]
        split = ", ".join(f"{c} {r / 2**20:.0f}" for r, c in sorted(peak[1].values(), reverse=True))
        print(f"| {name} | {time.perf_counter() - t:.1f} | {peak[0] / 2**20:.0f} | {split} |", flush=True)
    for name in ("10 min 1080p", "25 min 1080p"):
        print(f"| {name[:6]} / 2 min | | {peaks[name] / peaks['2 min 1080p']:.2f} | |")


def long_input(videos: list[Path], work: Path) -> None:
    """The real 2-minute 1080p talk joined 12 times (stream copy: 24.5 minutes, 44,136 frames),
    run by `curate run demo` (Ray on this machine's CPUs) in one piece (input_timeout_s raised, or
    the recipe's 300 s makes it a `timeout`) and as segments (the recipe's segment_s, its 300 s
    limit per segment); then with the other inputs beside it, against the work it holds (the
    manifest's stage seconds over the CPUs)."""
    from curate.shards import read_shards
    from curate.video import ffmpeg_exe

    talk = next(v for v in videos if "test_video" in v.name)
    (work / "list.txt").write_text(f"file '{talk}'\n" * 12)
    solo, mixed = work / "solo", work / "mixed"
    solo.mkdir()
    mixed.mkdir()
    long = solo / "talk_x12.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "concat", "-safe", "0", "-i", str(work / "list.txt"), "-map", "0:v",
                    "-c", "copy", str(long)], check=True)  # fmt: skip
    os.link(long, mixed / long.name)
    for v in videos:
        if v != talk:
            os.link(v, mixed / v.name)
    cpus = os.cpu_count() or 1
    print(f"| run | wall s | x one piece | clips | quarantined | CPU-s busy (machine) | CPUs busy, of {cpus} |")
    print("|---|---|---|---|---|---|---|")
    walls, rows = {}, {}
    for name, src, sets in (("one piece", solo, ["segment_s=0", "input_timeout_s=7200"]), ("segments", solo, []),
                            ("segments + 19 short inputs", mixed, []), ("one piece + 19 short inputs", mixed,
                                                                        ["segment_s=0", "input_timeout_s=7200"])):  # fmt: skip
        out = work / name.replace(" ", "_")
        wall, m = curate_run(src, out, [*WEIGHT_FREE, *sets])
        busy = LAST_CPU[0]
        walls[name] = wall
        t = read_shards(str(out))
        rows[name] = sorted(map(str, t.drop_columns(["clip_uri"]).to_pylist()))
        print(f"| {name} | {wall:.1f} | {wall / walls['one piece']:.2f} | {m['counts']['clips']} | "
              f"{m['counts']['quarantined']} | {busy:.0f} | {busy / wall:.2f} |", flush=True)  # fmt: skip
    for a, b in (("one piece", "segments"), ("one piece + 19 short inputs", "segments + 19 short inputs")):
        print(f"rows, {a} vs {b}: {len(rows[a])} vs {len(rows[b])}, {len(set(rows[a]) ^ set(rows[b]))} in one only")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=Path, default=SHARED)
    ap.add_argument("--only", nargs="*", help="run names containing these words")
    ap.add_argument("--deferred", action="store_true", help="eager against deferred, run + select + export")
    ap.add_argument("--memory", action="store_true", help="peak memory of a deferred pass, 2, 10 and 25 minutes")
    ap.add_argument("--long", action="store_true", help="a 24.5-minute 1080p input in one piece and as segments")
    args = ap.parse_args(argv)
    if args.memory:
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
            peak_memory(Path(tmp))
        return 0
    videos = sorted(p for p in args.videos.iterdir() if p.suffix in {".mp4", ".avi", ".mkv", ".mov", ".webm"})
    if not videos:
        print(f"no videos in {args.videos}")
        return 1
    if args.long:
        with tempfile.TemporaryDirectory(prefix="bench-long-") as tmp:
            long_input(videos, Path(tmp))
        return 0
    if args.deferred:
        with tempfile.TemporaryDirectory(prefix="bench-deferred-") as tmp:
            base = bare_decode(videos)
            print(f"{len(videos)} videos; bare decode {base:.1f} s")
            deferred_vs_eager(videos, Path(tmp), base)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = Path(tmp)
        base = bare_decode(videos)
        base_cpu, base_steal = LAST_CPU
        psd = pyscenedetect(videos, work)
        print(f"{len(videos)} videos; bare decode {base:.1f} s ({base_cpu:.1f} CPU-s, {base_steal:.1f} s stolen); "
              f"PySceneDetect detect-adaptive split-video {psd:.1f} s ({psd / base:.1f}x decode)")  # fmt: skip
        if not args.only or "fixed" in args.only:
            fixed_cost(videos, work)
        print("| run | wall s | x bare decode | x PySceneDetect | CPU-s | x bare decode's CPU-s | stolen s | clips | "
              "stage seconds (summed over workers) |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        for k, (name, sets) in enumerate(RUNS):
            if args.only and not any(w in name for w in args.only):
                continue
            wall, m = curate_run(videos[0].parent, work / f"out{k}", sets)
            cpu, stolen = LAST_CPU
            stages = ", ".join(f"{s} {v:.1f}" for s, v in m["stage_seconds"].items())
            print(f"| {name} | {wall:.1f} | {wall / base:.2f} | {wall / psd:.2f} | {cpu:.1f} | {cpu / base_cpu:.2f} | "
                  f"{stolen:.1f} | {m['counts']['clips']} | {stages} |", flush=True)  # fmt: skip
        again = bare_decode(videos)
        print(f"bare decode again, after the runs: {again:.1f} s ({LAST_CPU[0]:.1f} CPU-s, {LAST_CPU[1]:.1f} s stolen)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
