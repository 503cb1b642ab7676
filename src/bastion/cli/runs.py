"""`bastion runs list|show`: the assessment runs in the record store."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from bastion.cli.common import console
from bastion.cli.validate import MAX_COUNT, count_check, id_check
from bastion.store.runs import get_run, list_runs


def register(app: typer.Typer) -> None:
    runs = typer.Typer(
        help="Assessment runs recorded in the store ($BASTION_DB).", no_args_is_help=True
    )

    @runs.command("list")
    def list_cmd(
        limit: Annotated[
            int, typer.Option(help="how many runs", callback=count_check(1, MAX_COUNT))
        ] = 20,
        db: Annotated[str | None, typer.Option(help="database URL")] = None,
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
        db: Annotated[str | None, typer.Option(help="database URL")] = None,
    ) -> None:
        """Print a run's report.json."""
        console.print_json(json.dumps(json.loads(get_run(run_id, url=db).report_json)))

    app.add_typer(runs, name="runs")
