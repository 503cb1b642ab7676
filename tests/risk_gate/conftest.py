"""Fixtures for the risk register, gate and attestation tests: synthetic reports, the
example system profile, a signing key pair and one real (evasion-only) assessment."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bastion.assess.schema import DatasetRef, Finding, ModelRef, Report, SanityWarning, ThreatModel
from bastion.risk.register import RiskRegister, build_register
from bastion.risk.system import SystemProfile

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_SYSTEM = ROOT / "examples" / "system.yaml"
EXAMPLE_POLICY = ROOT / "examples" / "policy.yaml"


def evasion(attack: str, eps: float, robust: float, clean: float = 0.95) -> Finding:
    return Finding(
        probe="evasion",
        attack=attack,
        params={"norm": "inf", "n": 100, "eps": eps},
        metrics={
            "clean_accuracy": clean,
            "robust_accuracy": robust,
            "attack_success_rate": 1 - robust / clean,
        },
        severity=10 * (1 - robust / clean),
    )


def membership(attack: str, tpr_01: float, tpr_1: float, auc: float = 0.55) -> Finding:
    return Finding(
        probe="membership",
        attack=attack,
        params={"n_members": 450},
        metrics={
            "auc": auc,
            "tpr_at_0.1%_fpr": tpr_01,
            "tpr_at_1%_fpr": tpr_1,
            "tpr_at_fpr": tpr_01,
            "nonmembers": 450.0,
        },
        severity=1.0,
    )


def make_report(
    findings: list[Finding] | None = None,
    *,
    warnings: int = 0,
    score: float = 30.0,
    model_sha: str = "0" * 64,
    model_path: str | None = None,
) -> Report:
    return Report(
        model=ModelRef(name="m", sha256=model_sha, path=model_path),
        dataset=DatasetRef(
            name="digits",
            sha256="1" * 64,
            n=450,
            manifest={"num_classes": 10, "name": "digits", "split": "test"},
        ),
        threat_model=ThreatModel(),
        findings=findings if findings is not None else default_findings(),
        warnings=[SanityWarning(check=f"check{i}", message="masking?") for i in range(warnings)],
        score=score,
    )


def default_findings() -> list[Finding]:
    return [
        evasion("fgsm", 0.1, 0.80),
        evasion("pgd", 0.1, 0.72),
        evasion("pgd", 0.2, 0.20),
        membership("loss-threshold", 0.002, 0.012),
        membership("lira-online", 0.004, 0.02),
    ]


def write_report(report: Report, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.model_dump_json(indent=2))
    return path


@pytest.fixture()
def system() -> SystemProfile:
    from bastion.risk.system import load_system

    return load_system(EXAMPLE_SYSTEM)


@pytest.fixture()
def register(system) -> RiskRegister:
    return build_register(system)


@pytest.fixture()
def model_copy(digits_model_dir, tmp_path) -> Path:
    """A private copy of the session's digits model directory (tests tamper with it)."""
    dst = tmp_path / "model"
    shutil.copytree(digits_model_dir, dst)
    return dst


@pytest.fixture()
def key_pair(tmp_path):
    from bastion.gate.keys import generate_signing_key

    return generate_signing_key(tmp_path / "keys" / "signing.key")


@pytest.fixture(scope="session")
def real_report(digits_model_dir, digits, tmp_path_factory) -> Path:
    """report.json of a real, small evasion-only assessment of the digits model."""
    import torch

    from bastion.assess.probe import ProbeContext
    from bastion.assess.runner import finish, run_assessment
    from bastion.assess.schema import Budgets
    from bastion.models.io import load_model
    from bastion.progress import set_progress

    set_progress(False)
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("assess")
    threat = ThreatModel(
        attacks=["fgsm", "pgd"],
        eps=[0.1],
        curve_eps=[0.1],
        probes=["evasion"],
        budgets=Budgets(n_eval=32, pgd_steps=5),
    )
    ctx = ProbeContext(model=load_model(digits_model_dir), data=digits, threat=threat, out_dir=out)
    return finish(run_assessment(ctx), out)
