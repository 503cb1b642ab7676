"""Evaluate a fitted guard: detection of adversarial examples and of shifted data, realised
false positives on fresh clean data, drift alerts, and (optionally) the extraction monitor
against simulated attackers and benign clients. ``bastion guard evaluate`` writes the result
as JSON; the risk register reads ``detectors[name].{tpr, fpr, auroc}``.

Adversarial examples are made in the attack space of the input spec
(:class:`~bastion.assess.space.AttackSpace`): ε relative to each feature's range for tabular
data (the default there), in input units for images; integer features are made whole again
and frozen features kept. PGD runs on a differentiable model, the score-based Square attack
on a gradient-free one (scikit-learn, XGBoost, onnxruntime).

The shifts follow the modality. Images: Gaussian noise, a 3×3 blur, another image dataset
resized to the input shape. Tabular rows: feature-wise Gaussian noise scaled to each
feature's range, feature scaling (each feature halved or doubled about its lower bound),
missing-value style corruption (a share of each row's features set to their lower bound, or
to their mean), and another dataset's rows where one with the same feature count is at hand
(``ood``), else rows drawn uniformly within the box (``uniform``). Every shifted row is put
back into the box (and integer features made whole): what reaches the guard behind the
gateway's validation. No image transform is applied to feature vectors.
"""

from __future__ import annotations

import logging
import time

import torch
from pydantic import BaseModel, Field
from sklearn.metrics import roc_auc_score
from torch import nn

from bastion.assess.space import AttackSpace
from bastion.attacks.evasion import pgd
from bastion.data.box import Box
from bastion.data.dataset import Dataset
from bastion.data.spec import EpsMode
from bastion.guard.drift import DriftMonitor
from bastion.guard.guard import Guard
from bastion.guard.shifts import check_shift, default_ood, default_shifts, shifted_inputs
from bastion.models.loaded import LoadedModel
from bastion.models.predict import predict_labels

log = logging.getLogger(__name__)


class Rates(BaseModel):
    """Detection of one detector (or of the whole guard) on one set of inputs: the share of
    them flagged (``tpr``) and of fresh clean inputs flagged (``fpr``), both at the
    calibrated threshold, and the threshold-free ``auroc`` (clean vs this set)."""

    tpr: float
    fpr: float
    auroc: float | None = None
    n: int = 0


class SetEvaluation(BaseModel):
    name: str
    description: str
    n: int
    detectors: dict[str, Rates]


class DriftEvaluation(BaseModel):
    window: int
    windows: int
    clean_alert_rate: float
    shifted_alert_rate: dict[str, float]


class ExtractionEvaluation(BaseModel):
    budget: int
    attackers: dict[str, list[int | None]] = Field(description="queries until alert per run")
    benign_clients: int
    benign_queries: int
    benign_false_alarms: int


class GuardEvaluation(BaseModel):
    """What ``bastion guard evaluate`` writes. ``detectors`` holds every detector's rates on
    successful PGD examples, plus ``guard`` (any detector fires = a flag or worse) and, when
    measured, ``drift`` and ``extraction``."""

    model_sha256: str | None = None
    data: str
    modality: str = "image"
    target_fpr: float
    n_clean: int
    realised_fpr: dict[str, float]
    attack: dict[str, float | int | str]
    detectors: dict[str, Rates]
    shifts: dict[str, SetEvaluation] = Field(default_factory=dict)
    drift: DriftEvaluation | None = None
    extraction: ExtractionEvaluation | None = None
    detectors_not_built: dict[str, str] = Field(
        default_factory=dict, description="detectors of the config not built, and why"
    )
    notes: list[str] = Field(default_factory=list)
    seconds: float = 0.0


def _auroc(clean: torch.Tensor, other: torch.Tensor) -> float | None:
    if len(clean) == 0 or len(other) == 0:
        return None
    labels = [0] * len(clean) + [1] * len(other)
    return float(roc_auc_score(labels, torch.cat([clean, other]).double().numpy()))


def combined_score(scores: dict[str, torch.Tensor], thresholds: dict[str, float]) -> torch.Tensor:
    """One score per sample for the whole guard: max over detectors of score / threshold
    (> 1 exactly when at least one detector fires)."""
    ratios = [
        s / t if t > 0 else s - t + 1.0 for s, t in ((scores[k], thresholds[k]) for k in scores)
    ]
    return torch.stack(ratios).max(0).values


def _rates(
    guard: Guard, clean: dict[str, torch.Tensor], other: dict[str, torch.Tensor]
) -> dict[str, Rates]:
    thr = guard.thresholds
    out = {}
    for name in clean:
        out[name] = Rates(
            tpr=float((other[name] > thr[name]).float().mean()) if len(other[name]) else 0.0,
            fpr=float((clean[name] > thr[name]).float().mean()),
            auroc=_auroc(clean[name], other[name]),
            n=len(other[name]),
        )
    c, o = (
        combined_score(clean, thr),
        combined_score(other, thr) if len(next(iter(other.values()))) else torch.zeros(0),
    )
    out["guard"] = Rates(
        tpr=float((o > 1).float().mean()) if len(o) else 0.0,
        fpr=float((c > 1).float().mean()),
        auroc=_auroc(c, o),
        n=len(o),
    )
    return out


