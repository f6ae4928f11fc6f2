"""Model stages with tiny random models loaded through the real loading path; missing weights."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from curate import registry, schema
from curate.config import load_config
from curate.models import MissingModelError
from curate.sample import SampleParams, SampleStage
from curate.shards import read_shards
from curate.storage import resolve_inputs
from tests.conftest import assert_same_rows
from tests.tiny_models import scorer_sets

pytest.importorskip("torch", reason="model stages need the 'models' extra")


def scorers(m, sets=()):
    cfg = load_config(None, [*scorer_sets(m), *sets])
    from scoring.caption_coca import CocaCaptioner
    from scoring.caption_llm import LlmCaptioner
    from scoring.caption_vblip import VblipCaptioner
    from scoring.clip import ClipScorer

    s = cfg.scorers
    return [CocaCaptioner(s.caption_coca), VblipCaptioner(s.caption_vblip), LlmCaptioner(s.caption_llm), ClipScorer(s.clip)]


def clips_table(paths, n_frames=48, fps=24.0):
    return pa.table({
        schema.CLIP_URI: paths, schema.START_FRAME: [0] * len(paths), schema.END_FRAME: [n_frames] * len(paths),
        schema.FPS: [fps] * len(paths), schema.ERRORS: [[] for _ in paths],
    })  # fmt: skip


@pytest.fixture(scope="module")
def sampled(three_shots, text_video, motion_paths):
    """Three different clips, decoded once for every model stage."""
    return motion_paths


@pytest.fixture(scope="module")
def motion_paths(synth_dir):
    from curate.synth import Scene, make_video

    return [make_video(str(synth_dir / f"model_{k}.mp4"), [Scene(kind, 2.0, seed=40 + k, speed_px=2.0)]).path
            for k, kind in enumerate(["moving", "static", "text"])]  # fmt: skip


def run_stages(stages, paths):
    table = SampleStage(SampleParams(), [p for s in stages for p in s.plans(s.params)])(clips_table(paths))
    for s in stages:
        s.setup()
        table = s(table)
    return table.drop_columns([schema.SAMPLES]).to_pylist()


def test_model_columns_shapes_types_and_determinism(tiny_models, motion_paths):
    rows = run_stages(scorers(tiny_models), motion_paths)
    again = run_stages(scorers(tiny_models), motion_paths)
    assert rows == again  # deterministic, reloaded from disk
    for r in rows:
        assert r[schema.ERRORS] == []
        assert isinstance(r[schema.CAPTION_COCA], str) and r[schema.CAPTION_COCA]
        assert isinstance(r[schema.CAPTION_VBLIP], str) and r[schema.CAPTION_VBLIP]
        assert isinstance(r[schema.CAPTION_LLM], str)
        assert len(r[schema.CLIP_EMBEDDING]) == 32
        assert np.linalg.norm(np.asarray(r[schema.CLIP_EMBEDDING], np.float32)) == pytest.approx(1.0, abs=1e-2)
        assert -1.0 <= r[schema.CLIP_SIM] <= 1.0
        assert isinstance(r[schema.AESTHETIC_SCORE], float)
    table = pa.Table.from_pylist(rows)
    assert registry.conform(table).schema.field(schema.CLIP_EMBEDDING).type == pa.list_(pa.float16())
    # different frames, different embeddings
    assert rows[0][schema.CLIP_EMBEDDING] != rows[1][schema.CLIP_EMBEDDING]


def test_batching_equals_one_by_one(tiny_models, motion_paths):
    together = run_stages(scorers(tiny_models), motion_paths)
    alone = [run_stages(scorers(tiny_models), [p])[0] for p in motion_paths]
    for a, b in zip(together, alone):
        for col in (schema.CAPTION_COCA, schema.CAPTION_VBLIP, schema.CAPTION_LLM):
            assert a[col] == b[col], col
        assert a[schema.CLIP_SIM] == pytest.approx(b[schema.CLIP_SIM], abs=1e-5)
        assert a[schema.AESTHETIC_SCORE] == pytest.approx(b[schema.AESTHETIC_SCORE], abs=1e-5)


def test_checkpoint_is_really_loaded(tiny_models):
    """The stage's weights are the saved ones (not a fresh random init)."""
    import open_clip
    import torch
    from safetensors.torch import load_file

    clip = scorers(tiny_models)[3]
    clip.setup()
    saved = load_file(tiny_models["clip_ckpt"])
    for k, v in clip.model.state_dict().items():
        assert torch.equal(v.cpu(), saved[k]), k
    # and the aesthetic head is LAION's layout applied to the normalised embedding
    head_state = torch.load(tiny_models["aesthetic"], weights_only=True)
    emb = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1)
    x = emb
    for i in (0, 2, 4):
        x = x @ head_state[f"layers.{i}.weight"].T + head_state[f"layers.{i}.bias"]
    assert torch.allclose(clip.head(emb), x, atol=1e-6)
    assert isinstance(clip.model, (open_clip.CLIP, open_clip.CustomTextCLIP))  # built by open_clip's factory


