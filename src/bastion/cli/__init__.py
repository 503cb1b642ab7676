"""The ``bastion`` command (Typer + Rich).

Each stage lives in its own module ``bastion.cli.<name>`` exposing ``register(app)``;
those with a part in ``bastion demo`` also expose ``demo_stage(ctx)``. A BastionError
becomes one line on stderr and exit code 2; an unexpected error one line and exit 1
(``BASTION_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from types import ModuleType

import typer

from bastion.cli.common import err_console
from bastion.errors import BastionError

# Pipeline order: it is also the order of `bastion demo`.
COMMAND_MODULES = [
    "train",
    "assess",
    "runs",
    "harden",
    "risk",
    "gate",
    "attest",
    "keys",
    "guard",
    "serve",
    "audit",
    "demo",
    "clients",
]


def command_modules() -> list[ModuleType]:
    mods = []
    for name in COMMAND_MODULES:
        qual = f"bastion.cli.{name}"
        try:
            mods.append(importlib.import_module(qual))
        except ModuleNotFoundError as exc:
            if exc.name != qual:
                raise
    return mods


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="bastion",
        help="Security-first assurance for PyTorch models: risk → assess → harden → gate → guard → audit.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for mod in command_modules():
        mod.register(app)
    return app


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("BASTION_LOG", "WARNING").upper(),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        build_app()(standalone_mode=True)
    except BastionError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # an internal bug: one line unless debugging
        if os.environ.get("BASTION_DEBUG"):
            raise
        err_console.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {exc} (rerun with BASTION_DEBUG=1 "
            "for the traceback and report it)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
