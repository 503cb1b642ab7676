"""Apply a :class:`~bastion.defenses.recipes.Recipe` to a parent model and its training data:
data steps (sanitize) first, then the one training step, resumable from checkpoints."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bastion.assess.space import AttackSpace
from bastion.data.dataset import Dataset
from bastion.data.spec import InputSpec
from bastion.defenses import adversarial as adv
from bastion.defenses.privacy import DPResult, dp_train
from bastion.defenses.rebuild import clone_module, reinitialise
from bastion.defenses.recipes import (
    AdversarialConfig,
    DPSGDConfig,
    FastATConfig,
    PGDATConfig,
    Recipe,
    SanitizeConfig,
    StandardConfig,
    TradesConfig,
    TrainingConfig,
)
from bastion.defenses.sanitize import SanitizeResult, sanitize
from bastion.errors import ConfigError
from bastion.models.train import TrainResult, train_model

log = logging.getLogger(__name__)


@dataclass
class HardenResult:
    """The hardened module and what each step did. ``recipe`` has every default resolved
    (ε from the threat model, ...), so it is what provenance records."""

    module: nn.Module
    recipe: Recipe
    train: TrainResult | None = None
    dp: DPResult | None = None
    sanitize: SanitizeResult | None = None
    train_seconds: float = 0.0
    sanitize_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.train_seconds + self.sanitize_seconds


def fresh_copy(module: nn.Module, seed: int) -> nn.Module:
    """A re-initialised copy of ``module``'s architecture (every layer's reset_parameters,
    seeded): zoo, entry-point, converted ONNX and TorchScript models alike
    (:func:`bastion.defenses.rebuild.reinitialise`)."""
    return reinitialise(module, seed)


def in_attack_space(data: Dataset, space: AttackSpace) -> Dataset:
    """``data`` mapped into the attack space ``z`` (:meth:`AttackSpace.to_z`), with the
    space's box as its bounds: where adversarial training perturbs by ε."""
    lo, hi = space.box.lo.expand(space.spec.shape), space.box.hi.expand(space.spec.shape)
    frozen = space.box.frozen
    spec = InputSpec(
        modality=space.spec.modality,
        shape=list(space.spec.shape),
        source_layout=space.spec.source_layout,
        lower=[float(v) for v in lo.flatten()],
        upper=[float(v) for v in hi.flatten()],
        frozen=[] if frozen is None else [int(i) for i in frozen.flatten().nonzero().flatten()],
        feature_names=space.spec.feature_names,
        bounds_source=f"attack space ({space.mode} ε)",
    )
    z = space.to_z(data.x).clamp(lo.to(data.x), hi.to(data.x))
    return dataclasses.replace(data, x=z, spec=spec, bounds=None, _sha=[])


def resolve(recipe: Recipe, *, eps: float, poison_rate: float) -> Recipe:
    """Fill defaults that depend on the threat model: training ε and expected poison rate."""
    steps = []
    for s in recipe.steps:
        if isinstance(s, AdversarialConfig) and s.eps is None:
            s = s.model_copy(update={"eps": eps})
        if isinstance(s, AdversarialConfig) and s.select_eps is None:
            s = s.model_copy(update={"select_eps": eps})
        if isinstance(s, SanitizeConfig) and s.expected_rate is None:
            s = s.model_copy(update={"expected_rate": poison_rate})
        steps.append(s)
    return Recipe(steps=steps)


def _optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def natural_trainer(
    template: nn.Module, cfg: TrainingConfig, *, seed: int, device: str | torch.device = "cpu"
):
    """A ``train_fn(dataset) -> module``: natural training of a fresh copy of ``template``
    with ``cfg``'s epochs, batch size and learning rate (for sanitization's models)."""

    def train_fn(data: Dataset) -> nn.Module:
        model = fresh_copy(template, seed)
        train_model(
            model,
            data,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            val_fraction=cfg.val_fraction,
            seed=seed,
            device=device,
            description="sanitize: reclassification model",
        )
        return model.eval()

    return train_fn


