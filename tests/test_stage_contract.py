"""The Stage contract holds on Ray: setup() once per actor by the wiring, never by a stage itself;
hooks with defaults; resources from one place."""

from __future__ import annotations

import ast
import inspect
import textwrap

import pyarrow as pa
import pytest

from curate import schema
from curate.per_video import VideoStage
from curate.params import ModelParams
from curate.sample import SampleStage
from curate.stage import Resources, StageBase
from curate.registry import scorers
from pipelines.graph import actor_class

ALL_STAGES = [VideoStage, SampleStage, *scorers().values()]


@pytest.mark.parametrize("cls", ALL_STAGES, ids=lambda c: c.__name__)
def test_no_stage_sets_itself_up_in_call(cls):
    """A stage that needed `self.setup()` inside `__call__` passed locally and failed on Ray."""
    assert issubclass(cls, StageBase)
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls.__call__)))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "setup" and isinstance(n.func.value, ast.Name) and n.func.value.id == "self"]  # fmt: skip
    assert not calls, f"{cls.__name__}.__call__ calls self.setup()"


def test_hooks_have_defaults_and_resources_come_from_one_place():
    class Plain(StageBase):
        name = "plain"
        resources = Resources(num_cpus=2, batch_size=4)

    assert Plain.plans(None) == [] and Plain.model_refs(None) == []
    assert Plain.resources_for(None) == Resources(num_cpus=2, batch_size=4)
    p = ModelParams(batch_size=3, actors=2, num_cpus=0.5, device="auto")
    assert Plain.resources_for(p, gpus_available=False) == Resources(num_cpus=0.5, num_gpus=0.0, batch_size=3, actors=2)
    assert Plain.resources_for(p, gpus_available=True).num_gpus == 1.0
    assert Plain.resources_for(p.model_copy(update={"device": "cpu"}), gpus_available=True).num_gpus == 0.0
    assert Plain.resources_for(p.model_copy(update={"num_gpus": 0.25}), gpus_available=True).num_gpus == 0.25


class Counting(StageBase):
    """A toy scorer: it fails unless setup() ran, and reports how often it ran in its process."""

    name = "counting"
    resources = Resources(batch_size=2, actors=1)
    output_columns = (schema.ERRORS,)
    setups = 0

    def __init__(self, params=None):
        self.ready = False

    def setup(self) -> None:
        type(self).setups += 1
        self.ready = True

    def __call__(self, batch: pa.Table) -> pa.Table:
        assert self.ready, "called before setup()"
        import os

        n = batch.num_rows
        return batch.append_column("setups", pa.array([type(self).setups] * n)).append_column("pid", pa.array([os.getpid()] * n))


def test_the_ray_wiring_sets_an_actor_up_once(ray_session):
    from ray import cloudpickle  # Ray's own copy: what its workers unpickle with
    import ray

    cloudpickle.register_pickle_by_value(__import__(__name__))  # Ray workers cannot import tests/
    ds = ray.data.from_items([{"x": i} for i in range(10)], override_num_blocks=5)
    out = ds.map_batches(actor_class(Counting, ()), batch_size=2, batch_format="pyarrow",
                         compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1)).take_all()  # fmt: skip
    assert len(out) == 10
    assert {r["setups"] for r in out} == {1} and len({r["pid"] for r in out}) == 1  # one actor, one setup


MODEL_STAGES = ("caption_coca", "caption_vblip", "caption_llm", "clip")


@pytest.mark.parametrize("sets, cpus, expect", [
    ([f"scorers.{n}.enabled=false" for n in MODEL_STAGES], 2, "apart"),  # the demo without weights
    ([f"scorers.{n}.enabled=false" for n in MODEL_STAGES] + ["scorers.ocr.enabled=false"], 2, "apart"),  # no pools
    ([f"scorers.{n}.num_cpus=0.25" for n in MODEL_STAGES], 2, "fused"),  # pools hold every CPU
    ([f"scorers.{n}.num_cpus=0.25" for n in MODEL_STAGES], 8, "apart"),  # a bigger machine
    ([], 2, "short"),  # four model pools of one CPU each and OCR's on two CPUs: would wait forever
])  # fmt: skip
def test_the_per_video_stage_gets_tasks_of_its_own_where_the_cpus_allow(ray_session, capsys, sets, cpus, expect):
    """Ray Data fuses a task step into the actor pool after it when their remote arguments match:
    the per-video stage (cuts and clips) then ran only in the OCR actors, 8 inputs per call. The
    plan Ray optimises keeps it an operator of its own, one input per task, wherever a CPU is
    left beside the pools; where none is, fused is what can run; where the pools alone do not
    fit, the run refuses at once instead of waiting forever."""
    from curate.config import RECIPES, load_config
    from pipelines.graph import ResourcesShort, build_dataset
    from pipelines.run import build_stages

    cfg = load_config(RECIPES / "demo.yaml", sets)
    stages = build_stages(cfg, "/nonexistent-out")  # (the model stages' weights are not needed to plan)
    assert stages[0].cls is VideoStage and VideoStage.resources.batch_size == 1
    if expect == "short":
        with pytest.raises(ResourcesShort, match=r"need 5 CPUs .*caption_coca 1 CPU.*this Ray cluster has 2 CPUs"):
            build_dataset(cfg, [pa.table({"source_uri": [u]}) for u in ("a.mp4", "b.mp4")], stages, {"CPU": cpus})
        return
    capsys.readouterr()
    build_dataset(cfg, [pa.table({"source_uri": [u]}) for u in ("a.mp4", "b.mp4")], stages, {"CPU": cpus}).explain()  # lazy: planned, nothing runs
    physical = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    ops = [line.split("[", 1)[1].rstrip("]") for line in physical.splitlines() if "Operator[" in line]
    if expect == "apart":
        assert "MapBatches(VideoStage)" in ops, physical  # alone, not "...->MapBatches(OcrScorer)"
    else:
        assert any(op.startswith("MapBatches(VideoStage)->") for op in ops), physical
    if "scorers.ocr.enabled=false" not in sets:
        assert any(op.endswith("MapBatches(OcrScorer)") for op in ops) and "ActorPoolMapOperator" in physical


def test_model_pools_that_need_more_gpus_than_there_are_are_refused_and_can_share_one():
    """On one GPU, four model stages of a whole GPU each would start one pool and wait forever for
    the rest: refused, naming them; at a quarter of a GPU each they share it."""
    from curate.config import RECIPES, load_config
    from pipelines.graph import ResourcesShort, video_tasks_apart
    from pipelines.run import build_stages

    whole = build_stages(load_config(RECIPES / "demo.yaml"), "/nonexistent-out")
    with pytest.raises(ResourcesShort, match=r"4 GPUs .*caption_coca 1 CPU \+ 1 GPU.*has 16 CPUs and 1 GPUs"):
        video_tasks_apart(whole, {"CPU": 16, "GPU": 1})
    shared = build_stages(load_config(RECIPES / "demo.yaml", [f"scorers.{n}.num_gpus=0.25" for n in MODEL_STAGES]), "/x")
    assert video_tasks_apart(shared, {"CPU": 16, "GPU": 1})  # and the per-video stage apart
