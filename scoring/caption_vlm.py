"""Captions and a yes/no rubric from a video-language model (Qwen2-VL / Qwen2.5-VL family), as
Cosmos-Curate, NeMo Curator and Open-Sora caption today.

The model sees the clip's sampled frames as one video (`fps` frames a second, at most
`max_side` px, from the same decode as every other scorer). A clip longer than `window_frames`
frames is captioned window by window, and the same model merges the window captions into one
(text only, `merge_prompt`). Decoding is greedy; `caption_vlm_tokens` counts the tokens it
generated for the clip (windows and merge together).

The rubric (`questions`: name -> a yes/no question) is read from the model's next-token
distribution after each question, never from free text: P(yes) / (P(yes) + P(no)) over the
tokens that spell yes and no, into `vlm_<name>_p`, and `vlm_<name>` = that probability >=
`threshold`. The model sees at most `window_frames` frames spread over the whole clip, through
its vision tower once; each question is a row of one batch that reuses those video tokens.

Backends: transformers (AutoModelForImageTextToText + AutoProcessor; any device) and, where
vllm is installed (GPU nodes), vLLM with the same prompts, greedy decoding and the yes/no
logprobs of the first generated token.
"""

from __future__ import annotations

import math
import re
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from curate import schema
from curate.models import ModelRef
from curate.params import ModelParams
from curate.sample import SamplePlan
from curate.stage import StageBase

TOKENS = "caption_vlm_tokens"
PREFIX = "vlm_"
QUESTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# Cosmos-Curate's kind of rubric: what makes a clip poor training video (recipes/svd_vlm.yaml)
DEFAULT_PROMPT = ("Describe this video in one or two sentences: the setting, the main subjects, what they do, "
                  "and how the camera moves.")  # fmt: skip
MERGE_PROMPT = ("These captions describe consecutive parts of one video, in order:\n{captions}\n"
                "Write one caption of the whole video. Answer with the caption only.")  # fmt: skip
YES, NO = ("yes", "Yes", " yes", " Yes", "YES"), ("no", "No", " no", " No", "NO")


class VlmParams(ModelParams):
    model: str = Field("Qwen/Qwen2.5-VL-3B-Instruct", description="HF id (local cache only) or a local directory")
    backend: Literal["transformers", "vllm"] = Field("transformers", description="vllm: GPU nodes with vllm installed")
    fps: float = Field(2.0, gt=0, description="frames a second fed to the model (Qwen2-VL's own default)")
    window_frames: int = Field(16, ge=2, description="frames per window: a longer clip is captioned per window, then merged")
    max_side: int = Field(448, ge=28, description="frames resized so their long side is at most this")
    prompt: str = DEFAULT_PROMPT
    merge_prompt: str = MERGE_PROMPT
    max_new_tokens: int = Field(80, ge=1)
    questions: dict[str, str] = Field(default_factory=dict, description="name -> yes/no question: columns vlm_<name> "
                                      "(bool) and vlm_<name>_p (P(yes))")  # fmt: skip
    threshold: float = Field(0.5, ge=0, le=1, description="vlm_<name> is true where P(yes) >= this")
    dtype: str = Field("auto", description="auto = bfloat16 on GPU, float32 on CPU")

    @field_validator("questions")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        for name, q in v.items():
            if not QUESTION_NAME.match(name) or name.endswith("_p"):
                raise ValueError(f"question name {name!r}: lower-case letters, digits and _, starting with a letter, "
                                 "at most 40, not ending in _p (it names the column vlm_<name>)")  # fmt: skip
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"question {name!r} is empty")
        return v

    @field_validator("merge_prompt")
    @classmethod
    def _merge(cls, v: str) -> str:
        if "{captions}" not in v:
            raise ValueError("merge_prompt must contain {captions}")
        return v


def rubric_fields(questions: dict[str, str]) -> tuple[pa.Field, ...]:
    return tuple(f for name in questions for f in (pa.field(PREFIX + name, pa.bool_()), pa.field(f"{PREFIX}{name}_p", pa.float32())))