def train_step(
    model: nn.Module,
    data: Dataset,
    cfg: TrainingConfig,
    *,
    seed: int = 0,
    checkpoint: Path | None = None,
    device: str | torch.device = "cpu",
    space: AttackSpace | None = None,
) -> tuple[nn.Module, TrainResult | None, DPResult | None]:
    """Run one training step on ``model`` (in place, except DP-SGD may return a fixed copy).

    With ``space`` (the assessment's :class:`~bastion.assess.space.AttackSpace`) adversarial
    training runs where the assessment attacks: on ``space.to_z(x)`` through
    ``space.model(model)`` (which shares ``model``'s parameters), inside ``space.box``, so a
    relative ε means the same share of each feature's range as in the assessment, and
    frozen features stay fixed. Training examples are not rounded to whole values on
    integer features (the continuous ε-ball contains the rounded points)."""
    if isinstance(cfg, StandardConfig) and cfg.estimator_params is not None:
        raise ConfigError(
            "standard: estimator_params applies to gradient-free models (scikit-learn, XGBoost) "
            "only; a torch model trains with epochs, batch_size and lr"
        )
    bounds = data.bounds
    trained = model
    if isinstance(cfg, AdversarialConfig) and space is not None:
        bounds = space.box
        if not space.identity:
            model, data = space.model(model), in_attack_space(data, space)
    if isinstance(cfg, DPSGDConfig):
        model, dp = dp_train(
            model,
            data,
            target_epsilon=cfg.target_epsilon,
            noise_multiplier=cfg.noise_multiplier,
            delta=cfg.delta,
            max_grad_norm=cfg.max_grad_norm,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            optimizer=cfg.optimizer,
            momentum=cfg.momentum,
            sampler=cfg.sampler,
            accountant=cfg.accountant,
            seed=seed,
            checkpoint=checkpoint,
            device=device,
            description=f"DP-SGD (target ε={cfg.target_epsilon})",
        )
        return model, None, dp
    kwargs: dict = {}
    if isinstance(cfg, AdversarialConfig):
        if cfg.eps is None:
            raise ConfigError(
                f"{cfg.name}: eps is not set (resolve the recipe against a threat model)"
            )
        eps = cfg.eps
        common = {"eps": eps, "norm": cfg.norm, "bounds": bounds, "seed": seed}
        if isinstance(cfg, PGDATConfig):
            step = cfg.step_size or 2.5 * eps / cfg.steps
            kwargs["loss_fn"] = adv.pgd_at_loss(steps=cfg.steps, step_size=step, **common)
        elif isinstance(cfg, TradesConfig):
            step = cfg.step_size or 2.5 * eps / cfg.steps
            kwargs["loss_fn"] = adv.trades_loss(
                beta=cfg.beta, steps=cfg.steps, step_size=step, **common
            )
        elif isinstance(cfg, FastATConfig):
            if cfg.val_fraction == 0:
                raise ConfigError(
                    "fast_at needs val_fraction > 0: its held-out batch guards "
                    "against catastrophic overfitting"
                )
            kwargs["loss_fn"] = adv.fast_at_loss(alpha=cfg.alpha or 1.25 * eps, **common)
            kwargs["scheduler_fn"] = adv.cyclic_lr(cfg.peak_at)
            kwargs["stop_fn"] = adv.CollapseGuard(drop=cfg.collapse_drop)
        if cfg.select == "robust":
            sel_eps = cfg.select_eps if cfg.select_eps is not None else eps
            kwargs["select_fn"] = adv.robust_select(
                eps=sel_eps,
                steps=cfg.select_steps,
                n=cfg.select_n,
                norm=cfg.norm,
                bounds=bounds,
                seed=seed,
            )
            if cfg.val_fraction == 0:
                log.warning("%s: no validation split, so no robust model selection", cfg.name)
        elif cfg.select == "last":
            kwargs["select_fn"] = lambda m, x, y: 0.0  # every epoch ties: the last one wins
    elif not isinstance(cfg, StandardConfig):
        raise ConfigError(f"no trainer for recipe step {cfg.name!r}")
    result = train_model(
        model,
        data,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        val_fraction=cfg.val_fraction,
        seed=seed,
        optimizer=_optimizer(model, cfg),
        checkpoint=checkpoint,
        device=device,
        description=f"hardening: {cfg.name}",
        **kwargs,
    )
    return trained, result, None


