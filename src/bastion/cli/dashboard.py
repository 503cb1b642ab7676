"""`bastion dashboard`: the compliance dashboard, read-only, without a model.

    bastion dashboard --runs DIR --db URL [--register register.json] [--host H --port P]

Serves the dashboard's pages (login, overview, assessments, risk register, review queue,
clients, audit) over the store at ``--db`` and the run folders in ``--runs`` (each holding
a report.json, as `bastion assess --out` writes; the store's recorded runs are listed
too). Nothing can be edited, whatever the role: deciding reviews, unblocking clients and
editing risks are `bastion serve`'s. Everything is opened and checked before "dashboard
on …" is printed; a missing runs folder, a bad database URL or a port in use is one line
and exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bastion.cli.common import console
from bastion.cli.serve import LOG_LEVELS
from bastion.cli.validate import choice_check, count_check
from bastion.errors import ConfigError


def _runs_folder(path: Path) -> Path:
    if not path.exists():
        raise ConfigError(f"--runs {path}: no such folder (give the folder of the run folders)")
    if not path.is_dir():
        raise ConfigError(f"--runs {path}: not a folder (give the folder of the run folders)")
    return path.resolve()


def register(app: typer.Typer) -> None:
    @app.command()
    def dashboard(
        runs: Annotated[
            Path,
            typer.Option(help="folder of assessment run folders (each with a report.json)"),
        ],
        db: Annotated[
            str | None,
            typer.Option(help="database URL of the store: keys, reviews, runs, audit"),
        ] = None,
        register_file: Annotated[
            Path | None,
            typer.Option("--register", help="risk register JSON (`bastion risk init`)"),
        ] = None,
        attestation_key: Annotated[
            Path | None,
            typer.Option(
                help="trusted Ed25519 public key (PEM, `bastion keys signing-init`'s .pub): "
                "the overview verifies each run's attestation with it"
            ),
        ] = None,
        host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
        port: Annotated[
            int, typer.Option(help="port 1 … 65535", callback=count_check(1, 65535))
        ] = 8000,
        log_level: Annotated[
            str,
            typer.Option(help="uvicorn log level", callback=choice_check(LOG_LEVELS, "log level")),
        ] = "info",
    ) -> None:
        """Serve the dashboard read-only from stored runs, keys, reviews and audit (no model)."""
        import uvicorn

        from bastion.dashboard.readonly import create_readonly_app
        from bastion.serve.settings import DashboardSettings, ServeSettings
        from bastion.serve.startup import bind, check_audit, check_store, serve_on

        folder = _runs_folder(runs)
        if register_file is not None and not register_file.is_file():
            raise ConfigError(f"--register {register_file}: no such file")
        if attestation_key is not None:
            from bastion.gate.keys import load_public_key

            if not attestation_key.is_file():
                raise ConfigError(f"--attestation-key {attestation_key}: no such file")
            load_public_key(attestation_key)  # not a PEM Ed25519 public key: one line
        settings = ServeSettings(
            db_url=db,
            host=host,
            port=port,
            risk_register=register_file,
            dashboard=DashboardSettings(attestation_key=attestation_key),
        )
        check_store(settings.db_url)  # a bad URL or an unreachable server: one line
        check_audit(settings)
        sock = bind(settings.host, settings.port)
        bound = sock.getsockname()[1]
        app = create_readonly_app(settings, folder)
        console.print(
            f"dashboard (read-only) on http://{settings.host}:{bound}; runs from {folder} "
            "and the store",
            highlight=False,
            soft_wrap=True,
        )
        server = uvicorn.Server(
            uvicorn.Config(app, log_level=log_level, access_log=False, server_header=False)
        )
        serve_on(server, sock)
