"""Hardening what has no gradients: what applies to each model form, and refitting
scikit-learn estimators and XGBoost boosters from their own parameters.

- **Training-data sanitization** (:mod:`bastion.defenses.sanitize`) applies to every model
  that can be retrained: a tree ensemble has no hidden layer, so the detectors read the
  inputs, each feature scaled by its range in the input spec; exclusionary reclassification
  refits the model without the suspects.
- **Retraining from the model's own parameters** (recipe step ``standard``): a scikit-learn
  estimator (skops) is ``sklearn.base.clone``-d and refit on the (sanitized) training split
  with the labels it knows (``classes_``). An XGBoost model file records the trees, the
  objective and the number of boosting rounds but not the training hyper-parameters
  (learning rate, depth, regularisation and sampling are reset to XGBoost's defaults when
  the file is loaded), so those come from the recipe (``standard: {estimator_params: ...}``;
  ``{}`` accepts XGBoost's defaults) rather than being silently replaced.
- **Adversarial training and DP-SGD** (pgd_at, trades, fast_at, dp_sgd) optimise a
  differentiable torch model: *not applicable* to these models, with the reason.
- Models Bastion can query but not retrain (ONNX through onnxruntime, LightGBM, remote
  endpoints) have no applicable recipe.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.data.dataset import Dataset
from bastion.defenses.recipes import (
    AdversarialConfig,
    DPSGDConfig,
    Recipe,
    SanitizeConfig,
    StandardConfig,
)
from bastion.defenses.sanitize import SanitizeResult, sanitize
from bastion.errors import ConfigError, ModelError
from bastion.models.loaded import LoadedModel

REFITTABLE = ("skops", "xgboost")
XGBOOST_PARAMS_HINT = (
    "give them in a recipe file, e.g. `- sanitize` then "
    "`- standard: {estimator_params: {learning_rate: 0.1, max_depth: 3}}` "
    "(estimator_params: {} accepts XGBoost's defaults)"
)


class NotApplicable(ConfigError):
    """A recipe (or hardening at all) does not apply to this model form; says why."""


def _what(parent: LoadedModel) -> str:
    est = parent.estimator
    kind = f", {type(est).__name__}" if est is not None else ""
    return f"{parent.name} ({parent.form}{kind}, no gradients)"


def check_applicable(parent: LoadedModel, recipe: Recipe) -> None:
    """Raise :class:`NotApplicable` with the reason when ``recipe`` cannot harden ``parent``."""
    from bastion.defenses.rebuild import is_script

    train = recipe.training
    if parent.differentiable:
        if isinstance(train, StandardConfig) and train.estimator_params is not None:
            raise NotApplicable(
                f"standard: estimator_params is not applicable to {parent.name} ({parent.form}, "
                "a torch model): it sets hyper-parameters of refitted scikit-learn / XGBoost "
                "models; a torch model trains with epochs, batch_size and lr"
            )
        if isinstance(train, DPSGDConfig) and is_script(parent.module):
            raise NotApplicable(
                f"recipe step dp_sgd is not applicable to {parent.name} (TorchScript): Opacus "
                "computes per-sample gradients only for Python nn.Module layers; harden the model "
                "through its entry point (--entry-point module:function) for DP-SGD"
            )
        return
    if parent.form not in REFITTABLE:
        why = {
            "onnx-runtime": "an ONNX graph run by onnxruntime has no gradients and no training "
            "procedure Bastion can repeat: load it with --onnx-mode torch if onnx2torch converts "
            "it, or harden the model it was exported from",
            "lightgbm": "refitting LightGBM boosters is not supported: harden the model before "
            "exporting it, or use a scikit-learn estimator (skops) or XGBoost",
            "http": "a remote endpoint cannot be retrained from here",
        }.get(
            parent.form,
            "it offers neither gradients nor a training procedure to repeat",
        )
        raise NotApplicable(
            f"bastion harden does not apply to {parent.name} ({parent.form}): {why}"
        )
    if isinstance(train, (AdversarialConfig, DPSGDConfig)):
        raise NotApplicable(
            f"recipe step {train.name} is not applicable to {_what(parent)}: adversarial training "
            "and DP-SGD optimise a differentiable torch model. What applies to this model: "
            "sanitize (drop suspected poisons) and standard (refit from its own parameters), "
            "e.g. --recipe sanitize"
        )
    if train.init == "parent":
        raise NotApplicable(
            f"init: parent is not applicable to {_what(parent)}: it is refit from scratch with "
            "its own parameters (use init: scratch)"
        )


# --- refitting ------------------------------------------------------------------------------


def _as_2d(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().double().reshape(x.shape[0], -1).numpy()


@dataclass
class Refit:
    """How a gradient-free model is refit: an unfitted ``base`` estimator, the labels it
    knows (``classes``: the parent's ``classes_``, indexed by Bastion's label ids), the
    hyper-parameters used (recorded in provenance) and how to save a fitted copy."""

    form: str
    base: Any
    classes: np.ndarray | None
    params: dict[str, Any]
    save: Callable[[Any, Path], None]
    notes: list[str] = field(default_factory=list)

    def fit(self, data: Dataset) -> Any:
        from sklearn.base import clone

        est = clone(self.base)
        y = data.y.cpu().numpy()
        target = self.classes[y] if self.classes is not None else y
        try:
            est.fit(_as_2d(data.x), target)
        except ValueError as exc:
            raise ModelError(f"refitting {type(est).__name__} failed: {exc}") from None
        if self.classes is not None:
            got = np.asarray(getattr(est, "classes_", self.classes))
            if got.shape != self.classes.shape or not bool((got == self.classes).all()):
                raise ModelError(
                    f"the refit {type(est).__name__} knows the classes {got.tolist()}, the parent "
                    f"{self.classes.tolist()}: a class vanished from the training split (did "
                    "sanitization drop all of its rows?)"
                )
        return est

    def proba(self, est: Any, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, K) in Bastion's label order (one-hot for labels-only models)."""
        arr = _as_2d(x)
        if hasattr(est, "predict_proba"):
            return torch.from_numpy(np.asarray(est.predict_proba(arr), dtype=np.float32))
        labels = np.asarray(est.predict(arr))
        idx = np.searchsorted(self.classes, labels) if self.classes is not None else labels
        k = len(self.classes) if self.classes is not None else int(idx.max()) + 1
        return torch.nn.functional.one_hot(torch.from_numpy(idx).long(), k).float()

    def module(self, est: Any) -> nn.Module:
        return EstimatorModule(lambda x: self.proba(est, x))


