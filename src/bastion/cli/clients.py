"""`bastion clients blocked|show|block|unblock`: the gateway's blocked clients.

A client is an API key (see `bastion keys list`); the guard blocks one when its verdict
for a request is ``block`` (``blocks.expire_after_s`` in serve.yaml sets how long). These
commands work on the server's database (``--db`` or ``$BASTION_DB``); a running gateway
sees a change within ``auth.cache_ttl_s``. Blocks and unblocks are appended to the audit
log. An unknown key id, a client that is not blocked (for ``unblock``) or a bad database
URL is one line on stderr and exit code 2.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from bastion.cli.common import console
from bastion.cli.validate import MAX_BLOCK_SECONDS, finite_range, id_check

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from bastion.store.blocks import Block

DbOption = Annotated[
    str | None, typer.Option("--db", help="database URL (default: $BASTION_DB or the local store)")
]
IdArg = Annotated[
    int,
    typer.Argument(help="the client's API key id (see `bastion keys list`)", callback=id_check()),
]


def _when(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t is not None else "never"


def _engine(db: str | None) -> Engine:
    """The store's engine; a database that cannot be used is one line (exit 2)."""
    from bastion.errors import StoreError
    from bastion.store.db import make_engine

    try:
        return make_engine(db)
    except StoreError as exc:
        raise StoreError(" ".join(str(exc).split())) from None


def register(app: typer.Typer) -> None:
    clients_app = typer.Typer(
        name="clients",
        help="Blocked clients of the gateway: list, show, block, unblock.",
        no_args_is_help=True,
    )
    app.add_typer(clients_app, name="clients")

    @clients_app.command("blocked")
    def blocked(db: DbOption = None) -> None:
        """List the clients blocked now (expired blocks are not listed)."""
        from bastion.store.blocks import list_blocks

        engine = _engine(db)
        try:
            rows = list_blocks(engine)
        finally:
            engine.dispose()
        if not rows:
            console.print("no blocked clients")
            return
        table = Table(title=f"{len(rows)} blocked client(s)")
        for col in ("client", "reason", "since", "expires", "by", "request"):
            table.add_column(col)
        for b in rows:
            table.add_row(
                str(b.client_id),
                b.reason,
                _when(b.created),
                _when(b.expires),
                b.created_by,
                b.request_id or "",
            )
        console.print(table)

    @clients_app.command("show")
    def show(client_id: IdArg, db: DbOption = None) -> None:
        """Show one client's block (reason, since, expires, by whom)."""
        from bastion.store.blocks import client_info, get_block, require_client

        engine = _engine(db)
        try:
            block = get_block(engine, client_id)
            info = (
                client_info(engine, client_id)
                if block is not None
                else require_client(engine, client_id)
            )
        finally:
            engine.dispose()
        who = f"client {client_id}" + (f" ({info.role} key {info.name!r})" if info else "")
        if block is None:
            console.print(f"{who} is not blocked")
            return
        console.print(f"{who} is BLOCKED (block {block.id})")
        console.print(f"  reason:  {block.reason}")
        console.print(f"  since:   {_when(block.created)} by {block.created_by}")
        console.print(f"  expires: {_when(block.expires)}")
        if block.request_id:
            console.print(f"  request: {block.request_id}")

    @clients_app.command("block")
    def block(
        client_id: IdArg,
        reason: Annotated[str, typer.Option(help="why (kept in the block and the audit log)")],
        expire_after: Annotated[
            float | None,
            typer.Option(help="seconds until the block lapses (default: never; at most 100 years)"),
        ] = None,
        db: DbOption = None,
    ) -> None:
        """Block a client by hand (replaces a block in force)."""
        from bastion.errors import ConfigError
        from bastion.serve.audit_adapter import append_sync
        from bastion.store.blocks import block_client, require_client, utcnow
        from bastion.store.db import default_url

        if not reason.strip():
            raise ConfigError("--reason must say why the client is blocked")
        problem = expire_after is not None and finite_range(
            expire_after, gt=0, le=MAX_BLOCK_SECONDS, what="--expire-after"
        )
        if problem:
            raise ConfigError(f"{problem} (seconds)")
        engine = _engine(db)
        try:
            require_client(engine, client_id)
            now = utcnow()
            expires = now + timedelta(seconds=expire_after) if expire_after else None
            made, _ = block_client(
                engine,
                client_id,
                reasons=[reason.strip()],
                created_by="cli",
                expires=expires,
                replace=True,
                now=now,
            )
        finally:
            engine.dispose()
        append_sync(db or default_url(), _entry("create", made))
        console.print(
            f"blocked client {client_id} (block {made.id}, expires {_when(made.expires)})"
        )

    @clients_app.command("unblock")
    def unblock(client_id: IdArg, db: DbOption = None) -> None:
        """Remove a client's block (a running gateway lets it through within auth.cache_ttl_s)."""
        from bastion.serve.audit_adapter import append_sync
        from bastion.store.blocks import NotBlocked, client_info, require_client, unblock_client
        from bastion.store.db import default_url

        engine = _engine(db)
        try:
            try:
                removed = unblock_client(engine, client_id, removed_by="cli")
            except NotBlocked:
                require_client(engine, client_id)  # an unknown id says so first
                raise
            info = client_info(engine, client_id)
        finally:
            engine.dispose()
        append_sync(db or default_url(), _entry("remove", removed))
        name = f" ({info.role} key {info.name!r})" if info else ""
        console.print(f"unblocked client {client_id}{name}: block {removed.id} ({removed.reason})")


def _entry(action: str, block: Block) -> dict[str, Any]:
    return {
        "kind": "block",
        "action": action,
        "client_key_id": block.client_id,
        "block_id": block.id,
        "reasons": block.reasons,
        "request_id": block.request_id,
        "expires": block.expires.isoformat() if block.expires else None,
        "by": "cli",
    }
