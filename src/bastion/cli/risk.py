"""`bastion risk`: build the register from a system profile, move it with evidence, show,
edit, export and report it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bastion.cli.common import console
from bastion.cli.validate import prepare_file
from bastion.errors import ConfigError
from bastion.risk.catalogue import load_catalogue
from bastion.risk.evidence import load_guard_evaluation, load_report, update_from_report
from bastion.risk.export import export_csv, export_json
from bastion.risk.html import PRIORITY_ORDER, write_risk_report
from bastion.risk.register import RiskRegister, build_register, load_register, save_register
from bastion.risk.system import load_system

RegisterOpt = Annotated[Path, typer.Option("--register", "-r", help="register JSON file")]
PRIORITY_STYLE = {"high": "bold red", "medium": "yellow", "low": "green"}
SORTS = ("priority", "rpn", "id", "layer")


def register_table(register: RiskRegister, *, sort: str = "priority") -> Table:
    if sort not in SORTS:
        raise ConfigError(f"unknown sort {sort!r}: use one of {', '.join(SORTS)}")
    keys = {
        "priority": lambda r: (PRIORITY_ORDER[r.priority], -r.rpn, r.id),
        "rpn": lambda r: (-r.rpn, r.id),
        "id": lambda r: r.id,
        "layer": lambda r: (r.layer, r.id),
    }
    open_high = sum(r.priority == "high" and r.status == "open" for r in register.risks)
    table = Table(
        title=f"{register.system.name}: {len(register.risks)} risks, {open_high} high and open"
    )
    for col in ("id", "risk", "layer", "S", "O", "D", "RPN", "AP", "ISO L×I", "status", "owner"):
        table.add_column(col, justify="right" if col in ("S", "O", "D", "RPN") else "left")
    for r in sorted(register.risks, key=keys[sort]):
        table.add_row(
            r.id,
            r.title,
            r.layer,
            str(r.severity),
            str(r.occurrence),
            str(r.detection),
            str(r.rpn),
            f"[{PRIORITY_STYLE[r.priority]}]{r.priority}[/]",
            f"{r.likelihood}×{r.impact} {r.level}",
            r.status,
            r.owner,
        )
    return table


def register(app: typer.Typer) -> None:
    risk = typer.Typer(
        name="risk",
        help="Design-time risk register (FMEA, ISO 31000, MITRE ATLAS).",
        no_args_is_help=True,
    )
    app.add_typer(risk, name="risk")

    @risk.command("init")
    def init(
        system: Annotated[Path, typer.Option(help="system profile YAML")],
        out: Annotated[Path, typer.Option(help="register JSON to write")] = Path("register.json"),
        catalogue: Annotated[
            Path | None, typer.Option(help="custom threat catalogue YAML (default: packaged)")
        ] = None,
        force: Annotated[bool, typer.Option(help="overwrite an existing register")] = False,
    ) -> None:
        """Build a register from the system profile and the threat catalogue."""
        if out.exists() and not force:
            raise ConfigError(f"{out} exists: pass --force to rebuild it (its history is lost)")
        prepare_file(out, "--out")
        reg = build_register(load_system(system), load_catalogue(catalogue))
        save_register(reg, out)
        console.print(register_table(reg))
        for e in reg.excluded:
            console.print(f"[dim]not applicable: {e.id} {e.title} ({e.reason})[/]")
        console.print(f"register written to [bold]{out}[/]")

    @risk.command("update")
    def update(
        register_path: RegisterOpt = Path("register.json"),
        report: Annotated[Path | None, typer.Option(help="report.json (or its directory)")] = None,
        guard_eval: Annotated[
            Path | None, typer.Option(help="guard evaluation JSON (detector TPR/FPR)")
        ] = None,
        by: Annotated[
            str | None, typer.Option(help="who made the update (kept in history)")
        ] = None,
    ) -> None:
        """Move occurrence (and detection) to what the report (and guard evaluation) measured."""
        if report is None and guard_eval is None:
            raise ConfigError("nothing to update from: pass --report and/or --guard-eval")
        reg = load_register(register_path)
        report_file = None
        if report is not None:
            report_file = report / "report.json" if report.is_dir() else report
        rep = load_report(report_file) if report_file else None
        guard = load_guard_evaluation(guard_eval) if guard_eval else None
        result = update_from_report(
            reg, rep, report_path=report_file, guard=guard, guard_path=guard_eval, by=by
        )
        save_register(reg, register_path)
        sources = " and ".join(str(p) for p in (report_file, guard_eval) if p)
        table = Table(title=f"{len(result.changes)} change(s) from {sources}")
        for col in ("risk", "field", "old → new", "evidence"):
            table.add_column(col)
        for rid, c in result.changes:
            table.add_row(rid, c.field, f"{c.old} → {c.new}", c.reason)
        console.print(table)
        for rid, why in result.unmeasured:
            console.print(f"[dim]{rid}: unchanged ({why})[/]")
        console.print(f"register updated: [bold]{register_path}[/]")

    @risk.command("show")
    def show(
        register_path: RegisterOpt = Path("register.json"),
        sort: Annotated[str, typer.Option(help=f"order: {', '.join(SORTS)}")] = "priority",
    ) -> None:
        """Print the register as a table."""
        console.print(register_table(load_register(register_path), sort=sort))

    @risk.command("set")
    def set_cmd(
        risk_id: Annotated[str, typer.Argument(help="risk id, e.g. EVA-01")],
        register_path: RegisterOpt = Path("register.json"),
        owner: Annotated[str | None, typer.Option(help="new owner")] = None,
        status: Annotated[str | None, typer.Option(help="open | mitigated | accepted")] = None,
        reason: Annotated[str, typer.Option(help="why (required to accept a risk)")] = "",
        control: Annotated[str | None, typer.Option(help="control id, e.g. AML.M0003")] = None,
        state: Annotated[
            str, typer.Option(help="control state: planned | implemented | verified")
        ] = "implemented",
        name: Annotated[
            str | None, typer.Option(help="control name (to add a new control)")
        ] = None,
        by: Annotated[str | None, typer.Option(help="who made the change")] = None,
    ) -> None:
        """Change a risk's owner, status (with a reason) or controls; kept in its history."""
        reg = load_register(register_path)
        if owner is None and status is None and control is None:
            raise ConfigError("nothing to change: pass --owner, --status or --control")
        if owner is not None:
            reg.set_owner(risk_id, owner, by=by)
        if status is not None:
            reg.set_status(risk_id, status, reason=reason, by=by)
        if control is not None:
            reg.set_control(risk_id, control, state, name=name, by=by)
        save_register(reg, register_path)
        r = reg.get(risk_id)
        console.print(f"{r.id}: owner {r.owner}, status {r.status}, priority {r.priority}")

    @risk.command("export")
    def export(
        out: Annotated[Path, typer.Option(help="file to write")],
        register_path: RegisterOpt = Path("register.json"),
        format: Annotated[str, typer.Option("--format", help="json or csv")] = "",
    ) -> None:
        """Export the register with derived scores as JSON or CSV (format from --format or
        the file suffix)."""
        fmt = (format or out.suffix.lstrip(".")).lower()
        if fmt not in ("json", "csv"):
            raise ConfigError(
                f"unknown export format {fmt or out.suffix!r}: use --format json or csv"
            )
        reg = load_register(register_path)
        prepare_file(out, "--out")
        path = export_json(reg, out) if fmt == "json" else export_csv(reg, out)
        console.print(f"{len(reg.risks)} risks exported to [bold]{path}[/]")

    @risk.command("report")
    def report_cmd(
        register_path: RegisterOpt = Path("register.json"),
        out: Annotated[Path, typer.Option(help="HTML file to write")] = Path("risk-report.html"),
    ) -> None:
        """Write the HTML risk report with the likelihood × impact heat map."""
        reg = load_register(register_path)
        prepare_file(out, "--out")
        path = write_risk_report(reg, out)
        console.print(f"risk report written to [bold]{path}[/]")