class VlmCaptioner(StageBase):
    name: ClassVar[str] = "caption_vlm"
    order: ClassVar[int] = 55  # after the frame captioners, before the LLM that may merge its caption
    Params: ClassVar[type] = VlmParams
    output_fields: ClassVar[tuple[pa.Field, ...]] = (pa.field(schema.CAPTION_VLM, pa.string()), pa.field(TOKENS, pa.int32()))
    column_families: ClassVar[tuple[tuple[str, pa.DataType], ...]] = (
        (r"vlm_[a-z][a-z0-9_]*_p", pa.float32()),
        (r"vlm_[a-z][a-z0-9_]*", pa.bool_()),
    )  # fmt: skip

    def __init__(self, params: VlmParams):
        self.params = params
        self.model = None
        # this config's rubric columns, beside the fixed ones
        self.output_fields = type(self).output_fields + rubric_fields(params.questions)
        self.output_columns = tuple(f.name for f in self.output_fields)

    @classmethod
    def plans(cls, params: VlmParams) -> list[SamplePlan]:
        return [SamplePlan(cls.name, fps=params.fps, min_frames=2, max_side=params.max_side)]

    @classmethod
    def model_refs(cls, params: VlmParams) -> list[ModelRef]:
        packages = (("vllm", "vllm"),) if params.backend == "vllm" else (("torch", "models"), ("transformers", "models"))
        return [ModelRef(cls.name, "video-language model", "hf", params.model, packages=packages)]

    # -- loading -------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.model is not None:
            return
        from scoring._loaders import require

        path = require(self.model_refs(self.params)[0])
        if self.params.backend == "vllm":
            self.model = _Vllm(path, self.params)
        else:
            self.model = _Transformers(path, self.params)
        self.yes, self.no = self.model.answer_tokens()

    # -- the batch loop ------------------------------------------------------------------------
    def windows(self, frames: np.ndarray) -> list[np.ndarray]:
        """The clip's frames cut into windows of at most window_frames."""
        n_windows = max(1, math.ceil(len(frames) / self.params.window_frames))
        return [_even(part) for part in np.array_split(frames, n_windows)]

    def overview(self, frames: np.ndarray) -> np.ndarray:
        """At most window_frames frames spread over the whole clip: what the rubric sees."""
        idx = np.unique(np.round(np.linspace(0, len(frames) - 1, min(len(frames), self.params.window_frames))).astype(int))
        return _even(frames[idx])

    def score_batch(self, items: list) -> list[dict]:
        items = [np.asarray(f) for f in items]
        clips = [self.windows(f) for f in items]
        flat = [w for ws in clips for w in ws]
        texts, counts = self.model.caption(flat)
        rows, k = [], 0
        merge_at = []
        for ws in clips:
            parts, n = texts[k:k + len(ws)], sum(counts[k:k + len(ws)])
            k += len(ws)
            rows.append({schema.CAPTION_VLM: parts[0], TOKENS: n})
            if len(ws) > 1:
                merge_at.append((len(rows) - 1, parts))
        if merge_at:
            prompts = [self.params.merge_prompt.format(captions="\n".join(f"{j + 1}. {t}" for j, t in enumerate(parts)))
                       for _, parts in merge_at]  # fmt: skip
            merged, n_merged = self.model.text(prompts)
            for (r, _), text, n in zip(merge_at, merged, n_merged):
                rows[r][schema.CAPTION_VLM] = text
                rows[r][TOKENS] += n
        if self.params.questions:
            names = list(self.params.questions)
            p_yes = self.model.yes_probability([self.overview(f) for f in items], [self.params.questions[q] for q in names],
                                               self.yes, self.no)  # fmt: skip
            for row, probs in zip(rows, p_yes):
                for q, p in zip(names, probs):  # None: the model's answer was neither (vLLM's top tokens)
                    row[f"{PREFIX}{q}_p"] = None if p is None else float(p)
                    row[PREFIX + q] = None if p is None else bool(p >= self.params.threshold)
        return rows


def _even(frames: np.ndarray) -> np.ndarray:
    """An odd count of frames gets its last frame twice: Qwen2-VL embeds frames in pairs. A copy
    either way: the sampled frames are read-only views, and torch warns on those."""
    return np.concatenate([frames, frames[-1:]]) if len(frames) % 2 else frames.copy()


def _answer_ids(tokenizer) -> tuple[list[int], list[int]]:
    """The first token of each spelling of yes and of no (disjoint, or the rubric cannot be read)."""
    def first(words):
        ids = []
        for w in words:
            enc = tokenizer.encode(w, add_special_tokens=False)
            if enc and enc[0] not in ids:
                ids.append(enc[0])
        return ids

    yes, no = first(YES), first(NO)
    both = set(yes) & set(no)
    yes, no = [t for t in yes if t not in both], [t for t in no if t not in both]
    if not yes or not no:
        raise ValueError("the tokenizer spells yes and no with the same first token: the rubric cannot be read")
    return yes, no


def _messages(prompt: str, video: bool) -> list[dict]:
    content = ([{"type": "video"}] if video else []) + [{"type": "text", "text": prompt}]
    return [{"role": "user", "content": content}]