def test_clip_sim_uses_the_first_present_caption(tiny_models, motion_paths):
    coca, _, _, clip = scorers(tiny_models, ["scorers.clip.caption_columns=[caption_vblip, caption_coca]"])
    rows = run_stages([coca, clip], motion_paths[:1])
    text_emb = clip.embed_texts([rows[0][schema.CAPTION_COCA]])[0]
    emb = np.asarray(rows[0][schema.CLIP_EMBEDDING], np.float32)
    assert rows[0][schema.CLIP_SIM] == pytest.approx(float(emb @ text_emb), abs=2e-3)  # float16 storage
    # no caption at all: no similarity, and no invented one
    (row,) = run_stages([clip], motion_paths[:1])
    assert row[schema.CLIP_SIM] is None and row[schema.AESTHETIC_SCORE] is not None


def test_llm_needs_a_caption_to_merge(tiny_models):
    llm = scorers(tiny_models)[2]
    llm.setup()
    table = pa.table({schema.CAPTION_COCA: ["a dog", None], schema.CAPTION_VBLIP: [None, None], schema.ERRORS: [[], []]})
    out = llm(table).to_pylist()
    assert isinstance(out[0][schema.CAPTION_LLM], str) and out[1][schema.CAPTION_LLM] is None


@pytest.mark.parametrize("stage, setting, needle", [
    ("clip", "scorers.clip.pretrained=/nope/clip.safetensors", "no file at /nope/clip.safetensors"),
    ("caption_coca", "scorers.caption_coca.model=coca_ViT-B-32;scorers.caption_coca.pretrained=laion2b_s13b_b90k",
     "not in the local Hugging Face cache"),
    ("caption_coca", "scorers.caption_coca.pretrained=no_such_tag", "open_clip knows no pretrained tag 'no_such_tag'"),
    ("caption_vblip", "scorers.caption_vblip.model=/nope/blip2", "no directory /nope/blip2"),
    ("caption_llm", "scorers.caption_llm.model=someone/not-cached-llm", "not in the local Hugging Face cache"),
])  # fmt: skip
def test_missing_weights_fail_with_a_clear_message(tiny_models, stage, setting, needle):
    names = ["caption_coca", "caption_vblip", "caption_llm", "clip"]
    s = scorers(tiny_models, setting.split(";"))[names.index(stage)]
    with pytest.raises(MissingModelError) as e:
        s.setup()
    assert stage in str(e.value) and needle in str(e.value)


