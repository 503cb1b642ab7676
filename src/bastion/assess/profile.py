"""A profile ties model, data and threat model together (YAML → pydantic)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bastion.assess.probe import TrainingRecipe
from bastion.assess.schema import MAX_BUDGET, ThreatModel
from bastion.config import load_yaml_model, read_yaml, validate
from bastion.data.loaders import DataOptions
from bastion.errors import ConfigError

MAX_SEED = 2**32 - 1  # numpy.random.seed and scikit-learn's random_state
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="random seed (0 … 2³²−1)")]


class RecipeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    epochs: int = Field(10, ge=1, le=MAX_BUDGET)
    batch_size: int = Field(64, ge=1, le=MAX_BUDGET)
    lr: float = Field(1e-3, gt=0)
    seed: Seed = 0

    def recipe(self) -> TrainingRecipe:
        return TrainingRecipe(**self.model_dump())


class Profile(BaseModel):
    """``bastion assess --profile p.yaml``. Relative paths resolve against the file's folder."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str | None = Field(None, description="a model path of any form, or an http(s) URL")
    entry_point: str | None = Field(None, description="module:function returning an nn.Module")
    weights: str | None = None
    data: str = Field("digits", min_length=1)
    data_root: str | None = None
    threat_model: ThreatModel | str = Field(default_factory=ThreatModel)
    training: RecipeConfig = Field(default_factory=RecipeConfig)
    device: str = Field("cpu", min_length=1)
    seed: Seed = 0
    out: str | None = None
    members: str | None = Field(
        None, description="the model's training rows: a file or train-split"
    )
    onnx_mode: Literal["auto", "torch", "runtime"] = "auto"
    trust: list[str] = Field(default_factory=list, description="skops types to trust")
    data_options: DataOptions = Field(
        default_factory=DataOptions, description="how to read a .npz/CSV (modality, bounds, …)"
    )

    @model_validator(mode="after")
    def _needs_model(self) -> Profile:
        if not self.model and not self.entry_point:
            raise ValueError("set `model` (a model directory) or `entry_point`")
        return self

    def resolved(self, base: Path) -> Profile:
        """Resolve relative paths and load a threat model given as a file name."""

        def rel(p: str | None) -> str | None:
            if p is None or Path(p).is_absolute() or (":" in p and not _exists(base / p)):
                return p
            candidate = base / p
            return str(candidate) if _exists(candidate) or p.endswith((".npz", ".csv", "/")) else p

        threat = self.threat_model
        if isinstance(threat, str):
            threat = load_yaml_model(ThreatModel, rel(threat) or threat)
        return self.model_copy(
            update={
                "model": rel(self.model),
                "weights": rel(self.weights),
                "members": rel(self.members),
                "data": rel(self.data) or self.data,
                "data_root": rel(self.data_root),
                "threat_model": threat,
                "out": str(base / self.out)
                if self.out and not Path(self.out).is_absolute()
                else self.out,
            }
        )


def _exists(path: Path) -> bool:
    """True when ``path`` exists (a name too long or otherwise invalid as a path does not)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a profile must be a mapping with at least `model:`")
    return validate(Profile, data, str(path)).resolved(path.parent)
