"""Hardening recipes named in YAML: a registry of step configurations and their composition.

A recipe is a list of steps: data steps (``sanitize``) first, then at most one training
step (``standard``, ``pgd_at``, ``trades``, ``fast_at``, ``dp_sgd``); a recipe without a
training step retrains with ``standard``. Accepted forms (on the command line or in a YAML
file)::

    trades                          # a name
    sanitize+trades                 # names joined by '+' (or ',')
    [sanitize, {trades: {beta: 3}}] # a YAML list of names or one-key mappings
    {name: dp_sgd, target_epsilon: 4}
    {steps: [sanitize, {name: fast_at, epochs: 5}]}

Every parameter is validated (pydantic, unknown keys refused) and an unknown step name
lists the valid ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, model_validator

from bastion.assess.schema import MAX_BUDGET
from bastion.config import read_yaml, validate
from bastion.errors import ConfigError


class StepConfig(BaseModel):
    """Base of every recipe step; ``name`` is the registry key. Numbers must be finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str
    kind: Literal["data", "train"] = "train"


class TrainingConfig(StepConfig):
    """What every training step shares. ``init: parent`` fine-tunes the parent's weights
    instead of training from scratch."""

    epochs: int = Field(10, ge=1, le=MAX_BUDGET)
    batch_size: int = Field(64, ge=1, le=MAX_BUDGET)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    init: Literal["scratch", "parent"] = "scratch"


class StandardConfig(TrainingConfig):
    """Natural (empirical risk minimisation) training; model selection on clean accuracy.

    For a gradient-free parent (scikit-learn, XGBoost) ``standard`` refits the model from
    its own hyper-parameters on the (sanitized) training split; ``estimator_params``
    overrides some of them (``set_params`` for scikit-learn, ``XGBClassifier`` arguments
    for XGBoost, whose model files do not record them). The torch-training fields (epochs,
    lr, ...) do not apply to those models."""

    name: Literal["standard"] = "standard"
    estimator_params: dict[str, Any] | None = Field(
        None, description="gradient-free models: hyper-parameters of the refitted estimator"
    )


class AdversarialConfig(TrainingConfig):
    """Shared by the adversarial-training steps. ``eps`` defaults to the threat model's
    largest ε; model selection on PGD accuracy over ``select_n`` validation points."""

    eps: float | None = Field(None, ge=0, description="training ε (default: the threat's max ε)")
    norm: Literal["inf", "2"] = "inf"
    select: Literal["robust", "clean", "last"] = "robust"
    select_eps: float | None = Field(
        None, ge=0, description="ε of the robust model selection (default: the threat's max ε)"
    )
    select_steps: int = Field(10, ge=1, le=MAX_BUDGET)
    select_n: int = Field(512, ge=1, le=MAX_BUDGET)


class PGDATConfig(AdversarialConfig):
    """PGD adversarial training (Madry et al. 2018)."""

    name: Literal["pgd_at"] = "pgd_at"
    steps: int = Field(7, ge=1, le=MAX_BUDGET)
    step_size: float | None = Field(None, gt=0, description="default 2.5·ε/steps")


class TradesConfig(AdversarialConfig):
    """TRADES (Zhang et al. 2019); ``beta`` = 0 is natural training."""

    name: Literal["trades"] = "trades"
    beta: float = Field(6.0, ge=0)
    steps: int = Field(10, ge=1, le=MAX_BUDGET)
    step_size: float | None = Field(None, gt=0, description="default 2.5·ε/steps")


class FastATConfig(AdversarialConfig):
    """Fast AT (Wong et al. 2020): FGSM from a random start, step ``alpha`` (default
    1.25·ε), cyclic learning rate peaking at ``lr``, roll-back/stop when the held-out PGD
    accuracy drops by more than ``collapse_drop``."""

    name: Literal["fast_at"] = "fast_at"
    alpha: float | None = Field(None, gt=0)
    lr: float = Field(5e-3, gt=0)
    peak_at: float = Field(0.4, gt=0, lt=1)
    collapse_drop: float = Field(0.2, gt=0, le=1)


