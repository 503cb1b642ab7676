"""`bastion runs list|show|diff|report`: the assessment runs in the record store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bastion.cli.common import console
from bastion.cli.validate import MAX_COUNT, count_check, id_check, number_check, prepare_file
from bastion.report.diff import TOLERANCE, RunComparison, compare_reports
from bastion.store.runs import get_run, list_runs

STATUS_STYLE = {
    "worse": "[bold red]REGRESSED[/]",
    "better": "[green]better[/]",
    "same": "[dim]same[/]",
    "changed": "[yellow]changed[/]",
    "new": "[cyan]new[/]",
    "gone": "[magenta]gone[/]",
}
DbOpt = Annotated[str | None, typer.Option(help="database URL")]


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.4g}"


def diff_table(cmp: RunComparison) -> Table:
    """One row per finding: severity before and after, status, the metrics that moved."""
    table = Table(
        title=f"{cmp.a.label} → {cmp.b.label}: score {cmp.a.score:g} → {cmp.b.score:g} "
        f"({cmp.score_status})"
    )
    for col in ("finding", "severity A", "severity B", "status", "metrics that moved"):
        table.add_column(col, overflow="fold")
    for f in cmp.findings:
        moved = [
            f"{m.name} {_num(m.a)} → {_num(m.b)} ({m.status})"
            for m in f.metrics
            if m.status in ("better", "worse", "changed")
        ]
        label = f.label + (f"\n[dim]{f.note}[/]" if f.note else "")
        table.add_row(
            label,
            _num(f.severity_a),
            _num(f.severity_b),
            STATUS_STYLE[f.status],
            "\n".join(moved),
            style="on #3a0d0d" if f.status == "worse" else None,
        )
    return table


def print_diff(cmp: RunComparison) -> None:
    console.print(diff_table(cmp))
    for note in cmp.notes:
        console.print(f"[yellow]note[/] {note}", highlight=False)
    for w in cmp.warnings_added:
        console.print(f"[bold red]new sanity warning[/] {w}", highlight=False)
    for w in cmp.warnings_removed:
        console.print(f"[green]sanity warning gone[/] {w}", highlight=False)
    if cmp.regressed:
        console.print(
            f"[bold red]{len(cmp.regressions)} regression(s)[/]: " + "; ".join(cmp.regressions)
        )
    else:
        console.print("[green]no regression[/]")


def register(app: typer.Typer) -> None:
    runs = typer.Typer(
        help="Assessment runs recorded in the store ($BASTION_DB).", no_args_is_help=True
    )

    @runs.command("list")
    def list_cmd(
        limit: Annotated[
            int, typer.Option(help="how many runs", callback=count_check(1, MAX_COUNT))
        ] = 20,
        db: DbOpt = None,
    ) -> None:
        """The most recent runs."""
        table = Table()
        for col in ("id", "created", "kind", "model", "dataset", "score", "findings", "out"):
            table.add_column(col)
        for r in list_runs(limit=limit, url=db):
            table.add_row(
                str(r.id),
                r.created.strftime("%Y-%m-%d %H:%M"),
                r.kind,
                r.model_name,
                r.dataset_name,
                f"{r.score:.1f}",
                str(r.n_findings),
                r.out_dir,
            )
        console.print(table)

    @runs.command("show")
    def show_cmd(
        run_id: Annotated[int, typer.Argument(help="the run id", callback=id_check())],
        db: DbOpt = None,
    ) -> None:
        """Print a run's report.json."""
        console.print_json(json.dumps(json.loads(get_run(run_id, url=db).report_json)))

    @runs.command("diff")
    def diff_cmd(
        a: Annotated[str, typer.Argument(help="the earlier run: run directory, report.json or id")],
        b: Annotated[str, typer.Argument(help="the later run: run directory, report.json or id")],
        json_out: Annotated[
            bool, typer.Option("--json", help="print the comparison as JSON")
        ] = False,
        fail_on_regression: Annotated[
            bool, typer.Option(help="exit 1 when B regresses against A (for CI)")
        ] = False,
        tolerance: Annotated[
            float,
            typer.Option(
                help="severity and score moves up to this are 'same'",
                callback=number_check(ge=0, what="tolerance"),
            ),
        ] = TOLERANCE,
        db: DbOpt = None,
    ) -> None:
        """What got better or worse from run A to run B, per finding and metric."""
        from bastion.report.runref import load_run

        ra, rb = load_run(a, url=db), load_run(b, url=db)
        cmp = compare_reports(
            ra.report, rb.report, label_a=ra.label, label_b=rb.label, tolerance=tolerance
        )
        if json_out:
            typer.echo(cmp.model_dump_json(indent=2))
        else:
            print_diff(cmp)
        if fail_on_regression and cmp.regressed:
            raise typer.Exit(1)

    @runs.command("report")
    def report_cmd(
        run: Annotated[str, typer.Argument(help="the run: run directory, report.json or id")],
        policy: Annotated[
            Path | None, typer.Option(help="release policy YAML: the summary gives its verdict")
        ] = None,
        register: Annotated[
            Path | None,
            typer.Option("--register", help="risk register JSON (for count(risks, ...))"),
        ] = None,
        previous: Annotated[
            str | None,
            typer.Option(help="compare with this run (default: the model's previous one)"),
        ] = None,
        out: Annotated[
            Path | None, typer.Option(help="write here (default: report.html in the run dir)")
        ] = None,
        db: DbOpt = None,
    ) -> None:
        """Render a run's report.html again: with the verdict against a policy, and what
        changed since the model's previous recorded assessment."""
        from bastion.report.html import write_report_html
        from bastion.report.previous import since_previous
        from bastion.report.runref import load_run

        ref = load_run(run, url=db)
        decision = None
        if policy is not None:
            from bastion.gate.evaluate import evaluate
            from bastion.gate.policy import load_policy
            from bastion.risk.register import load_register

            reg = load_register(register) if register else None
            decision = evaluate(load_policy(policy), ref.report, reg)
        if previous is not None:
            prev = load_run(previous, url=db)
            comparison = compare_reports(
                prev.report, ref.report, label_a=prev.label, label_b="this run"
            )
        else:
            comparison = since_previous(ref.report, url=db, exclude_id=ref.run_id)
        target = out or (ref.out_dir or Path(".")) / "report.html"
        prepare_file(target, "--out")
        path = write_report_html(
            ref.report,
            target.parent,
            decision=decision,
            comparison=comparison,
            path=target,
            run_dir=ref.out_dir,
        )
        if decision is not None:
            console.print(f"policy {decision.policy}: {decision.summary()}", highlight=False)
        console.print(f"report: [bold]{path}[/]")

    app.add_typer(runs, name="runs")
