"""Text on screen: the share of the frame covered by text, and what it says.

SVD removes clips with much on-screen text (titles, subtitles, slides). A few frames per clip are
run through a text detector; `ocr_area_ratio` is the union of the detected text boxes over the
frame area (boxes rasterised, so overlaps count once), the max over the sampled frames;
`ocr_text` is the distinct recognised lines, in order, joined by " | ".

Backends: `rapidocr` (default; PP-OCR ONNX models ship inside its wheel, so it runs offline;
one onnxruntime thread per worker and a small detector size, as Ray runs one worker per core),
and `easyocr`, loaded from a model directory with downloads disabled.
"""

from __future__ import annotations

import os
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate import schema
from curate.params import Strict
from curate.sample import SamplePlan, frames_for
from curate.models import MissingModelError
from curate.stage import Resources, StageBase, score_each


class OcrParams(Strict):
    enabled: bool = True
    backend: Literal["rapidocr", "easyocr"] = "rapidocr"
    positions: tuple[float, ...] = (0.1, 0.5, 0.9)
    max_side: int = Field(640, ge=64, description="frames are analysed at this long side")
    det_limit_side: int = Field(640, ge=64, description="rapidocr detector input long side")
    threads: int = Field(1, ge=1)
    min_score: float = Field(0.5, ge=0, le=1, description="recognition confidence to keep a text")
    easyocr_model_dir: str | None = None
    easyocr_languages: list[str] = Field(default_factory=lambda: ["en"])


def union_area_ratio(boxes: list[np.ndarray], width: int, height: int) -> float:
    if not boxes:
        return 0.0
    import cv2

    mask = np.zeros((height, width), np.uint8)
    for b in boxes:  # one call per box: a single fillPoly of overlapping polygons XORs them
        cv2.fillPoly(mask, [np.round(b).astype(np.int32).reshape(-1, 1, 2)], 1)
    return float(mask.sum()) / float(width * height)


def plausible_text(box: np.ndarray, text: str, score: float, width: int, height: int) -> bool:
    """Whether a detected, recognised box can be a line of text, by rules read off real frames.

    On the 20 real clips of the test corpus, the boxes rapidocr invents on textless frames (a cup,
    a tree, a face, a curtain) are one to three "glyphs" in a box a whole frame tall (ratios of
    0.6 to 1.0), recognised with scores of 0.5 to 0.9; real text, including lettering a third of
    a frame tall on a T-shirt, is a thinner line or holds more glyphs. So: no line is thicker
    than 0.6 of the frame's short side; one or two glyphs thicker than a tenth of it need a
    near-certain recognition; three or fewer glyphs never cover a fifth of the frame."""
    b = np.asarray(box, np.float32).reshape(4, 2)
    e = [float(np.linalg.norm(b[(i + 1) % 4] - b[i])) for i in range(4)]
    a, c = (e[0] + e[2]) / 2, (e[1] + e[3]) / 2
    length, thickness = max(a, c), min(a, c)  # either reading direction (vertical CJK, rotated)
    glyphs = len(text.strip()) or 1
    short = min(width, height)
    if thickness > 0.6 * short:
        return False
    if glyphs <= 2 and thickness > 0.1 * short and score < 0.95:
        return False
    return not (glyphs <= 3 and length * thickness > 0.2 * width * height)


class OcrScorer(StageBase):
    name: ClassVar[str] = "ocr"
    order: ClassVar[int] = 20
    Params: ClassVar[type] = OcrParams
    resources: ClassVar[Resources] = Resources(num_cpus=1, batch_size=8, actors=2)  # holds the OCR engine
    output_columns: ClassVar[tuple[str, ...]] = (schema.OCR_AREA_RATIO, schema.OCR_TEXT)

    def __init__(self, params: OcrParams):
        self.params = params
        self._engine = None

    @classmethod
    def plans(cls, params: OcrParams) -> list[SamplePlan]:
        return [SamplePlan(cls.name, positions=tuple(params.positions), max_side=params.max_side)]

    def setup(self) -> None:
        if self._engine is not None:
            return
        p = self.params
        if p.backend == "rapidocr":
            from rapidocr import RapidOCR

            self._engine = RapidOCR(params={
                "Global.log_level": "error", "Global.use_cls": False,
                "Det.limit_type": "max", "Det.limit_side_len": p.det_limit_side,
                "EngineConfig.onnxruntime.intra_op_num_threads": p.threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            })  # fmt: skip
        else:
            self._engine = load_easyocr(p.easyocr_model_dir, p.easyocr_languages)

    def detect(self, rgb: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
        """Text boxes (4x2 polygons in pixels) and recognised strings of one frame: those
        recognised with at least `min_score` that can be text (`plausible_text`)."""
        h, w = rgb.shape[:2]
        if self.params.backend == "rapidocr":
            res = self._engine(rgb[..., ::-1].copy())  # rapidocr takes BGR like OpenCV
            if res.boxes is None:
                return [], []
            found = [(np.asarray(b), t, float(s)) for b, t, s in zip(res.boxes, res.txts, res.scores)]
        else:
            found = [(np.asarray(r[0], np.float32), r[1], float(r[2])) for r in self._engine.readtext(rgb)]
        keep = [(b, t) for b, t, s in found if s >= self.params.min_score and plausible_text(b, t, s, w, h)]
        return [b for b, _ in keep], [t for _, t in keep]

    def score(self, frames: np.ndarray) -> dict:
        ratios, texts = [], []
        for f in frames:
            boxes, strings = self.detect(f)
            ratios.append(union_area_ratio(boxes, f.shape[1], f.shape[0]))
            for s in strings:
                if s and s not in texts:
                    texts.append(s)
        return {schema.OCR_AREA_RATIO: max(ratios), schema.OCR_TEXT: " | ".join(texts)}

    def __call__(self, batch: pa.Table) -> pa.Table:
        return score_each(batch, self.name, frames_for(batch, self.name), self.output_columns, self.score)


def load_easyocr(model_dir: str | None, languages: list[str]):
    """EasyOCR from a local model directory, never downloading."""
    if not model_dir:
        raise MissingModelError(
            "ocr.backend=easyocr needs ocr.easyocr_model_dir: a directory holding craft_mlt_25k.pth and "
            "the recognition model for the languages (download them once where the internet is reachable)"
        )
    if not os.path.isfile(os.path.join(model_dir, "craft_mlt_25k.pth")):
        raise MissingModelError(
            f"easyocr model directory {model_dir} lacks craft_mlt_25k.pth (the detector); "
            "copy EasyOCR's model files there, see `curate models list`"
        )
    try:
        import easyocr
    except ImportError:
        raise MissingModelError("ocr.backend=easyocr needs the easyocr package: pip install easyocr") from None
    return easyocr.Reader(languages, model_storage_directory=model_dir, download_enabled=False, gpu=False, verbose=False)
