"""`bastion demo`: the whole pipeline built so far, on the embedded digits data.

Stages come from the command modules in pipeline order: every ``bastion.cli.<name>``
module that defines ``demo_stage(ctx: DemoContext)`` gets a turn, after the base stage
(train + assess) has filled in the model and the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bastion.cli.common import console
from bastion.cli.validate import SeedOpt, prepare_dir
from bastion.data.dataset import DataBundle


@dataclass
class DemoContext:
    """What the demo stages share. Stages read ``model_dir``/``report_path`` and append
    (stage, outcome, path) rows to ``summary``; ``extra`` passes results between stages."""

    out: Path
    seed: int = 0
    data: DataBundle | None = None
    model_dir: Path | None = None
    report_path: Path | None = None
    summary: list[tuple[str, str, str]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, stage: str, outcome: str, path: Path | str = "") -> None:
        self.summary.append((stage, outcome, str(path)))


def run_demo(out: Path, *, seed: int = 0) -> DemoContext:
    from bastion.cli import command_modules

    ctx = DemoContext(out=out, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    for mod in command_modules():
        stage = getattr(mod, "demo_stage", None)
        if stage is None:
            continue
        name = mod.__name__.rsplit(".", 1)[-1]
        console.rule(f"[bold]{name}")
        start = time.perf_counter()
        stage(ctx)
        console.print(f"[dim]{name} took {time.perf_counter() - start:.1f} s[/]")
    return ctx


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out: Annotated[Path, typer.Option(help="where the demo writes its reports")] = Path(
            "bastion-demo"
        ),
        seed: SeedOpt = 0,
    ) -> None:
        """Run the whole pipeline on digits: train, assess, ... and write the reports under OUT."""
        prepare_dir(out, "--out")
        start = time.perf_counter()
        ctx = run_demo(out, seed=seed)
        table = Table(title=f"bastion demo — {time.perf_counter() - start:.0f} s")
        for col in ("stage", "result", "output"):
            table.add_column(col)
        for row in ctx.summary:
            table.add_row(*row)
        console.print(table)
