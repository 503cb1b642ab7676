"""Evaluate a fitted guard: detection of adversarial examples and of shifted data, realised
false positives on fresh clean data, drift alerts, and (optionally) the extraction monitor
against simulated attackers and benign clients. ``bastion guard evaluate`` writes the result
as JSON.

Two attackers, side by side (``non_adaptive`` and ``adaptive`` in the JSON):

- ``non_adaptive``: PGD (or Square) against the model alone, which knows nothing of the
  guard. Its detection rates say how the detectors do on naive attacks and drifting traffic;
  they do **not** bound what an attacker who knows the guard achieves, and the risk register
  ignores them.
- ``adaptive``: :func:`~bastion.guard.adaptive.adaptive_attack`, which knows every detector
  and its threshold and searches the same ε-ball for a point that is misclassified and
  flagged by none (on by default where the model has gradients; ``status: not_measured``
  with the reason otherwise). The register's detection scores read these figures only
  (``adaptive.detectors[name].{tpr, fpr, auroc}``).

For both: per detector and for the whole guard (``guard``: any detector fires) the
detection rate on adversarial examples that flip a correct prediction, at the calibrated
threshold, and the **guarded robust accuracy**: the share of test points for which the
attacker finds no point within ε that the model misclassifies and no detector flags (the
clean point itself counts as a candidate).

The rows that calibrated the guard (``meta["calibration"]``, chosen by
:func:`~bastion.guard.calibration.choose_calibration`) are left out of the evaluation.

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
from typing import Literal

import torch
from pydantic import BaseModel, Field
from sklearn.metrics import roc_auc_score
from torch import nn

from bastion.assess.space import AttackSpace
from bastion.attacks.evasion import pgd
from bastion.data.box import Box
from bastion.data.dataset import Dataset
from bastion.data.spec import EpsMode
from bastion.errors import ConfigError
from bastion.guard.adaptive import METHODS, Method, adaptive_attack
from bastion.guard.calibration import evaluation_rows
from bastion.guard.config import CalibrationRecord
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


class AttackEvaluation(BaseModel):
    """One attacker's figures (see the module docstring). ``attack`` names the attack and
    its budget (``name``, ``norm``, ``eps``, ``eps_mode``, ``steps`` or ``queries``, ...);
    ``detectors`` the rates per detector and ``guard``; ``n_adversarial`` the adversarial
    examples they are measured on (correct clean prediction, wrong under attack)."""

    kind: Literal["non_adaptive", "adaptive"]
    status: Literal["measured", "not_measured"] = "measured"
    reason: str = ""
    attack: dict[str, float | int | str] = Field(default_factory=dict)
    gradients: dict[str, str] = Field(
        default_factory=dict, description="how the attack differentiated each detector"
    )
    n_attacked: int = 0
    n_adversarial: int = 0
    clean_accuracy: float | None = None
    robust_accuracy: float | None = Field(None, description="without the guard")
    guarded_robust_accuracy: float | None = Field(
        None, description="share of points with no misclassified, unflagged point found"
    )
    detectors: dict[str, Rates] = Field(default_factory=dict)


class GuardEvaluation(BaseModel):
    """What ``bastion guard evaluate`` writes: the ``non_adaptive`` and ``adaptive``
    attackers' figures (the first also holds ``drift`` and ``extraction`` rates when
    measured: their simulated attackers do not know the monitors either), the shifts, and
    the calibration record of the guard. ``detectors`` and ``attack`` (Python only) are the
    non-adaptive ones."""

    model_sha256: str | None = None
    data: str
    modality: str = "image"
    target_fpr: float
    n_clean: int
    realised_fpr: dict[str, float]
    calibration: CalibrationRecord | None = None
    non_adaptive: AttackEvaluation
    adaptive: AttackEvaluation
    shifts: dict[str, SetEvaluation] = Field(default_factory=dict)
    drift: DriftEvaluation | None = None
    extraction: ExtractionEvaluation | None = None
    detectors_not_built: dict[str, str] = Field(
        default_factory=dict, description="detectors of the config not built, and why"
    )
    notes: list[str] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def detectors(self) -> dict[str, Rates]:
        """The non-adaptive rates (what earlier versions called ``detectors``)."""
        return self.non_adaptive.detectors

    @property
    def attack(self) -> dict[str, float | int | str]:
        return self.non_adaptive.attack


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
    return space.to_x(adv_z, x), info


def _flags(guard: Guard, scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per sample: does any detector fire (the guard flags it, or worse)?"""
    return combined_score(scores, guard.thresholds) > 1


def _figures(
    guard: Guard,
    model: nn.Module | LoadedModel,
    x: torch.Tensor,
    y: torch.Tensor,
    adv: torch.Tensor,
    clean: dict[str, torch.Tensor],
    pred_clean: torch.Tensor,
) -> tuple[dict[str, Rates], dict[str, float | int]]:
    """Rates on the adversarial examples among ``adv`` and the accuracies over all points."""
    adv_scores = _scores(guard, adv)
    pred_adv = _predict(model, adv)
    correct = pred_clean == y
    fooled = pred_adv != y
    examples = correct & fooled
    flagged = _flags(guard, adv_scores)
    clean_flagged = _flags(guard, clean)
    success = (fooled & ~flagged) | (~correct & ~clean_flagged)
    rates = _rates(guard, clean, {k: v[examples] for k, v in adv_scores.items()})
    n = max(1, len(x))
    return rates, {
        "n_attacked": len(x),
        "n_adversarial": int(examples.sum()),
        "clean_accuracy": float(correct.float().mean()),
        "robust_accuracy": float((correct & ~fooled).float().mean()),
        "guarded_robust_accuracy": 1.0 - float(success.sum()) / n,
    }


