"""Evaluate a fitted guard: detection on PGD examples and on shifted data, realised false
positives on fresh clean data, drift alerts, and (optionally) the extraction monitor against
simulated attackers and benign clients. ``bastion guard evaluate`` writes the result as JSON;
the risk register reads ``detectors[name].{tpr, fpr, auroc}``."""

from __future__ import annotations

import logging
import time

import torch
from pydantic import BaseModel, Field
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn import functional as F

from bastion.attacks.evasion import pgd
from bastion.data.dataset import Dataset
from bastion.errors import BastionError
from bastion.guard.drift import DriftMonitor
from bastion.guard.guard import Guard

log = logging.getLogger(__name__)
SHIFTS = ("noise", "blur", "ood")


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
    target_fpr: float
    n_clean: int
    realised_fpr: dict[str, float]
    attack: dict[str, float | int | str]
    detectors: dict[str, Rates]
    shifts: dict[str, SetEvaluation] = Field(default_factory=dict)
    drift: DriftEvaluation | None = None
    extraction: ExtractionEvaluation | None = None
    seconds: float = 0.0


def _auroc(clean: torch.Tensor, other: torch.Tensor) -> float | None:
    if len(clean) == 0 or len(other) == 0:
        return None
    labels = [0] * len(clean) + [1] * len(other)
    return float(roc_auc_score(labels, torch.cat([clean, other]).double().numpy()))


def combined_score(scores: dict[str, torch.Tensor], thresholds: dict[str, float]) -> torch.Tensor:
    """One score per sample for the whole guard: max over detectors of score / threshold
    (> 1 exactly when at least one detector fires)."""
    ratios = [s / t if t > 0 else s - t + 1.0 for s, t in
              ((scores[k], thresholds[k]) for k in scores)]  # fmt: skip
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
            auroc=_auroc(clean[name], other[name]), n=len(other[name]),
        )  # fmt: skip
    c, o = (
        combined_score(clean, thr),
        combined_score(other, thr) if len(next(iter(other.values()))) else torch.zeros(0),
    )
    out["guard"] = Rates(
        tpr=float((o > 1).float().mean()) if len(o) else 0.0, fpr=float((c > 1).float().mean()),
        auroc=_auroc(c, o), n=len(o),
    )  # fmt: skip
    return out


