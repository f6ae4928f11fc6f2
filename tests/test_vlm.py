"""caption_vlm: a video-language model's captions and yes/no rubric, with a tiny random Qwen2-VL
saved as real Qwen2-VL checkpoints ship and loaded through the same path."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from curate import schema
from curate.config import ConfigError, load_config
from curate.models import ModelRef, check
from curate.sample import SampleParams, SampleStage
from curate.shards import read_shards
from tests.tiny_models import vlm_sets

pytest.importorskip("torch", reason="model stages need the 'models' extra")
QUESTIONS = {"slideshow": "Is this video a slideshow of still images?", "camera_shake": "Is the camera shaking noticeably?"}
runner = CliRunner()


@pytest.fixture(scope="module")
def clips(synth_dir):
    from curate.synth import Scene, make_video

    return [make_video(str(synth_dir / f"vlm_{k}.mp4"), [Scene(kind, seconds, seed=70 + k, speed_px=2.0)]).path
            for k, (kind, seconds) in enumerate([("moving", 2.0), ("static", 1.0), ("text", 3.0)])]  # fmt: skip


def stage(m, sets=()):
    from scoring.caption_vlm import VlmCaptioner

    s = VlmCaptioner(load_config(None, [*vlm_sets(m, QUESTIONS), *sets]).scorers.caption_vlm)
    s.setup()
    return s


def sampled(s, paths, fps=24.0):
    from curate.video import probe

    frames = [probe(p).n_frames for p in paths]
    t = pa.table({schema.CLIP_URI: paths, schema.START_FRAME: [0] * len(paths), schema.END_FRAME: frames,
                  schema.FPS: [fps] * len(paths), schema.ERRORS: [[] for _ in paths]})  # fmt: skip
    return SampleStage(SampleParams(), s.plans(s.params))(t)


def test_columns_types_windows_and_batching(tiny_models, clips):
    s = stage(tiny_models)
    table = sampled(s, clips)
    rows = s(table).drop_columns([schema.SAMPLES]).to_pylist()
    fields = {f.name: f.type for f in s.output_fields}
    assert fields == {"caption_vlm": pa.string(), "caption_vlm_tokens": pa.int32(), "vlm_slideshow": pa.bool_(),
                      "vlm_slideshow_p": pa.float32(), "vlm_camera_shake": pa.bool_(), "vlm_camera_shake_p": pa.float32()}  # fmt: skip
    for r, seconds in zip(rows, (2.0, 1.0, 3.0)):
        assert r["errors"] == [] and isinstance(r["caption_vlm"], str) and r["caption_vlm"]
        windows = int(np.ceil(seconds * 4 / 4))  # fps 4, window_frames 4
        # every window's caption and, for more than one window, the merge: at most max_new_tokens each
        calls = windows + (1 if windows > 1 else 0)
        assert 1 <= r["caption_vlm_tokens"] <= 6 * calls
        for q in QUESTIONS:
            p = r[f"vlm_{q}_p"]
            assert 0.0 <= p <= 1.0 and r[f"vlm_{q}"] == (p >= 0.5)
    alone = [s(sampled(s, [p])).drop_columns([schema.SAMPLES]).to_pylist()[0] for p in clips]
    for a, b in zip(alone, rows):
        assert a["caption_vlm"] == b["caption_vlm"] and a["caption_vlm_tokens"] == b["caption_vlm_tokens"]
        for q in QUESTIONS:
            # float32 sums over a padded batch differ in the last bits from one row alone
            assert a[f"vlm_{q}_p"] == pytest.approx(b[f"vlm_{q}_p"], abs=1e-5)


def test_long_clips_are_captioned_in_windows_then_merged_by_the_model(tiny_models, clips):
    s = stage(tiny_models)
    calls = {"caption": [], "text": []}
    caption, text = s.model.caption, s.model.text
    s.model.caption = lambda ws: calls["caption"].append([len(w) for w in ws]) or caption(ws)
    s.model.text = lambda ps: calls["text"].append(ps) or text(ps)
    row = s(sampled(s, [clips[2]])).to_pylist()[0]  # 3 s at 4 fps = 12 frames: three windows of 4
    assert calls["caption"] == [[4, 4, 4]] and len(calls["text"]) == 1
    first = caption([s.windows(np.stack(list(s.inputs(sampled(s, [clips[2]]))[0])))[0]])[0][0]
    assert f"1. {first}\n" in calls["text"][0][0] and "3. " in calls["text"][0][0]
    merged, _ = text(calls["text"][0])
    assert row["caption_vlm"] == merged[0]
    assert len(s.overview(np.zeros((12, 8, 8, 3), np.uint8))) == 4 and len(s.overview(np.zeros((3, 8, 8, 3), np.uint8))) == 4


def test_the_rubric_is_the_models_next_token_probability_of_yes_against_no(tiny_models, clips):
    """Batched with questions of other lengths (left padding), each answer equals the model's
    own distribution for that question alone."""
    import torch

    s = stage(tiny_models)
    frames = s.inputs(sampled(s, [clips[0]]))[0]
    m = s.model
    vision = []
    encode = m.model.get_video_features
    m.model.get_video_features = lambda *a, **k: vision.append(1) or encode(*a, **k)
    got = s.score_batch([frames])[0]
    assert m.reuse_video and len(vision) == 1  # the clip's window and the rubric's overview: one vision pass each
    m.model.get_video_features = encode
    video = s.overview(np.asarray(frames))
    for q, question in QUESTIONS.items():
        enc = m._encode([question], [video])
        with torch.no_grad():
            probs = torch.softmax(m.model(**enc).logits[0, -1].float(), -1)
        p = float(probs[s.yes].sum() / (probs[s.yes].sum() + probs[s.no].sum()))
        assert got[f"vlm_{q}_p"] == pytest.approx(p, abs=1e-5)  # batched and padded vs alone: float32 order
    yes = [m.tokenizer.decode([t]).strip().lower() for t in s.yes]
    no = [m.tokenizer.decode([t]).strip().lower() for t in s.no]
    assert all("yes".startswith(t) and t for t in yes) and all("no".startswith(t) and t for t in no)


def test_run_local_and_ray_select_on_the_rubric_and_rescore_another_rubric(tmp_path, tiny_models, three_shots, ray_session):
    from curate_cli.main import app
    from pipelines.run import run

    sets = ["clips.min_s=1", "clips.max_s=3", *vlm_sets(tiny_models, QUESTIONS), "scorers.caption_vlm.num_cpus=0.5"]
    run(load_config(None, ["executor=local", *sets]), [three_shots.path], str(tmp_path / "local"))
    run(load_config(None, ["executor=ray", *sets]), [three_shots.path], str(tmp_path / "ray"))
    key = lambda out: sorted(read_shards(str(out)).drop_columns(["clip_uri"]).to_pylist(), key=lambda r: r["clip_id"])  # noqa: E731
    local, ray_rows = key(tmp_path / "local"), key(tmp_path / "ray")
    assert len(local) == len(ray_rows) >= 2
    for a, b in zip(local, ray_rows):
        assert a["caption_vlm"] == b["caption_vlm"] and a["vlm_slideshow"] == b["vlm_slideshow"]
        # Ray's batches group clips differently: float32 sums over other paddings
        assert a["vlm_slideshow_p"] == pytest.approx(b["vlm_slideshow_p"], abs=1e-5)
    table = read_shards(str(tmp_path / "local"))
    assert table.schema.field("vlm_slideshow").type == pa.bool_() and table.schema.field("vlm_camera_shake_p").type == pa.float32()
    no = sum(1 for r in local if r["vlm_slideshow"] is False)
    r = runner.invoke(app, ["select", "-s", str(tmp_path / "local"), "-o", str(tmp_path / "sub"), "--where", "vlm_slideshow == false"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "sub" / "funnel.json").read_text())["output"]["clips"] == no
    # another rubric on the same OUT: the old question's columns go, the new one's come
    other = {"watermark": "Is there a watermark?"}
    r = runner.invoke(app, ["rescore", str(tmp_path / "local"), "--set", f"scorers.caption_vlm.questions={json.dumps(other)}",
                            "--set", "executor=local"])  # fmt: skip
    assert r.exit_code == 0, r.output
    again = read_shards(str(tmp_path / "local"))
    assert "vlm_watermark" in again.column_names and "vlm_slideshow" not in again.column_names
    assert again.column("caption_vlm").to_pylist() == table.column("caption_vlm").to_pylist()


def test_without_weights_skipped_loudly_with_the_download_line(tmp_path, three_shots):
    from pipelines.run import run

    sets = ["executor=local", "clips.min_s=1", "clips.max_s=3", "scorers.caption_vlm.enabled=true",
            "scorers.caption_vlm.model=Qwen/Qwen2-VL-2B-Instruct", f"scorers.caption_vlm.questions={json.dumps(QUESTIONS)}"]  # fmt: skip
    res = run(load_config(None, sets), [three_shots.path], str(tmp_path / "out"))
    assert "hf download Qwen/Qwen2-VL-2B-Instruct" in res.manifest["skipped_stages"]["caption_vlm"]
    rows = read_shards(str(tmp_path / "out")).to_pylist()
    assert rows and all(r["caption_vlm"] is None and r["caption_vlm_tokens"] is None for r in rows)
    from curate_cli.main import app

    r = runner.invoke(app, ["models", "list", "svd_vlm"])
    assert r.exit_code == 0 and "caption_vlm" in r.output and "Qwen2.5-VL-3B-Instruct" in r.output


@pytest.mark.parametrize("pkg,ref,extra", [
    ("transformers", ModelRef("caption_vblip", "video captioner (BLIP-2)", "hf", "Salesforce/blip2-opt-2.7b"), "models"),
    ("open_clip", ModelRef("clip", "image-text model", "open_clip", "ViT-L-14", "openai"), "models"),
    ("vllm", ModelRef("caption_vlm", "video-language model", "hf", "Qwen/Qwen2.5-VL-3B-Instruct", packages=(("vllm", "vllm"),)), "vllm"),
])  # fmt: skip
def test_a_missing_library_is_named_with_the_extra_that_brings_it(monkeypatch, pkg, ref, extra):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == pkg else real(name, *a))
    status = check(ref)
    assert not status.present and status.where == f"the Python package {pkg} is not installed"
    assert status.how == f"pip install 'curate[{extra}]'"


def test_the_llm_merges_the_vlm_caption_and_clip_reads_it():
    from scoring.caption_llm import LlmCaptioner
    from scoring.clip import ClipParams

    prompt = "Caption: {caption_vlm}. Short:"
    llm = LlmCaptioner(load_config(None, ["scorers.caption_llm.enabled=true", f"scorers.caption_llm.prompt='{prompt}'"]).scorers.caption_llm)
    t = pa.table({schema.CAPTION_VLM: ["a dog runs", None], schema.CAPTION_COCA: [None, "a cat"]})
    items = llm.inputs(t)
    assert items[0] == (None, None, "a dog runs") and items[1] is None  # the prompt never shows CoCa's
    llm.tokenizer = None  # no chat template: the prompt as written
    assert llm.render(*items[0]) == "Caption: a dog runs. Short:"
    assert "caption_vlm" in ClipParams().caption_columns


def test_questions_are_named_as_columns_can_be_and_recipes_start_from_a_base(tmp_path):
    with pytest.raises(ConfigError, match="scorers.caption_vlm.questions"):
        load_config(None, ["scorers.caption_vlm.questions={Bad Name: 'Is it?'}"])
    with pytest.raises(ConfigError, match="not ending in _p"):
        load_config(None, ["scorers.caption_vlm.questions={shaky_p: 'Is it?'}"])
    svd, vlm = load_config("svd"), load_config("svd_vlm")
    assert vlm.cuts == svd.cuts and vlm.clips == svd.clips and vlm.scorers.caption_coca.enabled is False
    assert vlm.scorers.caption_coca.model == svd.scorers.caption_coca.model  # merged, mapping by mapping
    (tmp_path / "a.yaml").write_text("base: ./b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text(f"base: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: svd\nclips: {max_s: 6}\n")
    c = load_config(tmp_path / "c.yaml")
    assert c.clips.max_s == 6 and c.clips.min_s == svd.clips.min_s and c.name == "svd"
