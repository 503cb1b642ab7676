"""`bastion scan PATH…`: static analysis of model files (see :mod:`bastion.scan.engine`).

    bastion scan PATH… [--format table|json|sarif] [--output FILE] [--fail-on high]
                 [--profile sklearn --profile joblib …]

Nothing is unpickled, imported or executed. Exit 0 when no finding reaches ``--fail-on``
(default ``high``: what Bastion's own loaders refuse), 1 when one does or a file could not be
read, 2 on a usage error.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bastion.cli.common import console, err_console
from bastion.cli.validate import choice_check, prepare_file
from bastion.errors import ConfigError

FORMATS = ("table", "json", "sarif")
SEVERITIES = ("low", "medium", "high", "critical")
_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan"}


def _profiles() -> list[str]:
    from bastion.scan import allowlist

    names = getattr(allowlist, "PROFILES", None)
    return sorted(names) if names else []


def _profile_check(ctx: typer.Context, param: typer.CallbackParam, value: list[str] | None):
    valid = _profiles()
    if valid:
        return choice_check(valid, "allowlist profile")(ctx, param, value)
    return value


def _table(report) -> Table:
    table = Table(title="bastion scan", show_lines=False)
    for col in ("file", "format", "severity", "rule", "symbol", "member@offset", "message"):
        table.add_column(col, overflow="fold")
    for r in report.files:
        formats = ",".join(r.formats)
        if r.error:
            table.add_row(r.path, formats, "[red]error[/]", "-", "-", "-", r.error)
        for f in r.findings:
            member = f.location[len(r.path) + 1 :] if f.location.startswith(r.path + "!") else ""
            where = (member or "-") + (f"@{f.offset}" if f.offset is not None else "")
            sev = f.severity.value
            table.add_row(
                r.path,
                f.format,
                f"[{_STYLE[sev]}]{sev}[/]",
                f.rule,
                f.symbol or "",
                where,
                f.message,
            )
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    def scan(
        paths: Annotated[
            list[Path], typer.Argument(help="model files or folders (walked recursively)")
        ],
        format: Annotated[
            str,
            typer.Option(
                "--format", help="table | json | sarif", callback=choice_check(FORMATS, "format")
            ),
        ] = "table",
        output: Annotated[
            Path | None, typer.Option(help="file to write the report to (default: stdout)")
        ] = None,
        fail_on: Annotated[
            str,
            typer.Option(
                "--fail-on",
                help="exit 1 when a finding is at least this severe: low | medium | high | critical",
                callback=choice_check(SEVERITIES, "severity"),
            ),
        ] = "high",
        profile: Annotated[
            list[str] | None,
            typer.Option(
                "--profile",
                help="allowlist profile to enable besides core (repeat): e.g. sklearn, joblib",
                callback=_profile_check,
            ),
        ] = None,
    ) -> None:
        """Scan model files without loading them: pickles (torch, joblib, numpy), archives,
        safetensors, ONNX, GGUF chat templates, Keras. Exit 1 on findings at --fail-on."""
        from bastion.scan.engine import scan_paths
        from bastion.scan.findings import Severity
        from bastion.scan.sarif import to_sarif

        missing = [p for p in paths if not p.exists()]
        if missing:
            raise ConfigError(f"path not found: {missing[0]}: pass model files or folders")
        if output is not None:
            prepare_file(output, "--output")
        report = scan_paths(paths, profiles=tuple(profile or ()))
        failing = report.at_least(Severity(fail_on))
        errors = [r for r in report.files if r.error]
        summary = (
            f"{len(report.files)} file(s), {len(report.findings)} finding(s), "
            f"{len(failing)} at or above {fail_on}"
            + (f", {len(errors)} unreadable" if errors else "")
            + f" in {report.seconds:.2f}s"
        )
        if format == "table":
            if output is not None:
                with output.open("w", encoding="utf-8") as fh:
                    from rich.console import Console

                    Console(file=fh, width=200).print(_table(report))
            else:
                console.print(_table(report))
        else:
            text = (
                report.model_dump_json(indent=2)
                if format == "json"
                else json.dumps(to_sarif(report), indent=2)
            )
            if output is not None:
                output.write_text(text + "\n", encoding="utf-8")
            else:
                sys.stdout.write(text + "\n")
        err_console.print(summary, highlight=False, markup=False, soft_wrap=True)
        if failing or errors:
            raise typer.Exit(1)


class _CallsPrint:
    """Pickles as a call of ``builtins.print`` when a naive loader opens it: harmless, but
    exactly the construct (a global outside the allowlist, called by REDUCE) that carries
    real payloads."""

    def __reduce__(self):
        return (print, ("a naive loader ran this call",))


def demo_stage(ctx) -> None:
    """Scan the demo's model folder (clean) and a planted code-carrying pickle (refused),
    the same check every Bastion loading path runs first."""
    from bastion.scan.engine import scan_paths

    out = ctx.out / "scan"
    out.mkdir(parents=True, exist_ok=True)
    planted = out / "downloaded.pt"
    planted.write_bytes(pickle.dumps(_CallsPrint(), protocol=2))
    targets = [p for p in (ctx.model_dir, planted) if p is not None]
    report = scan_paths(targets)
    console.print(_table(report))
    (out / "scan.json").write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    worst = [f for f in report.findings if f.severity.value in ("high", "critical")]
    clean = [r for r in report.files if not r.findings]
    ctx.add(
        "scan",
        f"{len(clean)}/{len(report.files)} files clean; planted pickle: "
        f"{worst[0].rule} {worst[0].symbol}"
        if worst
        else "no finding (unexpected)",
        out / "scan.json",
    )
