"""`bastion audit verify|prove|consistency|show|sign|keygen|pubkey`: the tamper-evident
audit log; and the audit part of `bastion demo` (log the demo's decisions, sign, verify)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bastion.audit.log import AuditLog, canonical_json
from bastion.audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from bastion.audit.sth import (
    SignedTreeHead,
    generate_key_file,
    load_public_key,
    public_pem,
    resolve_signing_key,
)
from bastion.cli.common import console, err_console
from bastion.errors import ConfigError

if TYPE_CHECKING:
    from bastion.cli.demo import DemoContext

DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="audit log URL (default: $BASTION_DB)", show_default=False),
]
KeyFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--key-file", help="Ed25519 private key (PEM, mode 0600); else $BASTION_AUDIT_KEY"
    ),
]


def _read_heads(paths: list[Path] | None) -> list[SignedTreeHead]:
    heads = []
    for p in paths or []:
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read tree head file {p}: {exc.strerror}") from None
        heads.append(SignedTreeHead.from_json(text))
    return heads


def register(app: typer.Typer) -> None:
    audit = typer.Typer(
        help="The tamper-evident audit log (RFC 6962 Merkle tree, signed tree heads).",
        no_args_is_help=True,
    )

    @audit.command("verify")
    def verify_cmd(
        db: DbOpt = None,
        key: Annotated[
            str | None,
            typer.Option("--key", help="public key (PEM file, or hex/base64) to check heads with"),
        ] = None,
        head: Annotated[
            list[Path] | None,
            typer.Option("--head", help="a signed tree head JSON kept elsewhere (repeatable)"),
        ] = None,
        workers: Annotated[
            int, typer.Option(help="hashing processes; more than 1 pays off only on idle cores")
        ] = 1,
    ) -> None:
        """Re-hash the whole log; exit 0 if intact, 1 naming the first bad entry."""
        pub = load_public_key(key) if key else None
        heads = _read_heads(head)
        with AuditLog.open(db) as log:
            result = log.verify(pub, trusted_heads=heads, workers=workers)
        if result.ok:
            console.print(
                f"{result.message} in {result.seconds:.2f} s",
                highlight=False,
                soft_wrap=True,
                markup=False,
            )
            return
        err_console.print(
            f"FAILED: {result.message}",
            highlight=False,
            soft_wrap=True,
            markup=False,
            style="bold red",
        )
        for extra in result.problems[1:]:
            err_console.print(f"  also: {extra}", highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(1)

    @audit.command("prove")
    def prove_cmd(
        index: Annotated[int, typer.Option("--index", help="entry index")],
        size: Annotated[int | None, typer.Option("--size", help="tree size (default: now)")] = None,
        db: DbOpt = None,
    ) -> None:
        """Print the inclusion proof of an entry (JSON), checked against the root."""
        with AuditLog.open(db) as log:
            n = log.size() if size is None else size
            proof = log.inclusion_proof(index, n)
            leaf = leaf_hash(log.entry_bytes(index))
            root = log.root(n)
        ok = verify_inclusion(leaf, index, n, proof, root)
        console.print_json(
            json.dumps(
                {
                    "index": index,
                    "tree_size": n,
                    "leaf_hash": leaf.hex(),
                    "root_hash": root.hex(),
                    "audit_path": [p.hex() for p in proof],
                    "verified": ok,
                }
            )
        )
        if not ok:
            raise typer.Exit(1)

    @audit.command("consistency")
    def consistency_cmd(
        old: Annotated[int, typer.Option("--old", help="earlier tree size")],
        new: Annotated[
            int | None, typer.Option("--new", help="later tree size (default: now)")
        ] = None,
        db: DbOpt = None,
    ) -> None:
        """Print the consistency proof between two tree sizes (JSON), checked."""
        with AuditLog.open(db) as log:
            n = log.size() if new is None else new
            proof = log.consistency_proof(old, n)
            old_root, new_root = log.root(old), log.root(n)
        ok = verify_consistency(old, n, old_root, new_root, proof)
        console.print_json(
            json.dumps(
                {
                    "old_size": old,
                    "new_size": n,
                    "old_root": old_root.hex(),
                    "new_root": new_root.hex(),
                    "proof": [p.hex() for p in proof],
                    "verified": ok,
                }
            )
        )
        if not ok:
            raise typer.Exit(1)

    @audit.command("show")
    def show_cmd(
        tail: Annotated[int, typer.Option("--tail", help="how many of the last entries")] = 20,
        db: DbOpt = None,
    ) -> None:
        """Print the last entries (index and canonical JSON) and the latest signed head."""
        with AuditLog.open(db) as log:
            rows = log.tail(tail)
            head = log.latest_head()
            size = log.size()
        for i, entry in rows:
            console.print(
                f"{i}  {canonical_json(entry).decode()}",
                highlight=False,
                soft_wrap=True,
                markup=False,
            )
        latest = f"latest signed head: size {head.tree_size}" if head else "no signed head yet"
        console.print(f"[dim]{size} entries; {latest}[/]")

    @audit.command("sign")
    def sign_cmd(
        db: DbOpt = None,
        key_file: KeyFileOpt = None,
        create_key: Annotated[
            bool, typer.Option("--create-key", help="generate the key file if it does not exist")
        ] = False,
        out: Annotated[Path | None, typer.Option(help="also write the head JSON here")] = None,
    ) -> None:
        """Sign the current tree head, store it in the log and print it (JSON)."""
        key = resolve_signing_key(key_file, create=create_key)
        with AuditLog.open(db, signing_key=key) as log:
            head = log.sign_tree_head()
        text = head.to_json()
        if out:
            out.write_text(text + "\n")
        console.print_json(text)

    @audit.command("keygen")
    def keygen_cmd(
        key_file: Annotated[Path, typer.Option("--key-file", help="where to write the key")],
    ) -> None:
        """Create an Ed25519 signing key (mode 0600); prints only the public key."""
        key = generate_key_file(key_file)
        console.print(f"private key written to {key_file} (mode 0600)", highlight=False)
        console.print(public_pem(key), end="")

    @audit.command("pubkey")
    def pubkey_cmd(key_file: KeyFileOpt = None) -> None:
        """Print the public half of the signing key (PEM)."""
        key = resolve_signing_key(key_file)
        if key is None:
            raise ConfigError("no audit key: pass --key-file PATH or set $BASTION_AUDIT_KEY")
        console.print(public_pem(key), end="")

    app.add_typer(audit, name="audit")


def _demo_entries(ctx: DemoContext) -> list[dict[str, Any]]:
    decision = ctx.extra.get("gate_decision")
    entries: list[dict[str, Any]] = []
    if decision is not None:
        data = decision.model_dump(mode="json") if hasattr(decision, "model_dump") else decision
        entries.append({"event": "gate_decision", "decision": data})
    for stage, outcome, path in ctx.summary:
        entries.append({"event": "demo_stage", "stage": stage, "outcome": outcome, "path": path})
    if not entries:
        entries.append({"event": "demo", "note": "no earlier stage recorded anything"})
    return entries


def demo_stage(ctx: DemoContext) -> None:
    out = ctx.out / "audit"
    out.mkdir(parents=True, exist_ok=True)
    url = ctx.extra.get("serve_db") or f"sqlite:///{(out / 'audit.db').resolve()}"
    key = resolve_signing_key(out / "audit-key.pem", create=True)
    (out / "audit-pub.pem").write_text(public_pem(key))
    with AuditLog.open(url, signing_key=key) as log:
        indices = log.append_many(_demo_entries(ctx))
        head = log.sign_tree_head()
        result = log.verify(key.public_key())
    (out / "sth.json").write_text(head.to_json() + "\n")
    ctx.extra["audit_db"] = url
    ctx.extra["audit_head"] = head
    console.print(
        f"appended entries {indices[0]}..{indices[-1]}; signed head size {head.tree_size}; "
        f"verify: {result.message}",
        highlight=False,
    )
    outcome = (
        f"{len(indices)} entries logged; {result.size} verified, root {result.root.hex()[:12]}"
        if result.ok
        else f"VERIFY FAILED: {result.message}"
    )
    ctx.add("audit", outcome, out)
