"""`bastion audit verify|witness|prove|consistency|show|sign|keygen|pubkey`: the
tamper-evident audit log; and the audit part of `bastion demo` (log the demo's decisions,
sign, verify with the key it created).

`verify` needs a public key the caller trusts (`--key`, or `$BASTION_AUDIT_PUBKEY` set for
the deployment): the key recorded in the log cannot vouch for the log, since whoever can
write the database can re-sign it. `--no-signatures` checks the hash chain alone and says
that nothing was authenticated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bastion.audit.log import AuditLog, canonical_json
from bastion.audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from bastion.audit.sth import (
    PUBKEY_ENV,
    SignedTreeHead,
    generate_key_file,
    key_id,
    load_key_file,
    load_public_key,
    public_bytes,
    public_pem,
    resolve_public_key,
    resolve_signing_key,
)
from bastion.audit.witness import Cosignature, WitnessRefused, WitnessState, read_state, witness
from bastion.cli.common import console, err_console
from bastion.cli.validate import (
    MAX_COUNT,
    MAX_WORKERS,
    count_check,
    index_check,
    prepare_file,
)
from bastion.errors import ConfigError

if TYPE_CHECKING:
    from bastion.cli.demo import DemoContext

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db", help="audit log URL or SQLite file (default: $BASTION_DB)", show_default=False
    ),
]
NO_KEY = (
    "no trusted public key: pass --key PUB (the PEM file `bastion audit pubkey` prints, or "
    f"its hex/base64) or set ${PUBKEY_ENV} for the deployment. The public key stored in the "
    "log cannot vouch for the log: whoever can write the database can re-sign it with a key "
    "of their own (--no-signatures checks the hash chain alone and authenticates nothing)"
)
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


def _read_states(paths: list[Path], log_key: Ed25519PublicKey) -> list[WitnessState]:
    states = []
    for p in paths:
        state = read_state(p)
        if state is None:
            raise ConfigError(f"witness state file {p} does not exist")
        if state.log_public_key != public_bytes(log_key):
            raise ConfigError(
                f"witness state {p} witnesses log key {key_id(state.log_public_key)}, not the "
                f"trusted key {key_id(log_key)}"
            )
        states.append(state)
    return states


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
            typer.Option(
                "--key",
                help=f"the log's public key you trust (PEM file, or hex/base64); default "
                f"${PUBKEY_ENV}",
            ),
        ] = None,
        no_signatures: Annotated[
            bool,
            typer.Option(
                "--no-signatures",
                help="integrity only: check the hash chain and recorded hashes, no signature "
                "(authenticates nothing)",
            ),
        ] = False,
        head: Annotated[
            list[Path] | None,
            typer.Option("--head", help="a signed tree head JSON kept elsewhere (repeatable)"),
        ] = None,
        witness_key: Annotated[
            list[str] | None,
            typer.Option(
                "--witness-key",
                help="require this witness's valid cosignature on the latest signed head "
                "(public key; repeatable)",
            ),
        ] = None,
        cosignature: Annotated[
            list[Path] | None,
            typer.Option(
                "--cosignature",
                help="a witness state file kept outside the database (repeatable)",
            ),
        ] = None,
        workers: Annotated[
            int,
            typer.Option(
                help=f"hashing processes (1 … {MAX_WORKERS}); more than 1 pays off only on "
                "idle cores",
                callback=count_check(1, MAX_WORKERS),
            ),
        ] = 1,
    ) -> None:
        """Re-hash the whole log and check its signed heads against a key you trust; exit 0
        if intact, 1 naming the first bad entry, 2 for a usage error (no key, no log)."""
        pub = None
        if no_signatures:
            if key:
                raise ConfigError(
                    "--no-signatures checks no signature, so it takes no --key: drop one of them"
                )
            if head or witness_key or cosignature:
                raise ConfigError(
                    "--head, --witness-key and --cosignature are signatures: checking them "
                    "needs the log's public key (--key), not --no-signatures"
                )
        else:
            pub = resolve_public_key(key)
            if pub is None:
                raise ConfigError(NO_KEY)
        wkeys = [load_public_key(w) for w in witness_key or []]
        if cosignature and not wkeys:
            raise ConfigError("--cosignature needs --witness-key: the witness's key checks it")
        heads = _read_heads(head)
        cosigs: list[Cosignature] = []
        for state in _read_states(cosignature, pub) if cosignature and pub else []:
            heads.append(state.head)
            cosigs.append(state.cosignature)
        with AuditLog.open(db, create=False) as log:
            result = log.verify(
                pub,
                integrity_only=no_signatures,
                trusted_heads=heads,
                witness_keys=wkeys,
                cosignatures=cosigs,
                workers=workers,
            )
        if result.ok:
            console.print(
                f"{result.message} in {result.seconds:.2f} s",
                highlight=False,
                soft_wrap=True,
                markup=False,
                style=None if result.signatures_checked else "bold yellow",
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
        if result.signatures_checked and result.trusted_size:
            err_console.print(
                f"  trusted: entries 0..{result.trusted_size - 1} match a verified signed head",
                highlight=False,
                soft_wrap=True,
                markup=False,
            )
        raise typer.Exit(1)

    @audit.command("witness")
    def witness_cmd(
        key: Annotated[
            Path,
            typer.Option("--key", help="the witness's Ed25519 private key (PEM, mode 0600)"),
        ],
        state: Annotated[
            Path,
            typer.Option(
                "--state", help="the witness's state file (last cosigned head); made on first run"
            ),
        ],
        db: DbOpt = None,
        log_key: Annotated[
            str | None,
            typer.Option(
                "--log-key",
                help=f"the log's public key (needed on the first run, then pinned in the state "
                f"file); default ${PUBKEY_ENV}",
            ),
        ] = None,
    ) -> None:
        """Cosign the latest signed tree head after checking it is consistent (RFC 6962
        consistency proof) with the last one cosigned; exit 1 refusing when it is not."""
        wkey = load_key_file(key)
        lkey = resolve_public_key(log_key)
        with AuditLog.open(db, create=False) as log:
            try:
                outcome = witness(log, wkey, state, lkey)
            except WitnessRefused as exc:
                err_console.print(
                    f"REFUSED: {exc}",
                    highlight=False,
                    soft_wrap=True,
                    markup=False,
                    style="bold red",
                )
                raise typer.Exit(1) from None
        console.print(outcome.message, highlight=False, soft_wrap=True, markup=False)

    @audit.command("prove")
    def prove_cmd(
        index: Annotated[
            int, typer.Option("--index", help="entry index (from 0)", callback=index_check())
        ],
        size: Annotated[
            int | None,
            typer.Option("--size", help="tree size (default: now)", callback=index_check()),
        ] = None,
        db: DbOpt = None,
    ) -> None:
        """Print the inclusion proof of an entry (JSON), checked against the root."""
        with AuditLog.open(db, create=False) as log:
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
        old: Annotated[
            int, typer.Option("--old", help="earlier tree size", callback=index_check())
        ],
        new: Annotated[
            int | None,
            typer.Option("--new", help="later tree size (default: now)", callback=index_check()),
        ] = None,
        db: DbOpt = None,
    ) -> None:
        """Print the consistency proof between two tree sizes (JSON), checked."""
        with AuditLog.open(db, create=False) as log:
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
        tail: Annotated[
            int,
            typer.Option(
                "--tail",
                help="how many of the last entries (at least 1)",
                callback=count_check(1, MAX_COUNT),
            ),
        ] = 20,
        db: DbOpt = None,
    ) -> None:
        """Print the last entries (index and canonical JSON) and the latest signed head."""
        with AuditLog.open(db, create=False) as log:
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
        if out:
            prepare_file(out, "--out")
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
        prepare_file(key_file, "--key-file")
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
    pub_file = out / "audit-pub.pem"
    pub_file.write_text(public_pem(key))
    with AuditLog.open(url, signing_key=key) as log:
        indices = log.append_many(_demo_entries(ctx))
        head = log.sign_tree_head()
        # checked against the key this stage created (kept outside the database), never
        # against the key recorded in the log
        result = log.verify(load_public_key(pub_file))
    (out / "sth.json").write_text(head.to_json() + "\n")
    ctx.extra["audit_db"] = url
    ctx.extra["audit_head"] = head
    console.print(
        f"appended entries {indices[0]}..{indices[-1]}; signed head size {head.tree_size}; "
        f"verify: {result.message}",
        highlight=False,
    )
    console.print(
        f"check it again yourself: bastion audit verify --db {url} --key {pub_file}",
        highlight=False,
        markup=False,
        style="dim",
    )
    outcome = (
        f"{len(indices)} entries logged; {result.size} verified, root {result.root.hex()[:12]}"
        if result.ok
        else f"VERIFY FAILED: {result.message}"
    )
    ctx.add("audit", outcome, out)