def _adaptive(
    guard: Guard,
    model: nn.Module | LoadedModel,
    x: torch.Tensor,
    y: torch.Tensor,
    space: AttackSpace,
    clean: dict[str, torch.Tensor],
    pred_clean: torch.Tensor,
    *,
    eps: float,
    steps: int,
    restarts: int,
    method: Method,
    generator: torch.Generator,
) -> AttackEvaluation:
    module, loaded = _parts(model)
    attack: dict[str, float | int | str] = {
        "name": f"{method}-pgd",
        "method": method,
        "norm": "inf",
        "eps": eps,
        "eps_mode": space.mode,
        "eps_description": space.describe(eps),
        "steps": steps,
        "restarts": restarts,
        "step_size": f"10·ε/steps = {10 * eps / steps:g}, cosine decay to a tenth",
        "objective": "logit margin; hinge on every detector score relative to its threshold",
    }
    if module is None:
        form = loaded.form if loaded is not None else "this"
        return AttackEvaluation(
            kind="adaptive",
            status="not_measured",
            reason=f"the {form} model has no gradients: the adaptive attacker differentiates "
            "the model and the detectors (a score-based adaptive attack is not implemented), "
            "so no detection figure of this evaluation may lower a risk score",
            attack=attack,
        )
    start = time.perf_counter()
    parts, gradients = [], {}
    for i in range(0, len(x), 256):
        res = adaptive_attack(
            guard,
            module,
            x[i : i + 256],
            y[i : i + 256],
            space=space,
            eps=eps,
            steps=steps,
            restarts=restarts,
            method=method,
            generator=generator,
        )
        parts.append(res.x_adv)
        gradients = res.gradients
    adv = torch.cat(parts)
    rates, acc = _figures(guard, model, x, y, adv, clean, pred_clean)
    attack["seconds"] = round(time.perf_counter() - start, 2)
    return AttackEvaluation(
        kind="adaptive", attack=attack, gradients=gradients, detectors=rates, **acc
    )


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
    adaptive: bool = True,
    adaptive_steps: int = 100,
    adaptive_restarts: int = 2,
    adaptive_method: Method = "orthogonal",
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
    """Measure ``guard`` on the clean ``test`` data, less the rows that calibrated it:
    adversarial examples at ``eps`` (``eps_mode``: the input spec's default, relative for
    tabular data) against ``model`` (an ``nn.Module`` or a :class:`LoadedModel`) from the
    non-adaptive attack (PGD with ``steps``, or Square with ``queries``) and, with
    ``adaptive``, from the adaptive attacker (``adaptive_restarts`` × ``adaptive_steps``
    steps, ``adaptive_method``); the ``shifts`` (default: those of the data's modality),
    the drift test, and optionally the extraction monitor."""
    start = time.perf_counter()
    if adaptive_method not in METHODS:
        raise ConfigError(f"adaptive method must be one of {', '.join(METHODS)}")
    gen = torch.Generator().manual_seed(seed)
    spec = test.input_spec
    shifts = default_shifts(spec.modality) if shifts is None else tuple(shifts)
    for kind in shifts:
        check_shift(kind, spec.modality)
    record_doc = guard.meta.get("calibration")
    record = CalibrationRecord.model_validate(record_doc) if record_doc else None
    test, held_note = evaluation_rows(test, record)
    x, y = (test.x, test.y) if n is None else (test.x[:n], test.y[:n])
    clean = _scores(guard, x)
    thr = guard.thresholds
    realised = {k: float((v > thr[k]).float().mean()) for k, v in clean.items()}
    realised["guard"] = float((combined_score(clean, thr) > 1).float().mean())
    space = AttackSpace.build(spec, eps_mode)
    adv, attack = adversarial_examples(
        model, x, y, space, eps=eps, steps=steps, queries=queries, generator=gen
    )
    notes = [f"ε = {eps:g} ({space.describe(eps)})", held_note]
    pred_clean = _predict(model, x)
    success = torch.zeros(len(x), dtype=torch.bool)
    if adv is not None:
        success = (pred_clean == y) & (_predict(model, adv) != y)
    attack.update(
        n_attacked=int(len(x)),
        n_successful=int(success.sum()),
        success_rate=float(success.sum() / max(1, int((pred_clean == y).sum()))),
    )
    if adv is not None:
        rates, acc = _figures(guard, model, x, y, adv, clean, pred_clean)
        adv_ok = adv[success]
        non_adaptive = AttackEvaluation(kind="non_adaptive", attack=attack, detectors=rates, **acc)
    else:
        adv_ok = x[:0]
        notes.append(str(attack["reason"]))
        empty = {k: torch.zeros(0) for k in clean}
        non_adaptive = AttackEvaluation(
            kind="non_adaptive",
            status="not_measured",
            reason=str(attack["reason"]),
            attack=attack,
            detectors=_rates(guard, clean, empty),
            n_attacked=len(x),
        )
    if adaptive:
        adaptive_ev = _adaptive(
            guard,
            model,
            x,
            y,
            space,
            clean,
            pred_clean,
            eps=eps,
            steps=adaptive_steps,
            restarts=adaptive_restarts,
            method=adaptive_method,
            generator=gen,
        )
    else:
        adaptive_ev = AttackEvaluation(
            kind="adaptive",
            status="not_measured",
            reason="the adaptive evaluation was turned off (--no-adaptive): no detection "
            "figure of this evaluation may lower a risk score",
        )
    if adaptive_ev.status == "not_measured":
        notes.append(f"adaptive attacker not measured: {adaptive_ev.reason}")
    detectors = non_adaptive.detectors
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
        calibration=record,
        non_adaptive=non_adaptive,
        adaptive=adaptive_ev,
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