def _scores(guard: Guard, x: torch.Tensor) -> dict[str, torch.Tensor]:
    parts = [guard.scores(x[i : i + 256]) for i in range(0, len(x), 256)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def shifted_inputs(
    kind: str, x: torch.Tensor, *, bounds: tuple[float, float], generator: torch.Generator,
    ood: torch.Tensor | None = None, noise_std: float = 0.1,
) -> tuple[torch.Tensor, str]:  # fmt: skip
    """Shifted copies of ``x``: ``noise`` (Gaussian, σ = ``noise_std`` of the range),
    ``blur`` (3×3 box filter) or ``ood`` (another dataset resized to ``x``'s shape)."""
    lo, hi = bounds
    if kind == "noise":
        noisy = x + noise_std * (hi - lo) * torch.randn(x.shape, generator=generator)
        return noisy.clamp(lo, hi), f"Gaussian noise, σ = {noise_std:g} of the range"
    if kind == "blur":
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        return F.avg_pool2d(padded, 3, 1), "3×3 box blur"
    if kind == "ood":
        if ood is None:
            raise BastionError("no out-of-distribution data given")
        other = ood
        if other.shape[1] != x.shape[1]:
            other = other.mean(1, keepdim=True).expand(-1, x.shape[1], -1, -1)
        other = F.interpolate(other, size=tuple(x.shape[2:]), mode="area")
        return other.clamp(lo, hi), "another dataset resized to the input shape"
    raise BastionError(f"unknown shift {kind!r}: use one of {', '.join(SHIFTS)}")


def default_ood(data_name: str, n: int) -> tuple[torch.Tensor | None, str]:
    """Another dataset for the ``ood`` shift: Fashion-MNIST for a digits model, digits for
    any other; None when it is not installed."""
    from bastion.data import load_dataset

    other = "digits" if data_name == "fashion-mnist" else "fashion-mnist"
    try:
        return load_dataset(other).test.x[:n], other
    except BastionError as exc:
        log.warning("no out-of-distribution set (%s): skipping the ood shift", exc)
        return None, other


def _drift(guard: Guard, sets: dict[str, torch.Tensor], clean: torch.Tensor, windows: int,
           gen: torch.Generator) -> DriftEvaluation | None:  # fmt: skip
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

    return DriftEvaluation(window=size, windows=windows, clean_alert_rate=alert_rate(clean),
                           shifted_alert_rate={k: alert_rate(v) for k, v in sets.items()})  # fmt: skip


def evaluate_guard(
    guard: Guard, module: nn.Module, test: Dataset, *, eps: float = 0.1, steps: int = 20,
    n: int | None = None, shifts: tuple[str, ...] = SHIFTS, ood: torch.Tensor | None = None,
    ood_name: str = "", extraction: bool = False, extraction_budget: int = 300,
    benign_clients: int = 20, benign_queries: int = 1000, drift_windows: int = 20, seed: int = 0,
) -> GuardEvaluation:  # fmt: skip
    """Measure ``guard`` on the clean ``test`` data (never seen when fitting): PGD L∞
    examples at ``eps`` against ``module`` (only those that flip a correct prediction
    count), the ``shifts``, the drift test, and optionally the extraction monitor."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    x, y = (test.x, test.y) if n is None else (test.x[:n], test.y[:n])
    clean = _scores(guard, x)
    thr = guard.thresholds
    realised = {k: float((v > thr[k]).float().mean()) for k, v in clean.items()}
    realised["guard"] = float((combined_score(clean, thr) > 1).float().mean())
    adv = torch.cat([
        pgd(module, x[i : i + 256], y[i : i + 256], eps=eps * (test.bounds[1] - test.bounds[0]),
            steps=steps, bounds=test.bounds, generator=gen)
        for i in range(0, len(x), 256)
    ])  # fmt: skip
    with torch.no_grad():
        pred_clean = torch.cat([module(x[i : i + 512]).argmax(1) for i in range(0, len(x), 512)])
        pred_adv = torch.cat([module(adv[i : i + 512]).argmax(1) for i in range(0, len(x), 512)])
    success = (pred_clean == y) & (pred_adv != y)
    adv_ok = adv[success]
    detectors = _rates(guard, clean, _scores(guard, adv_ok) if len(adv_ok) else
                       {k: torch.zeros(0) for k in clean})  # fmt: skip
    attack = {"name": "pgd", "norm": "inf", "eps": eps, "steps": steps, "n_attacked": int(len(x)),
              "n_successful": int(success.sum()),
              "success_rate": float(success.sum() / max(1, int((pred_clean == y).sum())))}  # fmt: skip
    shifted_sets: dict[str, torch.Tensor] = {"pgd": adv_ok}
    shift_evals = {}
    for kind in shifts:
        if kind == "ood":
            if ood is None:
                ood, ood_name = default_ood(test.name, len(x))
            if ood is None:
                continue
        xs, desc = shifted_inputs(kind, x, bounds=test.bounds, generator=gen, ood=ood)
        if kind == "ood" and ood_name:
            desc = f"{ood_name} resized to {tuple(x.shape[1:])}"
        shifted_sets[kind] = xs
        shift_evals[kind] = SetEvaluation(name=kind, description=desc, n=len(xs),
                                          detectors=_rates(guard, clean, _scores(guard, xs)))  # fmt: skip
    drift = _drift(guard, {k: v for k, v in shifted_sets.items() if len(v)}, x, drift_windows, gen)
    if drift is not None:
        detectors["drift"] = Rates(
            tpr=sum(drift.shifted_alert_rate.values()) / max(1, len(drift.shifted_alert_rate)),
            fpr=drift.clean_alert_rate, n=drift.windows,
        )  # fmt: skip
    ext = None
    if extraction and guard.extraction is not None:
        ext = evaluate_extraction(guard, x, budget=extraction_budget, n_clients=benign_clients,
                                  queries=benign_queries, bounds=test.bounds,
                                  num_classes=test.num_classes, seed=seed)  # fmt: skip
        runs = [r for v in ext.attackers.values() for r in v]
        detectors["extraction"] = Rates(
            tpr=sum(r is not None for r in runs) / max(1, len(runs)),
            fpr=ext.benign_false_alarms / max(1, ext.benign_clients), n=len(runs),
        )  # fmt: skip
    return GuardEvaluation(
        model_sha256=guard.meta.get("model_sha256"), data=test.name,
        target_fpr=guard.config.target_fpr, n_clean=len(x), realised_fpr=realised, attack=attack,
        detectors=detectors, shifts=shift_evals, drift=drift, extraction=ext,
        seconds=time.perf_counter() - start,
    )  # fmt: skip


def evaluate_extraction(
    guard: Guard, pool: torch.Tensor, *, budget: int = 300, n_clients: int = 20,
    queries: int = 1000, runs: int = 3, bounds: tuple[float, float] = (0.0, 1.0),
    num_classes: int = 10, seed: int = 0,
) -> ExtractionEvaluation:  # fmt: skip
    """Queries until alert for Jacobian-augmentation and random-noise attackers (``runs``
    seeds each, ``budget`` queries), and false alarms over ``n_clients`` benign clients of
    ``queries`` natural inputs from ``pool``. Simulated clients are forgotten afterwards."""
    from bastion.guard.simulate import benign_clients, extraction_attack

    attackers: dict[str, list[int | None]] = {}
    for source in ("jacobian", "noise"):
        attackers[source] = []
        for s in range(runs):
            run = extraction_attack(guard, pool, source=source, budget=budget, seed=seed + s,
                                    bounds=bounds, num_classes=num_classes)  # fmt: skip
            attackers[source].append(run.alert_at)
            guard.reset_client(run.client_id)
    benign = benign_clients(guard, pool, n_clients=n_clients, queries=queries, seed=seed)
    for run in benign:
        guard.reset_client(run.client_id)
    if guard.drift is not None:
        guard.drift.reset()  # the simulated traffic is not real traffic
    return ExtractionEvaluation(budget=budget, attackers=attackers, benign_clients=n_clients,
                                benign_queries=queries,
                                benign_false_alarms=sum(r.alerted for r in benign))  # fmt: skip
