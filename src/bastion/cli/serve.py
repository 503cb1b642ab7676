"""`bastion serve`: the guarded gateway (FastAPI + uvicorn) in front of a model.

    bastion serve --model DIR --config serve.yaml [--host H --port P --db URL
                  --redis-url URL --ssl-certfile CERT --ssl-keyfile KEY]

Flags override serve.yaml. TLS: give both certificate files (uvicorn terminates TLS).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bastion.cli.common import console

if TYPE_CHECKING:
    from bastion.cli.demo import DemoContext


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        model: Annotated[Path | None, typer.Option(help="model directory (bastion train)")] = None,
        config: Annotated[Path | None, typer.Option(help="serve.yaml (see examples/)")] = None,
        host: Annotated[
            str | None, typer.Option(help="address to bind (default 127.0.0.1)")
        ] = None,
        port: Annotated[int | None, typer.Option(help="port (default 8000)")] = None,
        db: Annotated[
            str | None, typer.Option(help="database URL for keys, reviews, audit")
        ] = None,
        redis_url: Annotated[str | None, typer.Option(help="share rate limits via Redis")] = None,
        ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM)")] = None,
        ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
        log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
        access_log: Annotated[bool, typer.Option(help="log every request")] = False,
    ) -> None:
        """Serve a model behind auth, rate limits, validation, the guard, review and audit."""
        import uvicorn

        from bastion.serve.app import create_app
        from bastion.serve.settings import load_settings

        settings = load_settings(
            config, model_dir=model, host=host, port=port, db_url=db, redis_url=redis_url,
            ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
        )  # fmt: skip
        scheme = "https" if settings.ssl_certfile else "http"
        console.print(f"serving {settings.model_dir} on {scheme}://{settings.host}:{settings.port}")
        uvicorn.run(
            create_app(settings), host=settings.host, port=settings.port,
            ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
            ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
            log_level=log_level, access_log=access_log, server_header=False,
        )  # fmt: skip


def demo_stage(ctx: DemoContext) -> None:
    """Create a client key in a demo database and print how to serve and call the model."""
    from bastion.serve.audit_adapter import append_sync
    from bastion.store.db import make_engine
    from bastion.store.keys import create_key

    if ctx.model_dir is None:
        ctx.add("serve", "skipped: no model", "")
        return
    out = Path(ctx.out) / "serve"
    out.mkdir(parents=True, exist_ok=True)
    db_path = (out / "serve.db").resolve()
    url = f"sqlite:///{db_path}"
    engine = make_engine(url)
    info, secret = create_key(engine, "client", "demo client")
    _, reviewer = create_key(engine, "reviewer", "demo reviewer")
    append_sync(url, {"kind": "key", "action": "create", "key_id": info.id, "by": "demo"})
    engine.dispose()
    if ctx.data is None:
        ctx.add("serve", "skipped: no data", "")
        return
    sample = (ctx.data.test.x[0] * 1e4).round() / 1e4  # one test image, 4 decimals
    body = {"inputs": [sample.tolist()]}
    (out / "sample.json").write_text(json.dumps(body))
    model_dir = Path(ctx.model_dir).resolve()
    serve_cmd = (
        f"bastion serve --model {shlex.quote(str(model_dir))} --db {shlex.quote(url)} --port 8000"
    )
    curl_cmd = (
        f"curl -s -H 'Authorization: Bearer {secret}' -H 'Content-Type: application/json' "
        f"--data @{shlex.quote(str((out / 'sample.json').resolve()))} http://127.0.0.1:8000/v1/predict"
    )
    (out / "README.txt").write_text(
        f"serve:  {serve_cmd}\ncall:   {curl_cmd}\n"
        f"reviewer key (dashboard at http://127.0.0.1:8000/): {reviewer}\n"
    )
    console.print("serve the model:")
    console.print(f"  {serve_cmd}", highlight=False, soft_wrap=True)
    console.print("then call it:")
    console.print(f"  {curl_cmd}", highlight=False, soft_wrap=True)
    console.print(f"dashboard: http://127.0.0.1:8000/ (reviewer key in {out / 'README.txt'})",
                  highlight=False)  # fmt: skip
    ctx.add("serve", f"client key {info.prefix}… created; serve + curl commands printed",
            out / "README.txt")  # fmt: skip