def test_pipeline_with_tiny_models_and_optional_skip(tmp_path, tiny_models, three_shots):
    from pipelines.run import run

    base = ["executor=local", "clips.min_s=1", "clips.max_s=3"]
    res = run(load_config(None, [*base, *scorer_sets(tiny_models)]), resolve_inputs([three_shots.path]), str(tmp_path / "a"))
    rows = read_shards(str(tmp_path / "a")).to_pylist()
    assert rows and all(r[schema.CAPTION_LLM] is not None and r[schema.CLIP_SIM] is not None for r in rows)
    assert res.manifest["skipped_stages"] == {}

    # the LLM's weights are gone: optional -> skipped loudly, its column null, the skip recorded
    gone = [*base, *scorer_sets(tiny_models), "scorers.caption_llm.model=/nope/llm", "scorers.caption_llm.optional=true"]
    res = run(load_config(None, gone), resolve_inputs([three_shots.path]), str(tmp_path / "b"))
    rows = read_shards(str(tmp_path / "b")).to_pylist()
    assert all(r[schema.CAPTION_LLM] is None and r[schema.CAPTION_COCA] for r in rows)
    assert "/nope/llm" in res.manifest["skipped_stages"]["caption_llm"]
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["skipped_stages"].keys() == {"caption_llm"}

    # required -> the run refuses to start, naming what is missing
    with pytest.raises(MissingModelError, match="caption_llm"):
        run(load_config(None, [*gone[:-1]]), resolve_inputs([three_shots.path]), str(tmp_path / "c"))
    assert not (tmp_path / "c" / "shards").exists()


def test_models_cli(tmp_path, tiny_models):
    from curate_cli.main import app

    runner = CliRunner()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("scorers:\n  clip: {enabled: true, model: ViT-B-32, pretrained: /nope/vit.pt}\n")
    r = runner.invoke(app, ["models", "check", str(cfg)])
    assert r.exit_code == 1 and "clip" in r.output and "/nope/vit.pt" in r.output
    sets = [x for s in scorer_sets(tiny_models) for x in ("--set", s)]
    r = runner.invoke(app, ["models", "check", str(cfg), *sets])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["models", "list"])
    assert r.exit_code == 0 and "Salesforce/blip2-opt-2.7b" in r.output


@pytest.mark.slow
def test_model_stages_as_ray_actor_pools_match_local(tmp_path, tiny_models, three_shots, ray_session):
    from pipelines.run import run

    sets = ["clips.min_s=1", "clips.max_s=3", *scorer_sets(tiny_models)]
    sets += [f"scorers.{s}.num_cpus=0.25" for s in ("caption_coca", "caption_vblip", "caption_llm", "clip")]
    run(load_config(None, ["executor=local", *sets]), [three_shots.path], str(tmp_path / "local"))
    run(load_config(None, ["executor=ray", *sets]), [three_shots.path], str(tmp_path / "ray"))
    key = lambda out: sorted(read_shards(str(out)).drop_columns(["clip_uri"]).to_pylist(), key=lambda r: r["clip_id"])  # noqa: E731
    assert_same_rows(key(tmp_path / "ray"), key(tmp_path / "local"))  # floats to FLOAT_RTOL: batching differs


def test_open_clip_tags_resolve_without_importing_open_clip():
    """The preflight reads open_clip's pretrained table without its 5 s package import, nor
    torch's (the table's module imports safetensors.torch, 1.5-3 s), and answers as open_clip
    does (checked in a fresh interpreter, where nothing imported them yet); safetensors.torch
    still imports afterwards."""
    code = textwrap.dedent("""
        import json, sys
        from curate.models import _open_clip_pretrained_cfg
        tags = [("ViT-L-14", "openai"), ("coca_ViT-L-14", "mscoco_finetuned_laion2B-s13B-b90k"),
                ("ViT-B-32", "laion2b_s34b_b79k"), ("ViT-B-32", "no_such_tag")]
        mine = [_open_clip_pretrained_cfg(m, t) for m, t in tags]
        imported = "open_clip" in sys.modules or "torch" in sys.modules
        import safetensors.torch
        assert "torch" in sys.modules and hasattr(safetensors.torch, "load_file")
        import open_clip
        theirs = [open_clip.get_pretrained_cfg(m, t) for m, t in tags]
        print(json.dumps({"imported": imported, "same": mine == theirs, "hub": mine[0].get("hf_hub")}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"imported": False, "same": True, "hub": "timm/vit_large_patch14_clip_224.openai/"}
