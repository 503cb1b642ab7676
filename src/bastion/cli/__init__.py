"""The ``bastion`` command (Typer + Rich).

Each stage lives in its own module ``bastion.cli.<name>`` exposing ``register(app)``;
those with a part in ``bastion demo`` also expose ``demo_stage(ctx)``. A BastionError,
a bad option value (see :mod:`bastion.cli.validate`) or a path that cannot be read or
written becomes one line on stderr and exit code 2; an unexpected error one line and exit
1 (``BASTION_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from types import ModuleType

import typer
from rich.text import Text

from bastion.cli.common import err_console
from bastion.errors import BastionError

# Pipeline order: it is also the order of `bastion demo`.
COMMAND_MODULES = [
    "train",
    "assess",
    "sweep",
    "runs",
    "harden",
    "risk",
    "gate",
    "attest",
    "scan",
    "bom",
    "keys",
    "guard",
    "serve",
    "dashboard",
    "audit",
    "demo",
    "clients",
    "llm",
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


def one_line(message: object) -> str:
    """``message`` on one line (newlines and runs of spaces folded)."""
    return " ".join(str(message).split())


def print_error(message: object, label: str = "error:") -> None:
    """One line on stderr: a red label, then the message as plain text (never markup)."""
    err_console.print(
        Text.assemble((label, "bold red"), " ", one_line(message)),
        highlight=False,
        soft_wrap=True,
    )


def _usage_message(exc: typer.TyperException) -> str:
    """A usage error (bad or missing option value) on one line, naming the command's help."""
    text = exc.format_message().replace("Value error, ", "")
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        text += f" (see `{ctx.command_path} --help`)"
    return text


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("BASTION_LOG", "WARNING").upper(),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code = build_app()(standalone_mode=False)
    except BastionError as exc:
        print_error(exc)
        sys.exit(2)
    except typer.TyperException as exc:  # click's usage errors: bad option values, typos
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help
            print_error(_usage_message(exc))
        sys.exit(getattr(exc, "exit_code", 2))
    except typer.Abort:
        print_error("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except OSError as exc:  # a path the user named cannot be read or written
        if os.environ.get("BASTION_DEBUG") or exc.filename is None:
            _internal(exc)
        print_error(f"{exc.strerror or exc}: {exc.filename}")
        sys.exit(2)
    except Exception as exc:  # an internal bug: one line unless debugging
        _internal(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _internal(exc: Exception) -> None:
    if os.environ.get("BASTION_DEBUG"):
        raise exc
    print_error(
        f"{type(exc).__name__}: {exc} (rerun with BASTION_DEBUG=1 for the traceback and report it)",
        label="internal error:",
    )
    sys.exit(1)
