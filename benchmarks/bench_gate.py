"""Gate and attestation costs: policy parsing, gate evaluation on a large report, signing
and verifying an attestation over a large weight file. Prints a table.

    .venv/bin/python benchmarks/bench_gate.py [--weights-mb 200] [--findings 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bastion.assess.schema import DatasetRef, Finding, ModelRef, Report, ThreatModel
from bastion.gate.attest import create_attestation, verify_attestation
from bastion.gate.evaluate import evaluate
from bastion.gate.keys import generate_signing_key, load_public_key, load_signing_key
from bastion.gate.policy import compile_rule, policy_from_data
from bastion.risk.evidence import file_sha256, update_from_report
from bastion.risk.register import build_register
from bastion.risk.system import SystemProfile

RULES = [
    "robust_accuracy(attack=pgd, eps=0.1) >= 0.5",
    "robust_accuracy >= 0.1",
    "attack_success_rate(eps=8/255, norm=linf) <= 0.9",
    "membership.tpr_at_fpr(0.001) <= 0.05",
    "count(risks, priority=high, status=open) == 0",
    "sanity_warnings == 0",
    "score <= 60",
]


def timed(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def synthetic_report(n: int, model_sha: str, model_path: str) -> Report:
    findings = []
    for i in range(n):
        eps = (i % 10 + 1) / 100
        findings.append(
            Finding(
                probe="evasion",
                attack=("fgsm", "pgd", "apgd-ce")[i % 3],
                params={"norm": "inf", "eps": eps, "n": 500},
                metrics={
                    "clean_accuracy": 0.95,
                    "robust_accuracy": 0.9 - eps,
                    "attack_success_rate": eps,
                },
                severity=eps * 10,
            )
        )
    findings.append(
        Finding(
            probe="membership",
            attack="lira-online",
            severity=2,
            metrics={"tpr_at_0.1%_fpr": 0.01, "auc": 0.6},
        )
    )
    return Report(
        model=ModelRef(name="bench", sha256=model_sha, path=model_path),
        dataset=DatasetRef(name="synthetic", sha256="0" * 64, n=500, manifest={"num_classes": 10}),
        threat_model=ThreatModel(),
        findings=findings,
        score=40.0,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights-mb", type=int, default=200)
    ap.add_argument("--findings", type=int, default=2000)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = root / "model"
        model.mkdir()
        weights = model / "model.safetensors"
        with open(weights, "wb") as f:
            for _ in range(args.weights_mb):
                f.write(os.urandom(1 << 20))
        (model / "spec.json").write_text(json.dumps({"name": "bench"}))
        rows.append(
            (
                "parse + validate one rule (µs)",
                1e6 * timed(lambda: [compile_rule(r) for r in RULES], 200) / len(RULES),
            )
        )
        policy = policy_from_data(RULES)
        system = SystemProfile(
            name="bench",
            decision="x",
            exposure="public_api",
            data_sources=["own"],
            wrong_answer_cost="major",
        )
        register = build_register(system)
        sha = file_sha256(weights)
        report = synthetic_report(args.findings, sha, str(model))
        rows.append(
            (
                f"gate: {len(RULES)} rules over {len(report.findings)} findings (ms)",
                1e3 * timed(lambda: evaluate(policy, report, register), 20),
            )
        )
        rows.append(
            (
                f"register update from {len(report.findings)} findings (ms)",
                1e3 * timed(lambda: update_from_report(build_register(system), report), 20),
            )
        )
        report_path = root / "report.json"
        report_path.write_text(report.model_dump_json())
        files = generate_signing_key(root / "keys" / "signing.key")
        key, pub = load_signing_key(files.private), load_public_key(files.public)
        out = root / "att.json"
        t_sign = timed(
            lambda: create_attestation(report_path=report_path, policy=policy, key=key, out=out)
        )
        t_verify = timed(lambda: verify_attestation(out, pub))
        mb = args.weights_mb
        rows.append((f"attest (gate + hash {mb} MB + sign) (s)", t_sign))
        rows.append((f"verify (signature + re-hash {mb} MB) (s)", t_verify))
        rows.append(("verify throughput (MB/s)", mb / t_verify))
        assert verify_attestation(out, pub).ok
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value:,.2f}")


if __name__ == "__main__":
    main()