class EstimatorModule(nn.Module):
    """A fitted estimator seen as a (non-differentiable) torch module answering
    log-probabilities, for the helpers that classify with ``model(x).argmax(1)``."""

    def __init__(self, proba: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.proba = proba

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.proba(x).clamp_min(1e-12)).to(x.device)


def _skops_refit(parent: LoadedModel, params: dict[str, Any] | None) -> Refit:
    import skops.io as sio
    from sklearn.base import clone

    est = parent.estimator
    if est is None:
        raise ModelError(f"{parent.name}: the skops file holds no estimator to refit")
    base = clone(est)
    if params:
        try:
            base.set_params(**params)
        except ValueError as exc:
            raise ConfigError(f"standard: estimator_params: {exc}") from None
    classes = np.asarray(est.classes_)
    used = {k: v for k, v in base.get_params(deep=False).items() if _jsonable(v)}
    notes = [
        f"refit sklearn.base.clone({type(est).__name__}) from its own parameters"
        + (f", with {sorted(params)} from the recipe" if params else "")
    ]
    return Refit("skops", base, classes, used, lambda e, p: sio.dump(e, p), notes)


def _xgboost_refit(parent: LoadedModel, params: dict[str, Any] | None) -> Refit:
    import xgboost as xgb

    if params is None:
        raise ConfigError(
            f"{parent.name} (XGBoost): the model file records the trees, the objective and the "
            "boosting rounds, but not the training hyper-parameters (learning rate, max depth, "
            "regularisation and sampling are reset to XGBoost's defaults on load), so a refit "
            f"would silently train another model: {XGBOOST_PARAMS_HINT}"
        )
    if parent.path is None:
        raise ModelError(f"{parent.name}: no XGBoost model file to read the parameters from")
    booster = xgb.Booster(model_file=str(parent.path))
    learner = json.loads(booster.save_config())["learner"]
    gb = learner.get("gradient_booster", {})
    trees = gb.get("gbtree_model_param") or gb.get("gbtree", {}).get("gbtree_model_param", {})
    recovered: dict[str, Any] = {
        "objective": learner["objective"]["name"],
        "n_estimators": int(booster.num_boosted_rounds()),
        "booster": learner.get("learner_train_param", {}).get("booster", "gbtree"),
        "num_parallel_tree": int(trees.get("num_parallel_tree", 1)),
    }
    known = set(xgb.XGBClassifier().get_params())
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"standard: estimator_params {unknown} are not XGBClassifier parameters "
            f"(e.g. {', '.join(sorted(known)[:8])}, ...)"
        )
    used = {**recovered, **params}
    base = xgb.XGBClassifier(**used)
    notes = [
        f"refit xgboost.XGBClassifier with the model file's objective {recovered['objective']} and "
        f"{recovered['n_estimators']} boosting rounds"
        + (
            f", and {sorted(params)} from the recipe"
            if params
            else ", XGBoost's defaults otherwise"
        )
    ]
    return Refit("xgboost", base, None, used, lambda e, p: e.save_model(str(p)), notes)


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