class _Transformers:
    def __init__(self, path: str, params: VlmParams):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from scoring._loaders import load_transformers, pad_left

        self.params = params
        self.model, self.device = load_transformers(AutoModelForImageTextToText, path, params.device, params.dtype)
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.tokenizer = pad_left(self.processor.tokenizer)
        import inspect

        self.reuse_video = "mm_encoder_outputs" in inspect.signature(self.model.forward).parameters

    def answer_tokens(self):
        return _answer_ids(self.tokenizer)

    def _encode(self, prompts: list[str], videos: list[np.ndarray] | None):
        texts = [self.processor.apply_chat_template(_messages(p, videos is not None), tokenize=False, add_generation_prompt=True)
                 for p in prompts]  # fmt: skip
        kw = {"videos": list(videos), "videos_kwargs": {"do_sample_frames": False}} if videos is not None else {}
        return self.processor(text=texts, return_tensors="pt", padding=True, **kw).to(self.device)

    def _generate(self, enc) -> tuple[list[str], list[int]]:
        import torch

        with torch.no_grad():
            out = self.model.generate(**enc, do_sample=False, max_new_tokens=self.params.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id)  # fmt: skip
        new = out[:, enc["input_ids"].shape[1]:]
        stop = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id}
        counts = [int(sum(1 for t in row.tolist() if t not in stop)) for row in new]
        texts = [" ".join(t.split()) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return texts, counts

    def caption(self, windows: list[np.ndarray]) -> tuple[list[str], list[int]]:
        return self._generate(self._encode([self.params.prompt] * len(windows), windows))

    def text(self, prompts: list[str]) -> tuple[list[str], list[int]]:
        return self._generate(self._encode(prompts, None))

    def yes_probability(self, videos: list[np.ndarray], questions: list[str], yes: list[int], no: list[int]) -> list[list[float]]:
        """Per video, per question, P(yes) / (P(yes) + P(no)) of the first answer token. The
        video goes through the vision tower once; its tokens are handed to every question's row
        (transformers' `mm_encoder_outputs`), so a rubric costs one vision pass and a prefill per
        question."""
        import torch

        out = []
        for video in videos:
            enc = self._encode(questions, [video] * len(questions))
            with torch.no_grad():
                if self.reuse_video:
                    grid = enc.pop("video_grid_thw")
                    pixels = enc.pop("pixel_values_videos")[: int(grid[0].prod())]  # every row's video is the same
                    feats = self.model.get_video_features(pixels, grid[:1], return_dict=True)
                    feats.pooler_output = tuple(feats.pooler_output) * len(questions)
                    logits = self.model(**enc, video_grid_thw=grid, mm_encoder_outputs={"video": feats}).logits
                else:
                    logits = self.model(**enc).logits
                logits = logits[:, -1, :].float()  # left padding: the last position is every row's next token
            probs = torch.softmax(logits, dim=-1)
            p_yes, p_no = probs[:, yes].sum(-1), probs[:, no].sum(-1)
            out.append((p_yes / (p_yes + p_no).clamp_min(1e-30)).tolist())
        return out


class _Vllm:
    """The same prompts through vLLM (GPU): greedy captions, and the rubric from the logprobs of
    the first generated token (top `logprobs` alternatives: an answer token outside them counts 0)."""

    TOP = 20

    def __init__(self, path: str, params: VlmParams):
        from transformers import AutoProcessor
        from vllm import LLM

        self.params = params
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.tokenizer = self.processor.tokenizer
        self.llm = LLM(model=path, dtype="bfloat16" if params.dtype == "auto" else params.dtype,
                       limit_mm_per_prompt={"video": 1}, max_logprobs=self.TOP)  # fmt: skip

    def answer_tokens(self):
        return _answer_ids(self.tokenizer)

    def _requests(self, prompts: list[str], videos: list[np.ndarray] | None) -> list[dict]:
        reqs = []
        for k, p in enumerate(prompts):
            text = self.processor.apply_chat_template(_messages(p, videos is not None), tokenize=False, add_generation_prompt=True)
            req = {"prompt": text}
            if videos is not None:
                req["multi_modal_data"] = {"video": videos[k]}
            reqs.append(req)
        return reqs

    def _run(self, reqs, max_tokens: int, logprobs: int | None = None):
        from vllm import SamplingParams

        sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=logprobs)
        return self.llm.generate(reqs, sp, use_tqdm=False)

    def caption(self, windows):
        outs = self._run(self._requests([self.params.prompt] * len(windows), windows), self.params.max_new_tokens)
        return [" ".join(o.outputs[0].text.split()) for o in outs], [len(o.outputs[0].token_ids) for o in outs]

    def text(self, prompts):
        outs = self._run(self._requests(prompts, None), self.params.max_new_tokens)
        return [" ".join(o.outputs[0].text.split()) for o in outs], [len(o.outputs[0].token_ids) for o in outs]

    def yes_probability(self, videos, questions, yes, no):
        reqs = [r for v in videos for r in self._requests(questions, [v] * len(questions))]
        outs = self._run(reqs, 1, logprobs=self.TOP)
        probs = []
        for o in outs:
            lp = o.outputs[0].logprobs[0]  # token id -> Logprob of the first generated position
            p_yes = sum(math.exp(lp[t].logprob) for t in yes if t in lp)
            p_no = sum(math.exp(lp[t].logprob) for t in no if t in lp)
            probs.append(p_yes / (p_yes + p_no) if p_yes + p_no > 0 else None)
        q = len(questions)
        return [probs[k * q:(k + 1) * q] for k in range(len(videos))]
