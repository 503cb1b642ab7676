"""`bastion gate`: check a release policy against a report (and the register); and the
issue-5 part of `bastion demo` (register → update → gate → signed attestation)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from bastion.cli.common import console
from bastion.cli.validate import prepare_file
from bastion.gate.evaluate import GateDecision, evaluate
from bastion.gate.junit import write_junit
from bastion.gate.policy import load_policy
from bastion.risk.evidence import file_sha256, load_report
from bastion.risk.register import load_register

if TYPE_CHECKING:
    from bastion.cli.demo import DemoContext

ComparisonOpt = Annotated[
    Path | None,
    typer.Option(
        help="comparison.json from `bastion harden` (for clean_accuracy_drop; default: the one "
        "in the assessed model directory)"
    ),
]
BaselineOpt = Annotated[
    Path | None,
    typer.Option(help="a baseline report.json (e.g. the parent's) for clean_accuracy_drop"),
]
VERDICT_STYLE = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "skip": "[yellow]skip[/]"}


def decision_table(decision: GateDecision) -> Table:
    table = Table(title=f"gate {decision.policy}: {decision.summary()}")
    for col in ("rule", "measured", "threshold", "verdict", "why"):
        table.add_column(col, overflow="fold")
    for r in decision.results:
        measured = "not measured" if r.measured is None else f"{r.measured:.4g}"
        table.add_row(
            r.name, measured, f"{r.op} {r.threshold:g}", VERDICT_STYLE[r.verdict], r.reason
        )
    return table


def print_decision(decision: GateDecision) -> None:
    """The decision table, then the probes the report did not run (never evidence: rules
    over them are not measured) and the clean-accuracy baseline used."""
    console.print(decision_table(decision))
    for s in decision.skipped:
        console.print(
            f"[dim]{s.probe}: {s.status.replace('_', ' ')}: {s.reason}[/]", highlight=False
        )
    if decision.clean_accuracy_drop is not None:
        console.print(
            f"clean-accuracy drop from {decision.clean_accuracy_drop.source}", highlight=False
        )


def run_gate(
    report: Path,
    policy: Path,
    register: Path | None = None,
    junit: Path | None = None,
    decision_json: Path | None = None,
    comparison: Path | None = None,
    baseline: Path | None = None,
) -> GateDecision:
    report_file = report / "report.json" if report.is_dir() else report
    pol = load_policy(policy)
    rep = load_report(report_file)
    reg = load_register(register) if register else None
    decision = evaluate(
        pol,
        rep,
        reg,
        report_sha256=file_sha256(report_file),
        comparison=comparison,
        baseline=baseline,
    )
    if junit:
        write_junit(decision, junit)
    if decision_json:
        decision_json.parent.mkdir(parents=True, exist_ok=True)
        decision_json.write_text(decision.model_dump_json(indent=2))
    return decision


def register(app: typer.Typer) -> None:
    @app.command("gate")
    def gate(
        report: Annotated[Path, typer.Option(help="report.json (or its directory)")],
        policy: Annotated[Path, typer.Option(help="policy YAML (rules)")],
        register: Annotated[
            Path | None,
            typer.Option("--register", help="risk register JSON (for count(risks, ...))"),
        ] = None,
        junit: Annotated[Path | None, typer.Option(help="write JUnit XML here (for CI)")] = None,
        json_out: Annotated[
            Path | None, typer.Option("--json", help="write the decision as JSON here")
        ] = None,
        comparison: ComparisonOpt = None,
        baseline: BaselineOpt = None,
    ) -> None:
        """Check every rule of the policy; exit 0 when all hold, 1 when any fails. A rule
        over a probe that did not run is not measured (it fails, or skips with
        `if_missing: skip`), with the reason the report gives."""
        for path, option in ((junit, "--junit"), (json_out, "--json")):
            if path is not None:
                prepare_file(path, option)
        decision = run_gate(report, policy, register, junit, json_out, comparison, baseline)
        print_decision(decision)
        if junit:
            console.print(f"JUnit XML written to [bold]{junit}[/]")
        if not decision.passed:
            raise typer.Exit(1)


def demo_stage(ctx: DemoContext) -> None:
    """Register from the example system profile, updated from the demo's report; the gate
    with the example policy; a signed attestation with a throwaway key."""
    from importlib import resources

    import yaml

    from bastion.gate.attest import create_attestation, verify_attestation
    from bastion.gate.keys import generate_signing_key, load_public_key, load_signing_key
    from bastion.gate.policy import policy_from_data
    from bastion.risk.evidence import update_from_report
    from bastion.risk.html import write_risk_report
    from bastion.risk.register import build_register, save_register
    from bastion.risk.system import SystemProfile

    out = ctx.out / "gate"
    out.mkdir(parents=True, exist_ok=True)
    examples = resources.files("bastion.gate").joinpath("examples")
    system_text = resources.files("bastion.risk").joinpath("examples/system.yaml").read_text()
    (out / "system.yaml").write_text(system_text)
    (out / "policy.yaml").write_text(examples.joinpath("policy.yaml").read_text())
    reg = build_register(SystemProfile.model_validate(yaml.safe_load(system_text)))
    reg.set_status(
        "ART-01",
        "mitigated",
        reason="weights are safetensors; Bastion refuses pickled code",
        by="demo",
    )
    if ctx.report_path is None:
        ctx.add("risk", "skipped: no report from the assessment stage")
        return
    result = update_from_report(reg, load_report(ctx.report_path), report_path=ctx.report_path)
    reg_path = save_register(reg, out / "register.json")
    html = write_risk_report(reg, out / "risk-report.html")
    high = sum(r.priority == "high" and r.status == "open" for r in reg.risks)
    console.print(
        f"register: {len(reg.risks)} risks, {len(result.changes)} moved by evidence, {high} high and open"
    )
    ctx.add("risk", f"{len(reg.risks)} risks, {high} high & open", html)

    decision = run_gate(
        ctx.report_path, out / "policy.yaml", reg_path, out / "gate-junit.xml", out / "gate.json"
    )
    print_decision(decision)
    ctx.add("gate", decision.summary(), out / "gate-junit.xml")

    keys = out / "throwaway-keys"
    files = generate_signing_key(keys / "signing.key", force=True)
    console.print(
        f"[yellow]signing with a throwaway Ed25519 key generated for this demo[/] "
        f"({files.private}); use `bastion keys signing-init` for a real one"
    )
    policy = policy_from_data(
        yaml.safe_load((out / "policy.yaml").read_text()), str(out / "policy.yaml")
    )
    att = create_attestation(
        report_path=ctx.report_path,
        policy=policy,
        key=load_signing_key(files.private),
        out=out / "attestation.dsse.json",
        model_dir=ctx.model_dir,
        register_path=reg_path,
    )
    check = verify_attestation(att.path, load_public_key(files.public))
    state = "verified" if check.ok else "DOES NOT VERIFY: " + "; ".join(check.problems)
    ctx.add("attest", f"{len(att.subjects)} subjects signed, {state}", att.path)
    ctx.extra["gate_decision"] = decision
    ctx.extra["attestation"] = att.path
