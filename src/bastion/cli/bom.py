"""`bastion bom MODEL`: a CycloneDX 1.6 ML-BOM of a model (see :mod:`bastion.scan.bom`).

    bastion bom MODEL [--report report.json] [--attestation FILE] [--data MANIFEST …]
                [--signature SIG] [--output bom.json]

The BOM is checked against the CycloneDX 1.6 JSON schema before it is written; without
``--output`` it goes to stdout (the summary line to stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from bastion.cli.common import console, err_console
from bastion.cli.validate import prepare_file
from bastion.errors import ConfigError


def register(app: typer.Typer) -> None:
    @app.command()
    def bom(
        model: Annotated[Path, typer.Argument(help="the model: a file or a model directory")],
        report: Annotated[
            Path | None,
            typer.Option(help="report.json (or its directory) of `bastion assess` on this model"),
        ] = None,
        attestation: Annotated[
            Path | None,
            typer.Option(help="release attestation of `bastion attest` (DSSE envelope)"),
        ] = None,
        data: Annotated[
            list[Path] | None,
            typer.Option(
                "--data", help="dataset manifest JSON (repeat; the model's provenance is read)"
            ),
        ] = None,
        signature: Annotated[
            Path | None,
            typer.Option(
                help="model signature (default: DIR/model.sig or FILE.sig when there is one)"
            ),
        ] = None,
        output: Annotated[
            Path | None, typer.Option(help="BOM file to write (default: stdout)")
        ] = None,
    ) -> None:
        """Write a CycloneDX 1.6 ML-BOM: the model's files with SHA-256, a model card, the
        datasets with their manifests, the assessment's findings and the attestation."""
        from bastion.risk.evidence import load_report
        from bastion.scan.bom import build_bom, validate_bom

        if not model.exists():
            raise ConfigError(f"model not found: {model}")
        if output is not None:
            prepare_file(output, "--output")
        report_file = None
        loaded = None
        if report is not None:
            report_file = report / "report.json" if report.is_dir() else report
            loaded = load_report(report_file)
        result = build_bom(
            model,
            report=loaded,
            report_path=report_file,
            attestation=attestation,
            manifests=tuple(data or ()),
            signature=signature,
            output=output,
        )
        checked = "valid CycloneDX 1.6"
        try:
            errors = validate_bom(result.text)
        except ConfigError as exc:  # the optional validator is not installed
            errors, checked = [], f"not schema-checked ({exc})"
        if errors:  # a bug in Bastion, not the user's input: never write an invalid BOM
            raise RuntimeError(f"the BOM does not validate against CycloneDX 1.6: {errors[0]}")
        summary = (
            f"ML-BOM of {model}: {result.files} file(s), {result.datasets} dataset(s), "
            f"{result.vulnerabilities} finding(s), {result.references} reference(s); {checked}"
        )
        if output is None:
            sys.stdout.write(result.text)
            err_console.print(summary, highlight=False, markup=False, soft_wrap=True)
            return
        output.write_text(result.text, encoding="utf-8")
        console.print(f"{summary}: {output}", highlight=False, markup=False, soft_wrap=True)
