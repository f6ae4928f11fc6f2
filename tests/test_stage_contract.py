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
from pipelines.curate import actor_class

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