def refit_for(parent: LoadedModel, recipe: Recipe) -> Refit:
    """How to refit ``parent`` (a skops estimator or an XGBoost booster) for ``recipe``."""
    train = recipe.training
    params = train.estimator_params if isinstance(train, StandardConfig) else None
    if parent.form == "skops":
        return _skops_refit(parent, params)
    if parent.form == "xgboost":
        return _xgboost_refit(parent, params)
    raise NotApplicable(f"{parent.name} ({parent.form}) cannot be refit")


# --- the recipe for estimators ----------------------------------------------------------------


@dataclass
class EstimatorResult:
    """The refit estimator and what each step did (``recipe`` has every default resolved)."""

    estimator: Any
    recipe: Recipe
    sanitize: SanitizeResult | None = None
    train_seconds: float = 0.0
    sanitize_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.train_seconds + self.sanitize_seconds


def apply_estimator_recipe(
    recipe: Recipe,
    refit: Refit,
    data: Dataset,
    *,
    poison_rate: float = 0.05,
    poisoned: torch.Tensor | None = None,
    seed: int = 0,
) -> EstimatorResult:
    """Sanitize (if asked; detectors on the range-scaled inputs, reclassification by refit)
    then refit the estimator on what is kept."""
    from bastion.defenses.runner import resolve

    recipe = resolve(recipe, eps=0.0, poison_rate=poison_rate)
    result = EstimatorResult(estimator=None, recipe=recipe, notes=list(refit.notes))
    for step in recipe.data_steps:
        if isinstance(step, SanitizeConfig):
            start = time.perf_counter()
            trainer = (lambda ds: refit.module(refit.fit(ds))) if step.reclassify else None
            result.sanitize = sanitize(
                None,
                data,
                **step.detector_kwargs(poison_rate),
                train_fn=trainer,
                poisoned=poisoned,
                seed=seed,
            )
            data = result.sanitize.kept
            result.sanitize_seconds += time.perf_counter() - start
            result.notes.append(
                f"sanitize ({step.method}) dropped {result.sanitize.n_flagged} training samples "
                "(detectors read the range-scaled inputs: the model has no hidden layer)"
            )
    start = time.perf_counter()
    result.estimator = refit.fit(data)
    result.train_seconds = time.perf_counter() - start
    train = recipe.training
    defaults = StandardConfig()
    fields = ("epochs", "batch_size", "lr", "optimizer", "weight_decay")
    changed = [k for k in fields if getattr(train, k) != getattr(defaults, k)]
    if changed:
        result.notes.append(
            f"standard: {', '.join(changed)} do not apply to a {refit.form} model (ignored)"
        )
    return result


__all__ = [
    "REFITTABLE",
    "EstimatorModule",
    "EstimatorResult",
    "NotApplicable",
    "Refit",
    "apply_estimator_recipe",
    "check_applicable",
    "refit_for",
]
