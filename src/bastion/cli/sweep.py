"""`bastion sweep SWEEP.yaml`: assess many models under many threat models (docs/sweep.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from bastion.cli.common import console
from bastion.cli.executors import AddressOpt, ExecutorOpt, make_executor
from bastion.cli.validate import prepare_dir
from bastion.errors import ConfigError

if TYPE_CHECKING:
    from bastion.scale.sweep import SweepSummary


def summary_table(summary: SweepSummary) -> Table:
    from bastion.scale.sweep import metric_columns

    cols = metric_columns(summary)
    table = Table(title=f"sweep: {len(summary.rows)} assessment(s), {summary.seconds:.1f} s")
    for col in ("pair", "status", "score", "findings", "warnings"):
        # the pair names the output folder: wrapped, never cut to "model__…"
        table.add_column(
            col,
            justify="left" if col in ("pair", "status") else "right",
            overflow="fold",
            min_width=len(max((r.pair for r in summary.rows), key=len, default="")) // 2
            if col == "pair"
            else None,
        )
    for col in cols:  # "evasion.robust_accuracy" → "evasion robust accuracy", wrapped
        table.add_column(col.replace(".", " ").replace("_", " "), justify="right", overflow="fold")
    for r in summary.rows:
        cells = [r.pair, r.status, f"{r.score:.1f}", str(r.findings), str(r.warnings)]
        cells += [f"{r.metrics[c]:.3f}" if c in r.metrics else "–" for c in cols]
        table.add_row(*cells)
    return table


def register(app: typer.Typer) -> None:
    @app.command("sweep")
    def sweep_cmd(
        sweep: Annotated[Path, typer.Argument(help="sweep YAML: models × threat_models (× data)")],
        out: Annotated[
            Path | None,
            typer.Option(help="output folder (default: `out:` in the file); reruns resume"),
        ] = None,
        executor: ExecutorOpt = "local",
        address: AddressOpt = None,
    ) -> None:
        """Assess every model under every threat model; one report per pair and a summary."""
        from bastion.scale.sweep import load_sweep, pairs, run_sweep

        cfg = load_sweep(sweep)
        runner = make_executor(executor, address)
        out_dir = out or (Path(cfg.out) if cfg.out else None)
        if out_dir is None:
            raise ConfigError("give --out DIR (or `out:` in the sweep file)")
        prepare_dir(out_dir, "--out")
        names = [p.name for p in pairs(cfg)]
        done = [n for n in names if (out_dir / n / "report.json").exists()]
        console.print(
            f"sweep: {len(cfg.models)} model(s) × {len(cfg.threat_models)} threat model(s)"
            + (f" × {len(cfg.data)} data set(s)" if cfg.data else "")
            + f" = {len(names)} assessment(s), {len(done)} already reported; "
            f"executor {executor}"
        )
        summary = run_sweep(cfg, out_dir, runner)
        console.print(summary_table(summary))
        console.print(
            f"summary: [bold]{out_dir / 'summary.json'}[/] and [bold]{out_dir / 'summary.md'}[/]"
        )
