"""The typed records of one input: what probe learns (`VideoInfo`), what curate knows while it
processes the input (`InputRecord`, one process, never serialised), and its one summary form
(`VideoRecord`: from the per-video stage, as JSON between stages, to the commit record)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from curate import schema


@dataclass
class VideoInfo:
    codec: str
    pix_fmt: str
    width: int  # as displayed (after rotation)
    height: int
    coded_width: int
    coded_height: int
    rotation: int  # degrees of the display matrix, 0 when none
    fps: float  # nominal rate (r_frame_rate), also when frames are dropped (VFR)
    variable_fps: bool
    n_frames: int  # frames the demuxer delivers; the full decode in cuts has the final word
    duration_s: float
    start_offset_s: float  # first video pts relative to the container start (for ffmpeg -ss)
    frame_times: list[float] = field(repr=False)  # presentation time of each frame, from 0
    keyframes: list[int] = field(repr=False)  # frame indices of keyframes
    size_bytes: int = 0


@dataclass
class VideoRecord:
    """What the committer keeps about a finished input (it goes into the commit record)."""

    source_uri: str
    video_id: str | None
    clips: int
    duration_s: float = 0.0
    clip_seconds: float = 0.0
    scenes: int = 0
    short_scenes_dropped: int = 0
    held_frames_dropped: int = 0  # single frames shown longer than clips.max_s
    failed_clips: list[str] = field(default_factory=list)  # clips whose file could not be written
    stage_seconds: dict[str, float] = field(default_factory=dict)
    quarantine: dict | None = None  # {"reason", "detail"[, "retry": True when the next run should try again]}
    clips_with_errors: int = 0  # rows kept with a stage's columns null and the cause in `errors` (add_video)
    rebuilt: bool = False  # rebuilt from its rows after its commit record was lost (duration_s: a lower bound)
    size_bytes: int | None = None  # of the source: only inputs of a done one's size can be its duplicates
    segments: int = 0  # worked as this many segments (curate.segments); 0: in one piece

    # the one summary form from the per-video stage to the commit record: it travels between
    # stages as this JSON (schema.VIDEO_META), and is stored as it
    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> "VideoRecord":
        return cls(**json.loads(text))


class Quarantine(Exception):
    """Raised by an input's step: the input cannot be used, for `reason` (curate.schema's Q_*);
    curate.per_video makes it the input's quarantine (`retry`: the next run tries it again)."""

    def __init__(self, reason: str, detail: str, retry: bool = False):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.retry = reason, detail, retry


@dataclass
class InputRecord:
    """What curate knows about one input while it is processed (one process, never serialised
    but for `summary()`)."""

    uri: str
    deadline: float | None = None  # time.time() past which the input is a `timeout`
    local: str | None = None  # a local path (a temp copy for a remote input)
    video_id: str | None = None
    info: VideoInfo | None = None
    n_frames: int = 0
    cuts: list[int] = field(default_factory=list)
    scenes: int = 0
    short_scenes_dropped: int = 0
    held_frames_dropped: int = 0
    failed_clips: list[str] = field(default_factory=list)
    quarantine: dict | None = None  # {"reason", "detail"[, "retry"]}
    seconds: dict[str, float] = field(default_factory=dict)

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.time()

    def set_quarantine(self, reason: str, detail: str, retry: bool = False) -> None:
        self.quarantine = {"reason": reason, "detail": detail[:2000], **({"retry": True} if retry else {})}

    def summary(self, rows: list[dict]) -> VideoRecord:
        """What the committer keeps of this input."""
        return VideoRecord(
            source_uri=self.uri, video_id=self.video_id, clips=len(rows),
            duration_s=self.info.duration_s if self.info else 0.0,
            size_bytes=self.info.size_bytes if self.info else None,
            clip_seconds=sum(r[schema.DURATION_S] for r in rows), scenes=self.scenes,
            short_scenes_dropped=self.short_scenes_dropped, held_frames_dropped=self.held_frames_dropped,
            failed_clips=self.failed_clips[:20], stage_seconds=self.seconds, quarantine=self.quarantine,
        )  # fmt: skip
