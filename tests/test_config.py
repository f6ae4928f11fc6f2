import pytest

from curate.config import ConfigError, load_config


def test_defaults_validate_and_hash_is_stable():
    a, b = load_config(None), load_config(None)
    assert a.hash() == b.hash()
    assert a.clips.min_s <= a.clips.max_s


def test_override_changes_value_and_hash():
    base = load_config(None)
    cfg = load_config(None, ["clips.max_s=4", "cuts.analysis_size=64"])
    assert cfg.clips.max_s == 4.0 and cfg.cuts.analysis_size == 64
    assert cfg.hash() != base.hash()


def test_hash_ignores_where_it_runs():
    assert load_config(None, ["executor=local"]).hash() == load_config(None, ["executor=ray"]).hash()
    # how widely a scorer runs (replicas, the CPUs and GPU share each reserves, OCR's threads)
    # does not change what it writes: an OUT resumes on a bigger cluster
    wide = ["scorers.clip.actors=4", "scorers.clip.num_cpus=0.5", "scorers.clip.num_gpus=0.25", "scorers.ocr.threads=2",
            "scorers.ocr.runtime=onnxruntime"]  # the same boxes as OpenVINO (tests/test_ocr.py)
    assert load_config(None, wide).hash() == load_config(None).hash()
    on = ["scorers.clip.enabled=true"]
    assert load_config(None, [*on, "scorers.clip.batch_size=3"]).hash() != load_config(None, on).hash()
    # a scorer that does not run changes nothing: its settings (and a release adding one) keep the hash
    assert load_config(None, ["scorers.clip.batch_size=3"]).hash() == load_config(None).hash()
    assert load_config(None, ["scorers.caption_vlm.questions={x: 'Is it?'}"]).hash() == load_config(None).hash()
    assert load_config(None, ["scorers.ocr.precision=bf16"]).hash() != load_config(None).hash()


@pytest.mark.parametrize(
    "yaml_text, needle",
    [
        pytest.param("clips:\n  max_seconds: 3\n", "clips.max_seconds: unknown key", id="unknown-nested"),
        pytest.param("bogus: 1\n", "bogus: unknown key", id="unknown-top"),
        pytest.param("clips:\n  min_s: 5\n  max_s: 2\n", "max_s", id="max-below-min"),
        pytest.param("cuts:\n  levels:\n    - fps: 2\n      detectors: [{kind: hash}]\n", "cuts.levels.0.detectors.0", id="bad-detector"),
        pytest.param("- a\n- b\n", "top level must be a mapping", id="not-a-mapping"),
    ],
)
def test_bad_config_names_the_key_and_file(tmp_path, yaml_text, needle):
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert needle in str(e.value)
    assert str(p) in str(e.value)


def test_missing_file_and_bad_override():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/x.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["clips.max_s"])
    with pytest.raises(ConfigError, match="clips.nope: unknown key"):
        load_config(None, ["clips.nope=1"])


def test_shipped_configs_load():
    from pathlib import Path

    for p in (Path(__file__).parents[1] / "curate" / "configs").glob("*.yaml"):
        load_config(p)


def test_recipes_are_named_or_given_as_paths(tmp_path):
    from curate.config import recipes, resolve_config

    assert {"demo", "svd", "subsets/demo_clean", "train/tiny", "train/base"} <= set(recipes())
    assert resolve_config("svd").name == "svd.yaml" and resolve_config("train/tiny.yaml").parent.name == "train"
    assert load_config("demo").hash() == load_config(resolve_config("demo")).hash()
    mine = tmp_path / "svd"  # a user's file of that name wins over the recipe
    mine.write_text("name: mine\n")
    assert load_config(str(mine)).name == "mine"
    with pytest.raises(ConfigError, match="nor a recipe of that name; recipes: demo, subsets/demo_clean, svd"):
        load_config("svdd")


def test_copy_and_smart_cannot_resize():
    from curate.config import ConfigError, load_config

    for mode in ("copy", "smart"):
        with pytest.raises(ConfigError, match="use mode: exact"):
            load_config(None, [f"clips.mode={mode}", "clips.short_side=320"])
    with pytest.raises(ConfigError, match="set one of them"):
        load_config(None, ["clips.short_side=320", "clips.max_side=640"])
    cfg = load_config(None, ["clips.short_side=320", "clips.max_fps=12"])
    assert cfg.clips.resizes and load_config("svd").clips.short_side == 576
