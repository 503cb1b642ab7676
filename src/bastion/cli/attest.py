"""`bastion attest`: sign what the gate measured; `bastion attest verify`: check it.
`bastion attest sign MODEL` / `bastion attest verify-model MODEL`: sign a model (a file or a
directory) in the OpenSSF model-signing format and verify it (one line OK/FAIL, exit 0/1).
Also adds `bastion keys signing-init` (Ed25519, attestations) and `bastion keys
model-signing-init` (ECDSA, model signatures) to the shared keys group.

The model files are the report's recorded artifacts (at their recorded paths; relative ones
from the current directory, where `bastion assess` ran), or, with the model options of
`bastion assess` (--model PATH of any form, --entry-point, --weights, --onnx-mode, --trust),
the files the model loads from there. Attesting refuses (exit 2) a model file that does
not hash to what the report recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bastion.cli.common import (
    EntryPointOpt,
    OnnxModeOpt,
    TrustOpt,
    WeightsOpt,
    console,
    err_console,
)
from bastion.cli.gate import BaselineOpt, ComparisonOpt, print_decision
from bastion.cli.keys_group import ensure_keys_group
from bastion.cli.validate import choice_check, prepare_file
from bastion.errors import ConfigError
from bastion.gate.keys import (
    default_key_path,
    generate_signing_key,
    load_public_key,
    load_signing_key,
)
from bastion.gate.policy import load_policy

# the model options of `bastion assess` (same names and meaning)
ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="the model as given to `bastion assess`: a directory, TorchScript, .onnx, .skops, "
        "XGBoost .json/.ubj, LightGBM .txt, or a .pt state dict with --entry-point (default: "
        "the files the report records)"
    ),
]
STATE_STYLE = {
    "ok": "[green]ok[/]",
    "changed": "[bold red]CHANGED[/]",
    "missing": "[bold red]MISSING[/]",
}


def register(app: typer.Typer) -> None:
    attest = typer.Typer(
        name="attest",
        invoke_without_command=True,
        help="Signed in-toto attestations of the gate decision (DSSE, Ed25519).",
    )
    app.add_typer(attest, name="attest")

    @attest.callback()
    def create(
        ctx: typer.Context,
        report: Annotated[Path | None, typer.Option(help="report.json (or its directory)")] = None,
        policy: Annotated[Path | None, typer.Option(help="policy YAML the gate checks")] = None,
        model: ModelOpt = None,
        entry_point: EntryPointOpt = None,
        weights: WeightsOpt = None,
        onnx_mode: OnnxModeOpt = "auto",
        trust: TrustOpt = None,
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
        comparison: ComparisonOpt = None,
        baseline: BaselineOpt = None,
    ) -> None:
        """Check the model files against the report, evaluate the gate, then sign an in-toto
        statement over the model files, the report and the dataset manifest. Use `bastion
        attest verify FILE` to check one."""
        if ctx.invoked_subcommand is not None:
            return
        if report is None or policy is None:
            raise ConfigError("bastion attest needs --report and --policy (or: attest verify FILE)")
        from bastion.gate.attest import ModelSource, create_attestation

        if model is None and (entry_point is None) and (weights is not None or trust):
            raise ConfigError("--weights and --trust go with --model (or --entry-point)")
        report_file = report / "report.json" if report.is_dir() else report
        target = out or report_file.parent / "attestation.dsse.json"
        if out is not None:
            prepare_file(out, "--out")
        source = None
        if model is not None or entry_point is not None:
            source = ModelSource(
                path=model,
                entry_point=entry_point,
                weights=weights,
                onnx_mode=onnx_mode,
                trusted=tuple(trust or ()),
            )
        att = create_attestation(
            report_path=report_file,
            policy=load_policy(policy),
            key=load_signing_key(key),
            out=target,
            model=source,
            register_path=register,
            dataset_manifest=dataset_manifest,
            comparison=comparison,
            baseline=baseline,
        )
        verdict = "PASS" if att.decision.passed else "FAIL"
        print_decision(att.decision)
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
        model: Annotated[
            Path | None,
            typer.Option(help="directory now holding the model files (by file name), if moved"),
        ] = None,
        report: Annotated[Path | None, typer.Option(help="report.json, if moved")] = None,
        dataset_manifest: Annotated[
            Path | None, typer.Option(help="dataset manifest, if moved")
        ] = None,
        subject: Annotated[
            list[str] | None,
            typer.Option(help="NAME=PATH: where one subject (e.g. model/bc.pt) is now (repeat)"),
        ] = None,
        require_pass: Annotated[
            bool, typer.Option(help="also fail when the recorded gate decision is FAIL")
        ] = False,
    ) -> None:
        """Check the signature and re-hash every file; exit 1 naming what changed."""
        from bastion.gate.attest import DATASET_SUBJECT, REPORT_SUBJECT, verify_attestation

        if attestation.is_dir():
            raise ConfigError(
                f"{attestation} is a directory, not an attestation file: to verify a signed "
                f"model use `bastion attest verify-model {attestation} --key PUB.pem`"
            )

        overrides: dict[str, Path] = {}
        if model:
            overrides["model/"] = model
        if report:
            overrides[REPORT_SUBJECT] = report / "report.json" if report.is_dir() else report
        if dataset_manifest:
            overrides[DATASET_SUBJECT] = dataset_manifest
        for item in subject or []:
            name, sep, where = item.partition("=")
            if not sep or not name or not where:
                raise ConfigError(
                    f"--subject {item!r}: write NAME=PATH, e.g. model/bc.pt=new/bc.pt"
                )
            overrides[name] = Path(where)
        result = verify_attestation(
            attestation,
            load_public_key(public_key),
            overrides=overrides,
            require_pass=require_pass,
        )
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

    _register_model_signing(attest)

    keys = ensure_keys_group(app)

    @keys.command("signing-init")
    def signing_init(
        out: Annotated[
            Path | None, typer.Option(help=f"private key file (default: {default_key_path()})")
        ] = None,
        force: Annotated[bool, typer.Option(help="replace an existing key")] = False,
    ) -> None:
        """Create an Ed25519 signing key (mode 0600) and its public key beside it."""
        if out is not None:
            prepare_file(out, "--out")
        files = generate_signing_key(out, force=force)
        console.print(f"private key: [bold]{files.private}[/] (mode 0600; never share it)")
        console.print(f"public key:  [bold]{files.public}[/]")
        console.print(f"key id: {files.key_id}")

    @keys.command("model-signing-init")
    def model_signing_init(
        out: Annotated[
            Path | None,
            typer.Option(help="private key file (default: ~/.config/bastion/model-signing.key)"),
        ] = None,
        curve: Annotated[
            str,
            typer.Option(
                help="ECDSA curve: P-256 | P-384 | P-521",
                callback=choice_check(("P-256", "P-384", "P-521"), "curve"),
            ),
        ] = "P-256",
        force: Annotated[bool, typer.Option(help="replace an existing key")] = False,
    ) -> None:
        """Create an ECDSA key pair for `bastion attest sign` (model-signing has no Ed25519
        key signer): the private key (mode 0600) and its public key (.pub) beside it."""
        from bastion.scan.signing import generate_model_key

        if out is not None:
            prepare_file(out, "--out")
        files = generate_model_key(out, curve=curve, force=force)
        console.print(f"private key: [bold]{files.private}[/] (mode 0600; never share it)")
        console.print(f"public key:  [bold]{files.public}[/]")
        console.print(f"key id: {files.key_id}")


ModelArg = Annotated[Path, typer.Argument(help="the model: a file or a model directory")]
SignatureOpt = Annotated[
    Path | None,
    typer.Option(
        "--signature", help="signature file (default: DIR/model.sig, or FILE.sig beside a file)"
    ),
]


def _register_model_signing(attest: typer.Typer) -> None:
    @attest.command("sign")
    def sign(
        model: ModelArg,
        key: Annotated[
            Path | None,
            typer.Option(
                help="ECDSA private key PEM (default: $BASTION_MODEL_SIGNING_KEY or "
                "~/.config/bastion/model-signing.key; `bastion keys model-signing-init`)"
            ),
        ] = None,
        signature: SignatureOpt = None,
    ) -> None:
        """Sign a model in the OpenSSF model-signing format (a Sigstore bundle, key-based,
        offline): every file of a directory, except the signature itself, is covered."""
        from bastion.scan.signing import sign_model

        if signature is not None:
            prepare_file(signature, "--signature")
        signed = sign_model(model, key, signature=signature)
        console.print(
            f"signed {signed.model}: {len(signed.files)} file(s), model digest "
            f"sha256:{signed.digest[:16]}…, key {signed.key_id[:16]}…; signature: "
            f"[bold]{signed.signature}[/]",
            highlight=False,
            soft_wrap=True,
        )

    @attest.command("verify-model")
    def verify_model_cmd(
        model: ModelArg,
        key: Annotated[
            Path | None,
            typer.Option(
                help="ECDSA public key PEM (default: $BASTION_MODEL_SIGNING_PUBLIC_KEY or "
                "~/.config/bastion/model-signing.pub)"
            ),
        ] = None,
        signature: SignatureOpt = None,
    ) -> None:
        """Verify a model against its model-signing signature: one line OK (exit 0) or FAIL
        with the reason (exit 1): missing signature, another key, an altered signature, a
        changed, missing or unsigned file."""
        from bastion.scan.signing import verify_model

        result = verify_model(model, key, signature=signature)
        if result.ok:
            console.print(result.line(), highlight=False, soft_wrap=True, markup=False)
            return
        err_console.print(result.line(), highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(1)
