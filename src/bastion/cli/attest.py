"""`bastion attest`: sign what the gate measured; `bastion attest verify`: check it.
Also adds `bastion keys signing-init` to the shared keys group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bastion.cli.common import console, err_console
from bastion.cli.keys_group import ensure_keys_group
from bastion.errors import ConfigError
from bastion.gate.keys import (
    default_key_path,
    generate_signing_key,
    load_public_key,
    load_signing_key,
)
from bastion.gate.policy import load_policy

STATE_STYLE = {
    "ok": "[green]ok[/]",
    "changed": "[bold red]CHANGED[/]",
    "missing": "[bold red]MISSING[/]",
}


def register(app: typer.Typer) -> None:
    attest = typer.Typer(
        name="attest", invoke_without_command=True,
        help="Signed in-toto attestations of the gate decision (DSSE, Ed25519).",
    )  # fmt: skip
    app.add_typer(attest, name="attest")

    @attest.callback()
    def create(
        ctx: typer.Context,
        report: Annotated[Path | None, typer.Option(help="report.json (or its directory)")] = None,
        policy: Annotated[Path | None, typer.Option(help="policy YAML the gate checks")] = None,
        model: Annotated[
            Path | None, typer.Option(help="model directory (default: the one the report names)")
        ] = None,
        register: Annotated[
            Path | None, typer.Option("--register", help="risk register JSON")
        ] = None,
        dataset_manifest: Annotated[
            Path | None,
            typer.Option(help="dataset manifest JSON (default: written from the report)"),
        ] = None,
        key: Annotated[
            Path | None,
            typer.Option(help="private key file (default: $BASTION_SIGNING_KEY or the keys dir)"),
        ] = None,
        out: Annotated[
            Path | None, typer.Option(help="attestation file (default: beside the report)")
        ] = None,
    ) -> None:
        """Evaluate the gate, then sign an in-toto statement over the model files, the report
        and the dataset manifest. Use `bastion attest verify FILE` to check one."""
        if ctx.invoked_subcommand is not None:
            return
        if report is None or policy is None:
            raise ConfigError("bastion attest needs --report and --policy (or: attest verify FILE)")
        from bastion.gate.attest import create_attestation

        report_file = report / "report.json" if report.is_dir() else report
        target = out or report_file.parent / "attestation.dsse.json"
        att = create_attestation(
            report_path=report_file, policy=load_policy(policy), key=load_signing_key(key),
            out=target, model_dir=model, register_path=register, dataset_manifest=dataset_manifest,
        )  # fmt: skip
        verdict = "PASS" if att.decision.passed else "FAIL"
        console.print(
            f"gate {att.decision.policy}: {att.decision.summary()} (decision {verdict} recorded)"
        )
        for s in att.subjects:
            console.print(f"  {s['name']}  sha256:{s['digest']['sha256'][:16]}…")
        console.print(f"signed with key {att.key_id[:16]}…; attestation: [bold]{att.path}[/]")

    @attest.command("verify")
    def verify(
        attestation: Annotated[Path, typer.Argument(help="attestation file (DSSE envelope)")],
        public_key: Annotated[
            Path | None,
            typer.Option(help="public key PEM (default: $BASTION_SIGNING_PUBLIC_KEY or keys dir)"),
        ] = None,
        model: Annotated[Path | None, typer.Option(help="model directory, if moved")] = None,
        report: Annotated[Path | None, typer.Option(help="report.json, if moved")] = None,
        dataset_manifest: Annotated[
            Path | None, typer.Option(help="dataset manifest, if moved")
        ] = None,
        require_pass: Annotated[
            bool, typer.Option(help="also fail when the recorded gate decision is FAIL")
        ] = False,
    ) -> None:
        """Check the signature and re-hash every file; exit 1 naming what changed."""
        from bastion.gate.attest import DATASET_SUBJECT, REPORT_SUBJECT, verify_attestation

        overrides: dict[str, Path] = {}
        if model:
            overrides["model/"] = model
        if report:
            overrides[REPORT_SUBJECT] = report / "report.json" if report.is_dir() else report
        if dataset_manifest:
            overrides[DATASET_SUBJECT] = dataset_manifest
        result = verify_attestation(
            attestation, load_public_key(public_key), overrides=overrides,
            require_pass=require_pass,
        )  # fmt: skip
        table = Table(title=f"{attestation}")
        for col in ("subject", "state", "path"):
            table.add_column(col, overflow="fold")
        for s in result.subjects:
            table.add_row(s.name, STATE_STYLE[s.state], s.path)
        console.print(table)
        sig = "[green]valid[/]" if result.signature_ok else "[bold red]INVALID[/]"
        console.print(f"signature: {sig} (key {str(result.key_id)[:16]}…)")
        if result.gate_passed is not None:
            console.print(f"recorded gate decision: {'PASS' if result.gate_passed else 'FAIL'}")
        if not result.ok:
            for p in result.problems:
                err_console.print(f"[bold red]verification failed:[/] {p}", highlight=False)
            raise typer.Exit(1)
        console.print("[green]attestation verified[/]")

    keys = ensure_keys_group(app)

    @keys.command("signing-init")
    def signing_init(
        out: Annotated[
            Path | None, typer.Option(help=f"private key file (default: {default_key_path()})")
        ] = None,
        force: Annotated[bool, typer.Option(help="replace an existing key")] = False,
    ) -> None:
        """Create an Ed25519 signing key (mode 0600) and its public key beside it."""
        files = generate_signing_key(out, force=force)
        console.print(f"private key: [bold]{files.private}[/] (mode 0600; never share it)")
        console.print(f"public key:  [bold]{files.public}[/]")
        console.print(f"key id: {files.key_id}")
