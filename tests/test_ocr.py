"""The OCR truth set: real frames with and without text, and text rendered onto real frames at
several sizes and contrasts, each with its expected answer, run through both backends; and
Data-Juicer's measured ratios reproduced with CRAFT and their method."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from curate import schema
from curate.sample import SamplePlan, decode_frames
from scoring.ocr import OcrParams, OcrScorer, summed_area_ratio, text_likely, union_area_ratio

TESTDATA = Path(__file__).parent / "data"
CUP, CREDITS = str(TESTDATA / "opencv__cup.mp4"), str(TESTDATA / "pyscenedetect__testvideo.mp4")
# rapidocr with its default detector (PP-OCRv4 mobile, shipped in scoring/models) under each
# runtime and precision, with the detector inside its wheel (PP-OCRv6 small), and CRAFT
BACKENDS = {
    "rapidocr": {},  # runtime auto: openvino where installed (a core dependency)
    "rapidocr-onnxruntime": {"runtime": "onnxruntime"},
    "rapidocr-bf16": {"runtime": "openvino", "precision": "bf16"},
    "rapidocr-PP-OCRv6_small": {"det_model": "PP-OCRv6_small"},
    "easyocr": {"backend": "easyocr"},
}


def frames_of(path: str, wanted: list[int], max_side: int = 640) -> dict[int, np.ndarray]:
    """Frames as the sample step hands them to the scorer (RGB, long side at most max_side)."""
    frames, _ = decode_frames(path, set(wanted), ["pyav"])
    out = {}
    for k, f in frames.items():
        size = SamplePlan("ocr", max_side=max_side).size_for(f.shape[1], f.shape[0])
        out[k] = f if size == (f.shape[1], f.shape[0]) else cv2.resize(f, size, interpolation=cv2.INTER_AREA)
    return out


@pytest.fixture(scope="module", params=list(BACKENDS))
def scorer(request):
    s = OcrScorer(OcrParams(**BACKENDS[request.param], recognize=True))
    s.setup()
    return s


def ratio(scorer, frame) -> tuple[float, str]:
    r = scorer.score(frame[None])
    return r[schema.OCR_AREA_RATIO], r[schema.OCR_TEXT]


def render(frame: np.ndarray, text: str, height_frac: float, ink: tuple, band: tuple | None) -> tuple[np.ndarray, float]:
    """`text` drawn with its cap height at `height_frac` of the frame, optionally on a band; returns
    the frame and the area ratio of the ink's bounding box."""
    out = frame.copy()
    h, w = out.shape[:2]
    scale = cv2.getFontScaleFromHeight(cv2.FONT_HERSHEY_SIMPLEX, int(height_frac * h), 2)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
    x, y = (w - tw) // 2, int(0.8 * h)
    if band is not None:
        cv2.rectangle(out, (x - th // 2, y - th - th // 2), (x + tw + th // 2, y + base + th // 4), band, -1)
    mask = np.zeros((h, w), np.uint8)
    cv2.putText(mask, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, 2, cv2.LINE_AA)
    out[mask > 0] = ink
    ys, xs = np.nonzero(mask)
    return out, (np.ptp(xs) + 1) * (np.ptp(ys) + 1) / (w * h)


def test_no_text_is_invented_on_real_textless_frames(scorer):
    """The cup clip: a hand, a cup, a wall; PP-OCRv6's detector alone boxes 0.37 to 0.80 of these
    frames as text, PP-OCRv4's boxes the patterned cup as three or four big "glyphs" (read "HAS",
    "OMA") in frames 163-208 (bench/ocr.py). Every one of them must come out (almost) empty."""
    for k, f in frames_of(CUP, [0, 40, 80, 120, 160, 163, 165, 170, 187, 190, 193, 196, 198, 200, 208]).items():
        r, text = ratio(scorer, f)
        assert r <= 0.02, (scorer.params.backend, k, r, text)


def test_real_credit_line(scorer):
    """One line of real text (rows 605-642 of 720) on photos: found, of about its true size."""
    for k, f in frames_of(CREDITS, [200, 400]).items():
        r, text = ratio(scorer, f)
        # the line is 37/720 of the height and 0.8 of the width (two text blocks): about 0.04 of
        # the frame in ink, a little more in boxes
        assert 0.03 < r < 0.08, (scorer.params.backend, k, r)
        assert "Castellano" in text or "bcastell" in text, (scorer.params.backend, text)


@pytest.mark.parametrize("words, height_frac, ink, band", [
    ("CURATE 2026 clips", 0.04, (255, 255, 255), (0, 0, 0)),  # subtitle size, white on a black band
    ("CURATE 2026 clips", 0.08, (20, 20, 20), None),  # title size, dark ink straight on the photo
    ("CURATE 26", 0.15, (220, 30, 0), None),  # a big red caption across the hand and the wall
    ("CURATE 2026 clips", 0.08, (150, 150, 150), (110, 110, 110)),  # low contrast: grey on grey
])  # fmt: skip
def test_rendered_text_on_a_real_frame(scorer, words, height_frac, ink, band):
    frame = frames_of(CUP, [100])[100]
    text_frame, ink_ratio = render(frame, words, height_frac, ink, band)
    r, text = ratio(scorer, text_frame)
    # detector boxes add a margin around the ink; never less than half of it, never many times it
    assert 0.5 * ink_ratio <= r <= 2.5 * ink_ratio + 0.005, (scorer.params.backend, r, ink_ratio)
    assert "CURATE" in text.upper(), (scorer.params.backend, text)


def test_the_gate_passes_text_and_skips_flat_frames():
    flat = np.full((360, 640, 3), 128, np.uint8)
    fade = (frames_of(CUP, [100])[100] * 0.05).astype(np.uint8)  # a fade to black
    assert not text_likely(flat) and not text_likely(fade)
    text_frame, _ = render(flat, "a small subtitle line", 0.03, (255, 255, 255), None)
    assert text_likely(text_frame)
    credits = frames_of(CREDITS, [200])[200]
    assert text_likely(credits)


def test_a_fading_in_title_is_not_gated_out():
    """The real test video opens on a title fading in from black: at frames 8-12 its pixels reach
    only 18-25, and the detector finds the title (0.03-0.05 of the frame). A gate that counted
    strokes of 24 gray levels saw none there and skipped the detector: a short clip of a fading
    title scored 0."""
    scorer = OcrScorer(OcrParams())
    scorer.setup()
    for k, f in frames_of(CREDITS, [8, 10, 12]).items():
        assert f.max() <= 25 and text_likely(f), k
        assert scorer.score(f[None])[schema.OCR_AREA_RATIO] > 0.02, k


def test_area_ratio_union_and_sum():
    a = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.float32)
    b = a + np.array([5, 0], np.float32)
    assert union_area_ratio([a, b], 100, 10) == pytest.approx(0.15, abs=0.011)  # rasterised: edges count
    assert summed_area_ratio([a, b], 100, 10) == pytest.approx(0.2)  # exact: overlap counted twice


def test_easyocr_reproduces_data_juicers_ratios(shared_data, truth):
    """Data-Juicer's video_ocr_area_ratio_filter tests (EasyOCR's CRAFT, detection only, frames at
    t=0, duration/2 and the end, summed box areas, mean over frames) on three real clips."""
    params = OcrParams(backend="easyocr", positions=(0.0, 0.5, 1.0), reduce="mean", area="sum", verify=False,
                       gate=False, recognize=False, det_limit_side=2560, max_side=4096)  # fmt: skip
    s = OcrScorer(params)
    s.setup()
    got = {}
    for i in (1, 2, 3):
        name = f"datajuicer__video{i}.mp4"
        path = str(shared_data / "videos" / name)
        n = truth[name]["frames"]
        frames = frames_of(path, SamplePlan("ocr", positions=params.positions).indices(n, 24.0), 4096)
        got[i] = s.score(np.stack([frames[k] for k in sorted(frames)]))[schema.OCR_AREA_RATIO]
    assert got[1] == pytest.approx(0.067, abs=0.01)
    assert got[2] == pytest.approx(0.288, abs=0.01)
    assert got[3] == pytest.approx(0.075, abs=0.01)
    # what their filters assert: video1 below 0.07, video3 within [0.07, 0.1], video2 above it
    assert got[1] < 0.07 <= got[3] <= 0.1 < got[2]


def test_easyocr_weights_come_from_the_package_and_never_download(monkeypatch, tmp_path):
    from curate.models import MissingModelError
    from scoring.ocr import easyocr_model_dir, load_easyocr

    import easyocr_en_models

    assert easyocr_model_dir(None) == easyocr_en_models.model_dir()
    with pytest.raises(MissingModelError, match="craft_mlt_25k.pth"):
        load_easyocr(str(tmp_path), ["en"])


def test_the_shipped_detector_is_the_published_file_and_a_bad_name_says_so(tmp_path):
    """scoring/models carries PP-OCRv4's mobile detector unmodified (the hash rapidocr's own
    model registry checks); a name that is neither known nor a file fails naming the key."""
    import hashlib

    from curate.models import MissingModelError
    from scoring.ocr import DET_MODELS, det_model_path

    path = det_model_path("PP-OCRv4_mobile")
    assert path == DET_MODELS["PP-OCRv4_mobile"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"
    assert det_model_path("PP-OCRv6_small") is None  # rapidocr's own
    with pytest.raises(MissingModelError, match="ocr.det_model='PP-OCRv5'"):
        det_model_path("PP-OCRv5")
    with pytest.raises(MissingModelError, match="no detector file"):
        OcrScorer(OcrParams(det_model=str(tmp_path / "det.onnx"))).setup()


def test_a_still_clip_is_detected_once_and_a_change_is_not_missed():
    """`reuse_still`: of a clip's sampled frames, one no 64-px cell of which moved by more than 2
    gray levels from a frame already detected takes that frame's result (a slide, a title card,
    a static shot); a subtitle that appears is a change, detected. The ratios are those of
    detecting every frame."""
    base = frames_of(CREDITS, [200])[200]
    noise = np.random.default_rng(0).integers(-1, 2, base.shape)  # re-encoding noise of a still shot
    still = np.stack([base, np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8), base])
    subtitled, _ = render(base, "a subtitle that appears", 0.05, (255, 255, 255), (0, 0, 0))
    changing = np.stack([base, base, subtitled])

    reuse, every = OcrScorer(OcrParams()), OcrScorer(OcrParams(reuse_still=False))
    reuse.setup()
    every._engine = reuse._engine  # one engine, counted
    calls = []
    detect = reuse._engine.detect
    reuse._engine.detect = lambda rgb: calls.append(1) or detect(rgb)
    for clip, detected in ((still, 1), (changing, 2)):
        calls.clear()
        got = reuse.score(clip)[schema.OCR_AREA_RATIO]
        assert len(calls) == detected
        assert got == pytest.approx(every.score(clip)[schema.OCR_AREA_RATIO], abs=1e-9)
    assert reuse.score(changing)[schema.OCR_AREA_RATIO] > reuse.score(still)[schema.OCR_AREA_RATIO] + 0.01


def test_openvino_boxes_what_onnxruntime_boxes_on_real_frames():
    """The default runtime (OpenVINO, the normalisation compiled into the graph) runs the same
    network as rapidocr's onnxruntime session: on real frames with and without text, and text
    rendered onto them, the same boxes to a pixel and the same ratios."""
    frames = [*frames_of(CUP, [0, 120, 170, 198]).values(), *frames_of(CREDITS, [10, 200, 400]).values()]
    frames.append(render(frames[1], "CURATE 2026 clips", 0.04, (255, 255, 255), (0, 0, 0))[0])
    ov, ort = OcrScorer(OcrParams(runtime="openvino")), OcrScorer(OcrParams(runtime="onnxruntime"))
    ov.setup(), ort.setup()
    assert ov._engine.openvino is not None and ort._engine.openvino is None
    found = 0
    for f in frames:
        a, b = ov._engine.detect(f), ort._engine.detect(f)
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert np.abs(x - y).max() <= 1.0
        found += len(a)
        assert ov.score(f[None])[schema.OCR_AREA_RATIO] == pytest.approx(ort.score(f[None])[schema.OCR_AREA_RATIO], abs=1e-3)
    assert found >= 4  # the text frames were boxed


def test_runtime_choices_that_cannot_work_say_so():
    from pydantic import ValidationError

    from curate.models import MissingModelError

    with pytest.raises(ValidationError, match="bf16 needs runtime openvino"):
        OcrParams(runtime="onnxruntime", precision="bf16")
    with pytest.raises(MissingModelError, match="runs under onnxruntime only"):
        OcrScorer(OcrParams(runtime="openvino", det_model="PP-OCRv6_small")).setup()
    auto = OcrScorer(OcrParams(det_model="PP-OCRv6_small"))  # auto: the wheel's detector, onnxruntime
    auto.setup()
    assert auto._engine.openvino is None
