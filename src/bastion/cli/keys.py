"""`bastion keys create|revoke|list`: API keys of the gateway (``bastion serve``).

Keys are stored hashed in the record store (``--db`` or ``$BASTION_DB``); ``create``
prints the key once. Each change is appended to the audit log.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from bastion.cli.common import console
from bastion.cli.keys_group import ensure_keys_group
from bastion.cli.validate import id_check

DbOption = Annotated[
    str | None, typer.Option("--db", help="database URL (default: $BASTION_DB or the local store)")
]


def register(app: typer.Typer) -> None:
    keys_app = ensure_keys_group(app)

    @keys_app.command("create")
    def create(
        role: Annotated[str, typer.Option(help="client | reviewer | admin")] = "client",
        name: Annotated[str, typer.Option(help="a label to recognise the key by")] = "",
        db: DbOption = None,
    ) -> None:
        """Create an API key and print it ONCE (only its SHA-256 is stored)."""
        from bastion.serve.audit_adapter import append_sync
        from bastion.store.db import default_url, make_engine
        from bastion.store.keys import check_role, create_key

        check_role(role)
        engine = make_engine(db)
        info, secret = create_key(engine, role, name)
        append_sync(
            db or default_url(),
            {"kind": "key", "action": "create", "key_id": info.id, "role": info.role, "by": "cli"},
        )
        engine.dispose()
        console.print(
            f"created key {info.id} (role {info.role}); store it now, it is not shown again:"
        )
        typer.echo(secret)

    @keys_app.command("revoke")
    def revoke(
        key_id: Annotated[
            int,
            typer.Argument(help="the key id (see `bastion keys list`)", callback=id_check()),
        ],
        db: DbOption = None,
    ) -> None:
        """Revoke an API key (a running gateway refuses it within auth.cache_ttl_s)."""
        from bastion.serve.audit_adapter import append_sync
        from bastion.store.db import default_url, make_engine
        from bastion.store.keys import revoke_key

        engine = make_engine(db)
        info = revoke_key(engine, key_id)
        append_sync(
            db or default_url(),
            {"kind": "key", "action": "revoke", "key_id": info.id, "role": info.role, "by": "cli"},
        )
        engine.dispose()
        console.print(f"revoked key {info.id} ({info.role}, {info.prefix}…)")

    @keys_app.command("list")
    def list_(db: DbOption = None) -> None:
        """List API keys (id, role, name, prefix, created, revoked); never the secrets."""
        from bastion.store.db import make_engine
        from bastion.store.keys import list_keys

        engine = make_engine(db)
        rows = list_keys(engine)
        engine.dispose()
        table = Table(title=f"{len(rows)} API keys")
        for col in ("id", "role", "name", "prefix", "created", "revoked"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                str(r.id),
                r.role,
                r.name,
                r.prefix + "…",
                r.created.strftime("%Y-%m-%d %H:%M"),
                r.revoked.strftime("%Y-%m-%d %H:%M") if r.revoked else "",
            )
        console.print(table)