class DPSGDConfig(TrainingConfig):
    """DP-SGD through Opacus: ``target_epsilon`` (or ``noise_multiplier``), ``delta``
    (default 1/n), ``max_grad_norm``; Poisson sampling only."""

    name: Literal["dp_sgd"] = "dp_sgd"
    target_epsilon: float | None = Field(8.0, gt=0)
    noise_multiplier: float | None = Field(None, gt=0)
    delta: float | None = Field(None, gt=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    sampler: str = "poisson"
    accountant: Literal["rdp", "prv", "gdp"] = "rdp"
    val_fraction: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="before")
    @classmethod
    def _one_budget(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("noise_multiplier") is not None:
            data = {**data, "target_epsilon": data.get("target_epsilon")}  # no default ε then
        return data


class SanitizeConfig(StepConfig):
    """Drop suspected poisons before training (see :mod:`bastion.defenses.sanitize`).
    ``expected_rate`` defaults to the threat model's ``poison_rate``."""

    name: Literal["sanitize"] = "sanitize"
    kind: Literal["data", "train"] = "data"
    method: Literal["activation", "spectral", "both"] = "activation"
    expected_rate: float | None = Field(None, gt=0, lt=1)
    removal_factor: float = Field(1.5, gt=0, description="spectral: drop this × expected_rate")
    margin_factor: float = Field(2.0, gt=0, description="activation: drop this × cluster share")
    n_components: int = Field(10, ge=1, le=MAX_BUDGET)
    size_threshold: float = Field(0.35, gt=0, lt=0.5)
    min_silhouette: float = Field(0.15, ge=-1, le=1)
    reclassify: bool = True
    reclassify_threshold: float = Field(0.5, gt=0, lt=1)

    def detector_kwargs(self, poison_rate: float) -> dict[str, object]:
        """The keyword arguments of :func:`bastion.defenses.sanitize.sanitize` this step sets."""
        return {
            "method": self.method,
            "expected_rate": self.expected_rate or poison_rate,
            "removal_factor": self.removal_factor,
            "margin_factor": self.margin_factor,
            "n_components": self.n_components,
            "size_threshold": self.size_threshold,
            "min_silhouette": self.min_silhouette,
            "reclassify_threshold": self.reclassify_threshold,
        }


RECIPES: dict[str, type[StepConfig]] = {
    "standard": StandardConfig,
    "pgd_at": PGDATConfig,
    "trades": TradesConfig,
    "fast_at": FastATConfig,
    "dp_sgd": DPSGDConfig,
    "sanitize": SanitizeConfig,
}
ALIASES = {
    "natural": "standard",
    "madry": "pgd_at",
    "pgd": "pgd_at",
    "fast": "fast_at",
    "dp": "dp_sgd",
    "dpsgd": "dp_sgd",
    "sanitise": "sanitize",
}


def recipe_names() -> list[str]:
    return sorted(RECIPES)


class Recipe(BaseModel):
    """An ordered, validated list of steps ending in exactly one training step."""

    model_config = ConfigDict(extra="forbid")
    steps: list[SerializeAsAny[StepConfig]]

    @property
    def name(self) -> str:
        return "+".join(s.name for s in self.steps)

    @property
    def training(self) -> TrainingConfig:
        return next(s for s in self.steps if isinstance(s, TrainingConfig))

    @property
    def data_steps(self) -> list[StepConfig]:
        return [s for s in self.steps if s.kind == "data"]

    def describe(self) -> list[dict]:
        """Every step with all its parameters (for provenance and reports)."""
        return [s.model_dump(mode="json") for s in self.steps]


def _key(name: object, source: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(
            f"{source}: a recipe step needs a name: choose from {', '.join(recipe_names())}"
        )
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in RECIPES:
        raise ConfigError(
            f"{source}: unknown recipe {name!r}: choose from {', '.join(recipe_names())}"
        )
    return key


def make_step(item: object, source: str = "recipe") -> StepConfig:
    """One step from a name, ``{name: ..., **params}`` or ``{name: {params}}``."""
    if isinstance(item, str):
        key, params = _key(item, source), {}
    elif isinstance(item, dict) and "name" in item:
        key, params = _key(item["name"], source), {k: v for k, v in item.items() if k != "name"}
    elif isinstance(item, dict) and len(item) == 1:
        ((name, params),) = item.items()
        key = _key(name, source)
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise ConfigError(f"{source}: parameters of {name!r} must be a mapping, got {params!r}")
    else:
        raise ConfigError(
            f"{source}: a recipe step must be a name, {{name: ..., param: ...}} or "
            f"{{name: {{param: ...}}}}, got {item!r}"
        )
    cls = RECIPES[key]
    return validate(cls, {**params, "name": key}, f"{source} ({key})")


def build_recipe(steps: list[StepConfig], source: str = "recipe") -> Recipe:
    """Check the composition rules and append ``standard`` when no step trains."""
    if not steps:
        raise ConfigError(
            f"{source}: the recipe is empty: name at least one of {', '.join(recipe_names())}"
        )
    train = [s for s in steps if s.kind == "train"]
    if len(train) > 1:
        raise ConfigError(
            f"{source}: a recipe trains once, but {' and '.join(s.name for s in train)} both "
            "train: keep one training step (data steps like sanitize may precede it)"
        )
    if train and steps[-1] is not train[0]:
        raise ConfigError(
            f"{source}: put data steps (sanitize) before the training step {train[0].name}"
        )
    names = [s.name for s in steps if s.kind == "data"]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: a data step appears twice: {names}")
    if not train:
        steps = [*steps, StandardConfig()]
    step = steps[-1]
    if isinstance(step, DPSGDConfig) and step.init == "parent":
        raise ConfigError(
            f"{source}: dp_sgd cannot start from the parent's weights: they were trained on the "
            "same data without privacy, so the ε would not hold. Use init: scratch"
        )
    if isinstance(step, DPSGDConfig) and (step.target_epsilon is None) == (
        step.noise_multiplier is None
    ):
        raise ConfigError(
            f"{source}: dp_sgd needs exactly one of target_epsilon or noise_multiplier"
        )
    return Recipe(steps=steps)


def _is_file(text: str) -> bool:
    """True when ``text`` names an existing file (a name too long for a path is not one)."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def parse_recipe(spec: object, source: str = "recipe") -> Recipe:
    """A recipe from a name, 'a+b', a YAML file path, or already-loaded YAML data."""
    if isinstance(spec, Path) or (
        isinstance(spec, str) and (spec.endswith((".yaml", ".yml")) or _is_file(spec))
    ):
        path = Path(spec)
        data = read_yaml(path)
        if data is None:
            raise ConfigError(f"{path}: the recipe file is empty")
        return parse_recipe(data, str(path))
    if isinstance(spec, str):
        parts = [p for p in spec.replace(",", "+").split("+") if p.strip()]
        return build_recipe([make_step(p, source) for p in parts], source)
    if isinstance(spec, dict) and set(spec) == {"steps"}:
        spec = spec["steps"]
    if isinstance(spec, dict):
        return build_recipe([make_step(spec, source)], source)
    if isinstance(spec, list):
        return build_recipe(
            [make_step(item, f"{source}[{i}]") for i, item in enumerate(spec)], source
        )
    raise ConfigError(
        f"{source}: a recipe must be a name, a list of steps or a mapping, got {spec!r}"
    )