def apply_recipe(
    recipe: Recipe,
    parent: nn.Module,
    data: Dataset,
    *,
    eps: float = 0.1,
    poison_rate: float = 0.05,
    feature_model: nn.Module | None = None,
    poisoned: torch.Tensor | None = None,
    seed: int = 0,
    workdir: Path | None = None,
    device: str | torch.device = "cpu",
    space: AttackSpace | None = None,
) -> HardenResult:
    """Sanitize (if asked) then train a child of ``parent``'s architecture on ``data``.

    ``feature_model`` (default: the parent, assumed trained on ``data``) supplies the
    activations sanitization reads (its inputs, range-scaled, when it exposes no hidden
    layer); ``poisoned`` (true poison indices into ``data``) adds precision/recall.
    ``workdir`` holds the training checkpoint: a rerun resumes from it. ``space``: where
    adversarial training perturbs (see :func:`train_step`); ``eps`` is in its units."""
    recipe = resolve(recipe, eps=eps, poison_rate=poison_rate)
    cfg = recipe.training
    result = HardenResult(module=parent, recipe=recipe)
    for step in recipe.data_steps:
        if isinstance(step, SanitizeConfig):
            start = time.perf_counter()
            trainer = (
                natural_trainer(parent, cfg, seed=seed, device=device) if step.reclassify else None
            )
            result.sanitize = sanitize(
                (feature_model or parent).to(device),
                data,
                **step.detector_kwargs(poison_rate),
                train_fn=trainer,
                poisoned=poisoned,
                seed=seed,
                device=device,
            )
            data = result.sanitize.kept
            result.sanitize_seconds += time.perf_counter() - start
            result.notes.append(
                f"sanitize ({step.method}) dropped {result.sanitize.n_flagged} training samples"
                + (
                    " (detectors read the range-scaled inputs: the model exposes no hidden layer)"
                    if result.sanitize.features == "input"
                    else ""
                )
            )
    if isinstance(cfg, DPSGDConfig) and recipe.data_steps:
        result.notes.append(
            "sanitization reads the private data outside the DP accounting: "
            "the reported ε covers the DP-SGD training only"
        )
    if cfg.init == "parent":
        model = clone_module(parent).train()
        torch.manual_seed(seed)
    else:
        model = fresh_copy(parent, seed)
    ckpt = workdir / f"{cfg.name}.ckpt" if workdir else None
    model, result.train, result.dp = train_step(
        model, data, cfg, seed=seed, checkpoint=ckpt, device=device, space=space
    )
    if isinstance(cfg, AdversarialConfig) and space is not None and not space.identity:
        result.notes.append(
            f"{cfg.name}: ε={cfg.eps:g} relative to each feature's range, as the assessment "
            "measures it (training in the range-normalised space)"
        )
    result.module = model.eval()
    result.train_seconds = (result.train or result.dp).seconds
    if result.dp is not None and result.dp.module_fixes:
        result.notes.append(
            "Opacus ModuleValidator replaced layers: " + "; ".join(result.dp.module_fixes)
        )
    if result.train is not None and result.train.stopped_early:
        result.notes.append(
            f"stopped after epoch {result.train.epochs_run}: held-out PGD accuracy collapsed "
            f"(catastrophic overfitting); rolled back to epoch {result.train.best_epoch + 1}"
        )
    return result


__all__ = [
    "HardenResult",
    "apply_recipe",
    "fresh_copy",
    "in_attack_space",
    "natural_trainer",
    "resolve",
    "train_step",
]
