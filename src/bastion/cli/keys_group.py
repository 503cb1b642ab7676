"""The shared ``bastion keys`` command group.

Several command modules add commands under ``bastion keys`` (signing keys from
``bastion.cli.attest``, API keys from ``bastion.cli.keys``). Each calls, inside its
``register(app)``::

    keys = ensure_keys_group(app)

    @keys.command("signing-init")
    def signing_init(...): ...

The first caller creates the ``keys`` Typer and adds it to ``app``; later callers for the
same app get the same instance, so the group is registered once. ``get_keys_app()``
returns the group of the app most recently passed to :func:`ensure_keys_group`.
"""

from __future__ import annotations

import weakref

import typer

_GROUPS: weakref.WeakKeyDictionary[typer.Typer, typer.Typer] = weakref.WeakKeyDictionary()
_LAST: list[typer.Typer] = []


def ensure_keys_group(app: typer.Typer) -> typer.Typer:
    """The ``keys`` sub-app of ``app``, created and added on first use."""
    group = _GROUPS.get(app)
    if group is None:
        group = typer.Typer(
            name="keys",
            help="Signing keys for attestations and API keys for the gateway.",
            no_args_is_help=True,
        )
        app.add_typer(group, name="keys")
        _GROUPS[app] = group
    _LAST[:] = [group]
    return group


def get_keys_app(app: typer.Typer | None = None) -> typer.Typer:
    """The ``keys`` group of ``app`` (or of the app last given to ensure_keys_group)."""
    if app is not None:
        return ensure_keys_group(app)
    if not _LAST:
        raise RuntimeError("call ensure_keys_group(app) in register(app) before get_keys_app()")
    return _LAST[0]
