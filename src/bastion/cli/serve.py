"""`bastion serve`: the guarded gateway (FastAPI + uvicorn) in front of a model.

    bastion serve --upstream openai+http://HOST/v1 [--upstream-key-env VAR] [--profile app.yaml]
                  [--audit-content] [--config serve.yaml --host H --port P --db URL ...]
    bastion serve --model PATH [--entry-point M:F --weights W --onnx-mode M --trust T]
                  [--data TRAIN.csv (+ the data flags of `bastion assess`)] [--guard-dir DIR]
                  --config serve.yaml [--host H --port P --db URL --redis-url URL
                  --workers N --ssl-certfile CERT --ssl-keyfile KEY]

``--model`` is any form `bastion assess` reads. Requests are validated against the model's
input spec: from its provenance, its fitted guard, or ``--data`` (the training data, read
with the same flags as in `bastion assess`); with none of them the server does not start.
Flags override serve.yaml. TLS: give both certificate files (uvicorn terminates TLS).
``--require-signature PUB.pem`` refuses (one line, exit 2) to load a model whose OpenSSF
model-signing signature (``bastion attest sign``) does not verify.

Everything is opened before "serving on …" is printed: the model and its guard (a guard
that is there but unusable refuses the start unless ``--allow-unguarded``), the store, the
audit log and its key, Redis, the TLS files and the listening socket. A problem with any of
them is one line and exit 2 (:mod:`bastion.serve.startup`). ``--workers N`` runs N gateway
processes on the one port (:mod:`bastion.serve.workers`; they share state through Redis).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bastion.cli.common import (
    BoundsOpt,
    DataRootOpt,
    FrozenOpt,
    IntegerOpt,
    LabelColumnOpt,
    LayoutOpt,
    LowerOpt,
    ModalityOpt,
    ScaleOpt,
    ShapeOpt,
    UpperOpt,
    console,
    data_options_from,
)
from bastion.cli.guard import (
    ONNX_MODES,
    EntryPointOpt,
    GuardDirOpt,
    ModelPathOpt,
    TrustOpt,
    WeightsOpt,
)
from bastion.cli.validate import choice_check, count_check
from bastion.errors import ConfigError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")

if TYPE_CHECKING:
    from bastion.cli.demo import DemoContext


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        model: ModelPathOpt = None,
        entry_point: EntryPointOpt = None,
        weights: WeightsOpt = None,
        onnx_mode: Annotated[
            str | None,
            typer.Option(help="ONNX: auto (convert, else onnxruntime) | torch | runtime"),
        ] = None,
        trust: TrustOpt = None,
        data: Annotated[
            str | None,
            typer.Option(
                help="training data whose input spec (per-feature bounds, integer features) "
                "requests are checked against, when the model's provenance and guard have none"
            ),
        ] = None,
        data_root: DataRootOpt = None,
        modality: ModalityOpt = None,
        shape: ShapeOpt = None,
        layout: LayoutOpt = None,
        scale: ScaleOpt = None,
        lower: LowerOpt = None,
        upper: UpperOpt = None,
        bounds: BoundsOpt = None,
        integer: IntegerOpt = None,
        frozen: FrozenOpt = None,
        label_column: LabelColumnOpt = None,
        guard_dir: GuardDirOpt = None,
        allow_unguarded: Annotated[
            bool,
            typer.Option(
                "--allow-unguarded",
                help="serve without the guard when the one found cannot be used (corrupt, "
                "truncated, missing weights, other weights) instead of refusing to start",
            ),
        ] = False,
        config: Annotated[Path | None, typer.Option(help="serve.yaml (see examples/)")] = None,
        host: Annotated[
            str | None, typer.Option(help="address to bind (default 127.0.0.1)")
        ] = None,
        port: Annotated[
            int | None,
            typer.Option(help="port 1 … 65535 (default 8000)", callback=count_check(1, 65535)),
        ] = None,
        db: Annotated[
            str | None, typer.Option(help="database URL for keys, reviews, audit")
        ] = None,
        redis_url: Annotated[
            str | None, typer.Option(help="share rate limits and guard state via Redis")
        ] = None,
        workers: Annotated[
            int | None,
            typer.Option(
                help="gateway processes on the one port (one core each; more than one shares "
                "state through --redis-url)",
                callback=count_check(1, 64),
            ),
        ] = None,
        ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM)")] = None,
        ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
        log_level: Annotated[
            str,
            typer.Option(help="uvicorn log level", callback=choice_check(LOG_LEVELS, "log level")),
        ] = "info",
        access_log: Annotated[bool, typer.Option(help="log every request")] = False,
        output: Annotated[
            str | None,
            typer.Option(
                help="what answers reveal: scores | top-k | labels (default scores)",
                callback=choice_check(("scores", "top-k", "labels"), "output"),
            ),
        ] = None,
        top_k: Annotated[
            int | None,
            typer.Option(help="classes returned with --output top-k", callback=count_check()),
        ] = None,
        round_scores: Annotated[
            int | None,
            typer.Option(
                "--round",
                help="decimals kept in returned scores (0 … 12)",
                callback=count_check(0, 12),
            ),
        ] = None,
        require_signature: Annotated[
            Path | None,
            typer.Option(
                help="ECDSA public key PEM: refuse to load the model unless its OpenSSF "
                "model-signing signature verifies (see `bastion attest sign`)"
            ),
        ] = None,
        model_signature: Annotated[
            Path | None,
            typer.Option(help="the model's signature (default: DIR/model.sig or FILE.sig)"),
        ] = None,
        upstream: Annotated[
            str | None,
            typer.Option(
                help="LLM firewall: proxy /v1/chat/completions to openai+http(s)://HOST/v1 "
                "instead of serving a model (see docs/llm.md)"
            ),
        ] = None,
        upstream_key_env: Annotated[
            str | None,
            typer.Option(help="environment variable holding the upstream's API key"),
        ] = None,
        profile: Annotated[
            Path | None,
            typer.Option(help="LLM firewall: application profile YAML (canaries, tools)"),
        ] = None,
        audit_content: Annotated[
            bool | None,
            typer.Option(
                "--audit-content",
                help="LLM firewall: log prompts and outputs in the audit log (default: hashes)",
            ),
        ] = None,
        injection_classifier: Annotated[
            Path | None,
            typer.Option(
                help="LLM firewall: a Hugging Face sequence-classification directory "
                "(safetensors) scoring prompt injection with the heuristics"
            ),
        ] = None,
    ) -> None:
        """Serve a model behind auth, rate limits, validation, the guard, review and audit."""
        import uvicorn

        from bastion.llm.firewall.config import wants_firewall
        from bastion.serve.app import create_app
        from bastion.serve.runtime import Runtime
        from bastion.serve.settings import load_settings
        from bastion.serve.startup import bind, preflight, serve_on
        from bastion.serve.workers import check_workers, run_workers

        if wants_firewall(config, upstream):  # the LLM firewall instead of a model
            from bastion.llm.firewall.app import create_firewall_app
            from bastion.llm.firewall.config import (
                load_firewall_settings,
                load_profile,
                upstream_key,
            )

            if model is not None or entry_point is not None or data is not None:
                raise ConfigError("--upstream replaces --model/--entry-point/--data: give one")
            settings, fw = load_firewall_settings(
                config,
                {
                    "upstream": upstream,
                    "upstream_key_env": upstream_key_env,
                    "profile": profile,
                    "audit_content": audit_content,
                    "injection_classifier": injection_classifier,
                },
                {
                    "host": host,
                    "port": port,
                    "db_url": db,
                    "redis_url": redis_url,
                    "ssl_certfile": ssl_certfile,
                    "ssl_keyfile": ssl_keyfile,
                    "workers": workers,
                },
            )
            if settings.workers > 1:  # from --workers or serve.yaml alike
                raise ConfigError("the LLM firewall runs in one process: drop workers")
            app_profile = load_profile(fw)
            upstream_key(fw)  # a missing key variable is one line, before binding
            preflight(settings)
            sock = bind(settings.host, settings.port)
            scheme = "https" if settings.ssl_certfile else "http"
            console.print(
                f"LLM firewall on {scheme}://{settings.host}:{sock.getsockname()[1]} in front "
                f"of {fw.base_url}; profile "
                f"{app_profile.name if app_profile else 'none'}; audit "
                f"{'content' if fw.audit_content else 'hashes'}",
                highlight=False,
                soft_wrap=True,
            )
            server = uvicorn.Server(
                uvicorn.Config(
                    create_firewall_app(settings, fw, app_profile),
                    ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
                    ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
                    log_level=log_level,
                    access_log=access_log,
                    server_header=False,
                )
            )
            serve_on(server, sock)
            return

        if onnx_mode is not None and onnx_mode not in ONNX_MODES:
            raise ConfigError(f"--onnx-mode must be one of {', '.join(ONNX_MODES)}")
        data_section = None
        if data is not None:
            opts = data_options_from(locals())
            data_section = {
                "path": data,
                "root": data_root,
                "options": opts.model_dump(exclude_unset=True),
            }
        settings = load_settings(
            config,
            model_dir=model,
            entry_point=entry_point,
            weights=weights,
            onnx_mode=onnx_mode,
            trust=trust or None,
            data=data_section,
            host=host,
            port=port,
            db_url=db,
            redis_url=redis_url,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            workers=workers,
        )
        if guard_dir is not None or allow_unguarded:
            update: dict[str, object] = {"dir": guard_dir} if guard_dir is not None else {}
            if allow_unguarded:
                update["allow_unguarded"] = True
            guard = settings.guard.model_copy(update=update)
            settings = settings.model_copy(update={"guard": guard})
        policy = {"mode": output, "k": top_k, "round": round_scores}
        if any(v is not None for v in policy.values()):
            from bastion.config import validate
            from bastion.serve.output import OutputPolicy

            given = {k: v for k, v in policy.items() if v is not None}
            merged = {**settings.output.model_dump(), **given}
            settings = settings.model_copy(
                update={"output": validate(OutputPolicy, merged, "--output/--top-k/--round")}
            )
        if require_signature is not None:  # before anything reads the model files
            from bastion.scan.signing import require_signature as check_signature

            verified = check_signature(
                settings.model_dir,
                require_signature,
                signature=model_signature,
                entry_point=settings.entry_point,
                weights=settings.weights,
            )
            console.print(
                f"signature {verified.line()}", highlight=False, markup=False, soft_wrap=True
            )
        elif model_signature is not None:
            raise ConfigError("--model-signature goes with --require-signature PUB.pem")
        runtime = Runtime.from_settings(settings)  # errors here are one line, before binding
        check_workers(settings)
        preflight(settings)  # the store, the audit log and its key, Redis, TLS: one line each
        sock = bind(settings.host, settings.port)
        port = sock.getsockname()[1]
        scheme = "https" if settings.ssl_certfile else "http"
        what = settings.model_dir or settings.entry_point
        n = settings.workers
        console.print(
            f"serving {what} ({runtime.loaded.form}) on {scheme}://{settings.host}:"
            f"{port}{f' with {n} workers' if n > 1 else ''}; inputs "
            f"{runtime.input_spec.describe()} from {runtime.spec_source}; "
            f"guard {'on' if runtime.guard is not None else 'off'}; answers: "
            f"{settings.output.describe()}",
            highlight=False,
            soft_wrap=True,
        )
        options = {
            "ssl_certfile": str(settings.ssl_certfile) if settings.ssl_certfile else None,
            "ssl_keyfile": str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
            "log_level": log_level,
            "access_log": access_log,
        }
        if n > 1:
            del runtime  # each worker loads its own
            run_workers(settings, sock, **options)
            return
        app = create_app(settings)
        app.state.runtime = runtime
        serve_on(uvicorn.Server(uvicorn.Config(app, server_header=False, **options)), sock)


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
    console.print(
        f"dashboard: http://127.0.0.1:8000/ (reviewer key in {out / 'README.txt'})", highlight=False
    )
    ctx.add(
        "serve",
        f"client key {info.prefix}… created; serve + curl commands printed",
        out / "README.txt",
    )