def _scores(guard: Guard, x: torch.Tensor) -> dict[str, torch.Tensor]:
    parts = [guard.scores(x[i : i + 256]) for i in range(0, len(x), 256)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _drift(
    guard: Guard,
    sets: dict[str, torch.Tensor],
    clean: torch.Tensor,
    windows: int,
    gen: torch.Generator,
) -> DriftEvaluation | None:
    if guard.drift is None:
        return None
    monitor = DriftMonitor.from_state(*guard.drift.state())
    size = min(monitor.config.window, len(clean))

    def alert_rate(x: torch.Tensor) -> float:
        hits = 0
        for _ in range(windows):
            idx = torch.randint(len(x), (size,), generator=gen)
            monitor.reset()
            monitor.update(guard.tap(x[idx]).features)
            hits += monitor.status().alert
        return hits / windows

    return DriftEvaluation(
        window=size,
        windows=windows,
        clean_alert_rate=alert_rate(clean),
        shifted_alert_rate={k: alert_rate(v) for k, v in sets.items()},
    )


def _parts(model: nn.Module | LoadedModel) -> tuple[nn.Module | None, LoadedModel | None]:
    if isinstance(model, LoadedModel):
        return (model.module if model.differentiable else None), model
    return model, None


def _predict(model: nn.Module | LoadedModel, x: torch.Tensor) -> torch.Tensor:
    if isinstance(model, LoadedModel):
        return model.predict(x)
    return predict_labels(model, x, batch_size=512)


def adversarial_examples(
    model: nn.Module | LoadedModel,
    x: torch.Tensor,
    y: torch.Tensor,
    space: AttackSpace,
    *,
    eps: float,
    steps: int,
    queries: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor | None, dict[str, float | int | str]]:
    """Adversarial copies of ``x`` in ``space`` (PGD L∞ on a differentiable model, Square
    L∞ on one answering scores), in input units with integer features whole; and the
    attack's description. None (and the reason) when the model answers labels only."""
    module, loaded = _parts(model)
    info: dict[str, float | int | str] = {
        "norm": "inf",
        "eps": eps,
        "eps_mode": space.mode,
        "eps_description": space.describe(eps),
    }
    z = space.to_z(x)
    if module is not None:
        zmodel = space.model(module.eval())
        adv_z = torch.cat(
            [
                pgd(
                    zmodel,
                    z[i : i + 256],
                    y[i : i + 256],
                    eps=eps,
                    steps=steps,
                    bounds=space.box,
                    generator=generator,
                )
                for i in range(0, len(x), 256)
            ]
        )
        info.update(name="pgd", steps=steps)
    elif loaded is not None and loaded.capabilities.output == "scores":
        from bastion.attacks.square import square_attack
        from bastion.attacks.targets import model_target

        target = model_target(
            loaded, kind="scores", transform=None if space.identity else space.from_z
        )
        res = square_attack(
            target, z, y, eps=eps, max_queries=queries, bounds=space.box, generator=generator
        )
        adv_z = res.x_adv
        info.update(name="square", queries=queries)
        info["note"] = "the model has no gradients: the score-based Square attack is used"
    else:
        info.update(name="none", reason="the model answers labels only: no attack is run")
        return None, info
    adv_z = space.finalize(adv_z, z)
    return space.from_z(adv_z), info


def evaluate_guard(
    guard: Guard,
    model: nn.Module | LoadedModel,
    test: Dataset,
    *,
    eps: float = 0.1,
    eps_mode: EpsMode | None = None,
    steps: int = 20,
    queries: int = 300,
    n: int | None = None,
    shifts: tuple[str, ...] | None = None,
    ood: torch.Tensor | None = None,
    ood_name: str = "",
    extraction: bool = False,
    extraction_budget: int = 300,
    benign_clients: int = 20,
    benign_queries: int = 1000,
    drift_windows: int = 20,
    seed: int = 0,
) -> GuardEvaluation:
    """Measure ``guard`` on the clean ``test`` data (never seen when fitting): adversarial
    examples at ``eps`` (``eps_mode``: the input spec's default, relative for tabular data)
    against ``model`` (an ``nn.Module`` or a :class:`LoadedModel`; only examples that flip a
    correct prediction count), the ``shifts`` (default: those of the data's modality), the
    drift test, and optionally the extraction monitor."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    spec = test.input_spec
    shifts = default_shifts(spec.modality) if shifts is None else tuple(shifts)
    for kind in shifts:
        check_shift(kind, spec.modality)
    x, y = (test.x, test.y) if n is None else (test.x[:n], test.y[:n])
    clean = _scores(guard, x)
    thr = guard.thresholds
    realised = {k: float((v > thr[k]).float().mean()) for k, v in clean.items()}
    realised["guard"] = float((combined_score(clean, thr) > 1).float().mean())
    space = AttackSpace.build(spec, eps_mode)
    adv, attack = adversarial_examples(
        model, x, y, space, eps=eps, steps=steps, queries=queries, generator=gen
    )
    notes = [f"ε = {eps:g} ({space.describe(eps)})"]
    pred_clean = _predict(model, x)
    if adv is not None:
        success = (pred_clean == y) & (_predict(model, adv) != y)
        adv_ok = adv[success]
    else:
        success = torch.zeros(len(x), dtype=torch.bool)
        adv_ok = x[:0]
        notes.append(str(attack["reason"]))
    empty = {k: torch.zeros(0) for k in clean}
    detectors = _rates(guard, clean, _scores(guard, adv_ok) if len(adv_ok) else empty)
    attack.update(
        n_attacked=int(len(x)),
        n_successful=int(success.sum()),
        success_rate=float(success.sum() / max(1, int((pred_clean == y).sum()))),
    )
    shifted_sets: dict[str, torch.Tensor] = {"pgd": adv_ok}
    shift_evals = {}
    for kind in shifts:
        name, other = kind, None
        if kind == "ood":
            other, other_name = (ood, ood_name) if ood is not None else default_ood(test, len(x))
            if other is None and spec.modality == "image":
                continue
            if other is None:
                name = "uniform"
                notes.append(
                    f"no other dataset with {spec.n_features} features at hand: rows drawn "
                    "uniformly within the box stand in for out-of-distribution data"
                )
            if name in shift_evals:
                continue
        xs, desc = shifted_inputs(name, x, spec=spec, generator=gen, ood=other)
        if name == "ood" and other_name:
            desc = (
                f"{other_name} resized to {tuple(x.shape[1:])}"
                if spec.modality == "image"
                else f"{other_name} rows ({spec.n_features} features), put back into the box"
            )
        shifted_sets[name] = xs
        shift_evals[name] = SetEvaluation(
            name=name,
            description=desc,
            n=len(xs),
            detectors=_rates(guard, clean, _scores(guard, xs)),
        )
    drift = _drift(guard, {k: v for k, v in shifted_sets.items() if len(v)}, x, drift_windows, gen)
    if drift is not None:
        detectors["drift"] = Rates(
            tpr=sum(drift.shifted_alert_rate.values()) / max(1, len(drift.shifted_alert_rate)),
            fpr=drift.clean_alert_rate,
            n=drift.windows,
        )
    ext = None
    if extraction and guard.extraction is not None:
        ext = evaluate_extraction(
            guard,
            x,
            budget=extraction_budget,
            n_clients=benign_clients,
            queries=benign_queries,
            bounds=test.box,
            num_classes=test.num_classes,
            seed=seed,
        )
        runs = [r for v in ext.attackers.values() for r in v]
        detectors["extraction"] = Rates(
            tpr=sum(r is not None for r in runs) / max(1, len(runs)),
            fpr=ext.benign_false_alarms / max(1, ext.benign_clients),
            n=len(runs),
        )
    notes += [f"{k} not built: {v}" for k, v in guard.not_built.items()]
    return GuardEvaluation(
        model_sha256=guard.meta.get("model_sha256"),
        data=test.name,
        modality=spec.modality,
        target_fpr=guard.config.target_fpr,
        n_clean=len(x),
        realised_fpr=realised,
        attack=attack,
        detectors=detectors,
        shifts=shift_evals,
        drift=drift,
        extraction=ext,
        detectors_not_built=guard.not_built,
        notes=notes,
        seconds=time.perf_counter() - start,
    )


def evaluate_extraction(
    guard: Guard,
    pool: torch.Tensor,
    *,
    budget: int = 300,
    n_clients: int = 20,
    queries: int = 1000,
    runs: int = 3,
    bounds: tuple[float, float] | Box = (0.0, 1.0),
    num_classes: int = 10,
    seed: int = 0,
) -> ExtractionEvaluation:
    """Queries until alert for Jacobian-augmentation and random-noise attackers (``runs``
    seeds each, ``budget`` queries), and false alarms over ``n_clients`` benign clients of
    ``queries`` natural inputs from ``pool``. ``bounds``: a (low, high) pair or the data's
    per-feature :class:`Box`. Simulated clients are forgotten afterwards."""
    from bastion.guard.simulate import benign_clients, extraction_attack

    attackers: dict[str, list[int | None]] = {}
    for source in ("jacobian", "noise"):
        attackers[source] = []
        for s in range(runs):
            run = extraction_attack(
                guard,
                pool,
                source=source,
                budget=budget,
                seed=seed + s,
                bounds=bounds,
                num_classes=num_classes,
            )
            attackers[source].append(run.alert_at)
            guard.reset_client(run.client_id)
    benign = benign_clients(guard, pool, n_clients=n_clients, queries=queries, seed=seed)
    for run in benign:
        guard.reset_client(run.client_id)
    if guard.drift is not None:
        guard.drift.reset()  # the simulated traffic is not real traffic
    return ExtractionEvaluation(
        budget=budget,
        attackers=attackers,
        benign_clients=n_clients,
        benign_queries=queries,
        benign_false_alarms=sum(r.alerted for r in benign),
    )
