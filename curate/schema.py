"""The row schemas and every column name, in one place.

A shard row is one clip: the clip fields below, then each scorer's own (`output_fields`, declared
in the scorer's file, so a plugin package adds columns without editing curate/). A stage may only
write the clip fields or the fields it declares (checked by `curate.stage.check_stage`).
"""

from __future__ import annotations

import pyarrow as pa

# --- clip identity and geometry (pipeline issue) -------------------------------------------
CLIP_ID = "clip_id"
VIDEO_ID = "video_id"
SOURCE_URI = "source_uri"
CLIP_URI = "clip_uri"
CLIP_INDEX = "clip_index"
START_FRAME = "start_frame"
END_FRAME = "end_frame"  # exclusive
START_S = "start_s"
END_S = "end_s"
DURATION_S = "duration_s"
FPS = "fps"  # of the stored clip (curate.clips: a clip may be stored at a lower rate ...
WIDTH = "width"  # ... and size than its source)
HEIGHT = "height"
NUM_FRAMES = "num_frames"  # frames in the clip file (end_frame - start_frame unless max_fps dropped some)
SOURCE_FPS = "source_fps"
SOURCE_WIDTH = "source_width"
SOURCE_HEIGHT = "source_height"
CODEC = "codec"  # codec of the source video
CLIP_MODE = "clip_mode"  # extraction mode actually used: copy | exact | smart | deferred (no file: a span)
PREVIEW = "preview"  # deferred: a small animated WebP of the clip, made during its one decode (the report's)
ERRORS = "errors"

CLIP_FIELDS: list[pa.Field] = [
    pa.field(CLIP_ID, pa.string(), nullable=False),
    pa.field(VIDEO_ID, pa.string(), nullable=False),
    pa.field(SOURCE_URI, pa.string(), nullable=False),
    pa.field(CLIP_URI, pa.string()),
    pa.field(CLIP_INDEX, pa.int32()),
    pa.field(START_FRAME, pa.int64()),
    pa.field(END_FRAME, pa.int64()),
    pa.field(START_S, pa.float64()),
    pa.field(END_S, pa.float64()),
    pa.field(DURATION_S, pa.float64()),
    pa.field(FPS, pa.float64()),
    pa.field(WIDTH, pa.int32()),
    pa.field(HEIGHT, pa.int32()),
    pa.field(NUM_FRAMES, pa.int64()),
    pa.field(SOURCE_FPS, pa.float64()),
    pa.field(SOURCE_WIDTH, pa.int32()),
    pa.field(SOURCE_HEIGHT, pa.int32()),
    pa.field(CODEC, pa.string()),
    pa.field(CLIP_MODE, pa.string()),
    pa.field(ERRORS, pa.list_(pa.string())),
    pa.field(PREVIEW, pa.binary()),
]

# --- scores (scoring issue): one prefix per scorer, null when not computed ----------------------
FLOW_MEAN = "flow_mean"  # px/frame at the analysis size (recorded in the manifest)
FLOW_MAX = "flow_max"
OCR_AREA_RATIO = "ocr_area_ratio"  # union of text boxes / frame area, max over sampled frames
OCR_TEXT = "ocr_text"
QUALITY_SHARPNESS = "quality_sharpness"  # variance of the Laplacian (gray, analysis size)
QUALITY_BRIGHTNESS = "quality_brightness"  # mean luma, 0..1
QUALITY_CONTRAST = "quality_contrast"  # std of luma, 0..1
QUALITY_COLORFULNESS = "quality_colorfulness"  # Hasler & Suesstrunk 2003, 0..~150
CLIP_SIM = "clip_sim"  # cosine(mean frame embedding, caption embedding)
CLIP_EMBEDDING = "clip_embedding"  # float16 list, normalised mean frame embedding
AESTHETIC_SCORE = "aesthetic_score"  # LAION-style MLP head on the image embedding
CAPTION_COCA = "caption_coca"
CAPTION_VBLIP = "caption_vblip"
CAPTION_LLM = "caption_llm"
CAPTION_VLM = "caption_vlm"  # a video-language model's caption (scoring/caption_vlm.py)
PHASH = "phash"  # 64-bit DCT hash (pHash) of the clip's mean frame (scoring/phash.py)
PHASH_FRAMES = "phash_frames"  # pHashes of the mean frame, then each sampled frame, each under curate.dedup.CROPS
PHASH_COLOR = "phash_color"  # mean R, G, B (0..255) of the sampled frames: the colour pHash (luma) cannot see

# Each scorer declares the fields (types) of its columns itself (`output_fields`, scoring/); the
# names above are the built-in scorers' and stay here because select, dedup and the trainer read
# them. A shard row's schema is the clip fields, then every registered scorer's, in run order
# (curate.registry.clip_schema).


# --- quarantine ------------------------------------------------------------------------------
REASON = "reason"
DETAIL = "detail"
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field(SOURCE_URI, pa.string(), nullable=False),
        pa.field(VIDEO_ID, pa.string()),
        pa.field(REASON, pa.string(), nullable=False),
        pa.field(DETAIL, pa.string()),
    ]
)

# Reason codes for quarantine rows. Short, stable, greppable.
Q_MISSING = "missing"  # the input does not exist (or vanished)
Q_EMPTY = "empty"  # zero-length file
Q_UNREADABLE = "unreadable"  # the container cannot be opened (garbage, truncated header, moov-less)
Q_NO_VIDEO = "no_video_stream"  # opens, but has no video stream (audio-only, data)
Q_UNDECODABLE = "undecodable"  # has a video stream, but no frame decodes
Q_TOO_LARGE = "too_large"  # frame size above the configured pixel limit
Q_TIMEOUT = "timeout"  # processing exceeded the per-input timeout
Q_DUPLICATE = "duplicate"  # byte-identical to an input already in this OUT
Q_ERROR = "error"  # an unexpected failure while processing the input (detail has the message)

# --- in-flight columns ------------------------------------------------------------------------
# Columns that travel between stages inside a run and are never written to shards. A row is
# either a clip, or (clip_id null) a marker for a video that produced no clips, so the committer
# always learns that a video is finished, whatever happened to it.
VIDEO_META = "_video"  # JSON: per-video facts the committer needs (curate.record.VideoRecord.to_json)
SECONDS = "_seconds"  # `_seconds.<stage>`: the seconds a stage charged to this row (pipelines.graph.timed)
SEGMENT = "_segment"  # JSON: a segment of a long input, what its task is given and what it found (curate.segments)
UNIT = "_unit"  # the unit of work a row came from: its input, or "<input>#<segment>"
SAMPLES = "_samples"  # npz bytes: the frames each scorer asked for, decoded once (curate.sample)
INTERNAL_PREFIX = "_"
