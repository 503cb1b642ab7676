"""Hand-built assessment reports for the report tests (no model is trained)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import torch
from torch import nn

from bastion.assess.schema import (
    Budgets,
    DatasetRef,
    Finding,
    ModelRef,
    Report,
    SanityWarning,
    Skipped,
    ThreatModel,
)


def evasion(
    attack: str, robust: float, severity: float, *, eps: float = 0.1, n: int = 120
) -> Finding:
    return Finding(
        probe="evasion",
        attack=attack,
        params={"norm": "inf", "n": n, "eps_mode": "absolute", "eps": eps, "steps": 10},
        metrics={
            "clean_accuracy": 0.95,
            "robust_accuracy": robust,
            "attack_success_rate": 1 - robust / 0.95,
        },
        severity=severity,
    )


def membership(auc: float, tpr: float, severity: float) -> Finding:
    return Finding(
        probe="membership",
        attack="loss-threshold",
        params={"n_members": 300},
        metrics={"auc": auc, "tpr_at_fpr": tpr, "balanced_accuracy": 0.55},
        severity=severity,
        series={"fpr": [0.0, 0.001, 0.01, 0.1, 1.0], "tpr": [0.0, 0.004, 0.03, 0.2, 1.0]},
    )


def extraction(fidelity: float, severity: float) -> Finding:
    return Finding(
        probe="extraction",
        attack="knockoff-pool",
        params={"source": "pool", "answers": "scores", "budgets": [100, 1000], "surrogate": "mlp"},
        metrics={"fidelity": fidelity, "queries": 1000.0, "transfer_success_rate": 0.3},
        severity=severity,
        series={"budget": [100.0, 1000.0], "fidelity": [fidelity / 2, fidelity]},
    )


def make_report(
    findings: list[Finding],
    *,
    name: str = "tiny-cnn",
    sha: str = "a" * 64,
    score: float = 50.0,
    warnings: list[SanityWarning] | None = None,
    created: datetime | None = None,
    path: str | None = None,
) -> Report:
    return Report(
        model=ModelRef(name=name, sha256=sha, path=path),
        dataset=DatasetRef(name="digits", sha256="d" * 64, n=360),
        threat_model=ThreatModel(eps=[0.1], attacks=["fgsm", "pgd"], budgets=Budgets(n_eval=120)),
        findings=findings,
        skipped=[Skipped(probe="poisoning", reason="threat model: can_poison is false")],
        warnings=warnings or [],
        score=score,
        created=created or datetime.now(UTC),
    )


def earlier(hours: float = 1) -> datetime:
    return datetime.now(UTC) - timedelta(hours=hours)


def tiny_digits_model(digits) -> torch.nn.Module:
    """A linear classifier on the 8×8 digits, trained full-batch in well under a second."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = digits.train.x, digits.train.y
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()
