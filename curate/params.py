"""The base of every config model: unknown keys are errors (imported by config and scorers)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    # allow_inf_nan=False: `.inf`/`.nan` in YAML or --set is refused here, not written into
    # manifest.json as `Infinity` (not JSON)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)


class ModelParams(Strict):
    """Settings every model stage shares."""

    enabled: bool = False
    optional: bool = Field(True, description="missing weights: skip loudly (true) or fail the run (false)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(8, ge=1, description="clips per inference batch")
    actors: int = Field(1, ge=1, description="model replicas (Ray actors); one GPU each on a GPU cluster")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per replica (Ray)")
    num_gpus: float = Field(1.0, gt=0, le=1, description="share of a GPU per replica on a GPU cluster (Ray); "
                            "0.25 lets four model stages share one GPU")
