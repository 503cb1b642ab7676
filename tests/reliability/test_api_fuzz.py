"""Schemathesis over the whole OpenAPI document of a real ``bastion serve`` (issue 14).

One server process (uvicorn on loopback, the small digits CNN, no guard: ``--allow-unguarded``)
serves the module; schemathesis draws requests for every operation of the document the server
publishes at ``/openapi.json`` -- positive and negative data, as an admin (every route is
reachable) and without a key -- and checks each answer: no 5xx, the status code, the content
type, the headers and the body as documented. A stateful run follows the document's links
(a created key is revoked, a put block is read and deleted, a held ticket is looked up).

``BASTION_API_FUZZ_EXAMPLES`` sets the examples per operation (default 5: the fast part of
``make test``; ``make reliability`` raises it). Schemathesis and its checks:
https://schemathesis.readthedocs.io (Hatfield-Dodds & Dygalo, "Deriving semantics-aware
fuzzers from web API schemas", ICSE-Companion 2022).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ensure_resource_availability,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    use_after_free,
)

from bastion.store.db import make_engine
from bastion.store.keys import create_key
from tests.ports import free_port

EXAMPLES = int(os.environ.get("BASTION_API_FUZZ_EXAMPLES", "5"))
# unsupported_method is not here: schemathesis runs it only in its CLI's coverage phase;
# test_unsupported_methods_answer_405_with_the_allow_header does its work directly.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
AS_ADMIN = [*CHECKS, ignored_auth]  # the same request without the key must be refused
STATEFUL = [*AS_ADMIN, use_after_free, ensure_resource_availability]
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=10),
    suppress_health_check=list(HealthCheck),
    database=None,
)


@dataclass
class Server:
    """The running gateway, its database and the admin key the fuzzer sends."""

    base_url: str
    db_url: str
    proc: subprocess.Popen
    admin_id: int = 0
    admin_key: str = ""
    rotations: int = field(default=0)

    def new_admin(self) -> None:
        engine = make_engine(self.db_url)
        try:
            info, secret = create_key(engine, "admin", "api fuzz")
        finally:
            engine.dispose()
        self.admin_id, self.admin_key = info.id, secret

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def after(self, case: schemathesis.Case, status: int) -> None:
        """The fuzzer may revoke the very key it sends (ids are small integers): mint a new
        admin key then, so later cases still reach the authorised routes."""
        revoked = case.operation.path == "/v1/keys/{key_id}/revoke" and status == 200
        if revoked and (case.path_parameters or {}).get("key_id") == self.admin_id:
            self.rotations += 1
            self.new_admin()


def _start(model_dir: Path, tmp: Path) -> Server:
    db_url = f"sqlite:///{tmp / 'api-fuzz.db'}"
    port = free_port()
    log = (tmp / "serve.log").open("wb")
    cmd = [
        sys.executable,
        "-m",
        "bastion.cli",
        "serve",
        "--model",
        str(model_dir),
        "--db",
        db_url,
        "--port",
        str(port),
        "--allow-unguarded",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    env = {**os.environ, "BASTION_LOG": "WARNING", "BASTION_DB": db_url}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", db_url, proc)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"bastion serve exited: {(tmp / 'serve.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{server.base_url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("bastion serve did not answer /healthz within 120 s")
        time.sleep(0.2)
    server.new_admin()
    return server


@pytest.fixture(scope="module")
def server(digits_model_dir, tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("api-fuzz")
    srv = _start(digits_model_dir, tmp)
    try:
        yield srv
    finally:
        srv.proc.terminate()
        try:
            srv.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait()
        log = (tmp / "serve.log").read_text(errors="replace")
        assert "Traceback" not in log, f"the server logged a traceback:\n{log[-4000:]}"


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")


def _operations() -> list[str]:
    """``METHOD path`` of every operation the gateway documents (the document built from the
    route table; no model is loaded). ``test_every_operation_is_fuzzed`` checks it against
    the served document. (Schemathesis' lazy ``from_fixture`` loader breaks on pytest 9,
    hence one parametrised test per operation instead of ``schema.parametrize()``.)"""
    from bastion.serve.app import create_app
    from bastion.serve.settings import ServeSettings

    paths = create_app(ServeSettings()).openapi()["paths"]
    return sorted(f"{method.upper()} {path}" for path, ops in paths.items() for method in ops)


OPERATIONS = _operations()


def _fuzz(api_schema, operation: str, examples: int, send) -> None:
    """Draw ``examples`` positive and as many negative cases of ``operation``; ``send``
    calls and validates each."""
    method, path = operation.split(" ", 1)
    op = api_schema[path][method]
    raw = op.definition.raw
    modes = [GenerationMode.POSITIVE]
    if raw.get("parameters") or "requestBody" in raw:  # else there is nothing to make invalid
        modes.append(GenerationMode.NEGATIVE)
    for mode in modes:
        strategy = op.as_strategy(generation_mode=mode)

        @settings(SETTINGS, max_examples=examples)
        @given(case=strategy)
        def run(case) -> None:
            send(case)

        run()


def test_every_operation_is_fuzzed(api_schema):
    served = sorted(
        f"{r.ok().method.upper()} {r.ok().path}" for r in api_schema.get_all_operations()
    )
    assert served == OPERATIONS


@pytest.mark.parametrize("operation", OPERATIONS)
def test_api_as_admin(api_schema, server, operation):
    """Every operation, as an admin: the answers are those the document promises."""

    def send(case) -> None:
        response = case.call(base_url=server.base_url, headers=server.auth(), timeout=30)
        server.after(case, response.status_code)
        case.validate_response(response, checks=AS_ADMIN, headers=server.auth())

    _fuzz(api_schema, operation, EXAMPLES, send)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_api_without_a_key(api_schema, server, operation):
    """Every operation without a key: the documented answers, 401 where a key is required."""
    method, path = operation.split(" ", 1)
    secured = bool(api_schema[path][method].definition.raw.get("security"))

    def send(case) -> None:
        response = case.call_and_validate(base_url=server.base_url, checks=CHECKS, timeout=30)
        if secured:
            # 400 too: FastAPI decodes a JSON body before it resolves the route's
            # dependencies (the key check among them), so a body that is not JSON is refused
            # as such first; nothing of the route runs either way.
            assert response.status_code in (400, 401, 413), response.text

    _fuzz(api_schema, operation, max(2, EXAMPLES // 4), send)


def test_api_stateful_links(api_schema, server):
    """Scenarios that follow the document's links (create key -> revoke, block -> get ->
    delete, predict -> ticket) with the same checks."""

    class Links(api_schema.as_state_machine()):
        def get_call_kwargs(self, case):
            return {"base_url": server.base_url, "headers": server.auth(), "timeout": 30}

        def after_call(self, response, case):
            super().after_call(response, case)
            server.after(case, response.status_code)

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(
                response,
                checks=STATEFUL,
                headers=server.auth(),
                transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )

    Links.run(
        settings=settings(
            SETTINGS,
            max_examples=max(3, EXAMPLES),
            stateful_step_count=6,
        )
    )


def test_the_checks_can_fail(api_schema, server):
    """The checks are live: ``GET /v1/keys``'s answer is not what ``GET /healthz`` documents."""
    import requests
    from schemathesis.core.failures import FailureGroup

    response = requests.get(f"{server.base_url}/v1/keys", headers=server.auth(), timeout=30)
    assert response.status_code == 200
    case = api_schema["/healthz"]["GET"].Case()
    with pytest.raises(FailureGroup):
        case.validate_response(response, checks=CHECKS)


def test_unsupported_methods_answer_405_with_the_allow_header(api_schema, server):
    """Every path × every method it does not document: 405, ``Allow`` naming exactly the
    documented methods (RFC 9110 §15.5.6), and the one error body. (Schemathesis'
    ``unsupported_method`` check runs only in its CLI's coverage phase, hence this loop.)"""
    import requests

    documented: dict[str, set[str]] = {}
    for op in OPERATIONS:
        method, path = op.split(" ", 1)
        documented.setdefault(path, set()).add(method)
    for path, methods in documented.items():
        case = api_schema[path][sorted(methods)[0]].Case(
            path_parameters={name: 1 for name in re.findall(r"{(\w+)}", path)}
        )
        url = server.base_url + case.formatted_path
        for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - methods):
            r = requests.request(method, url, headers=server.auth(), timeout=30)
            assert r.status_code == 405, (method, path, r.status_code, r.text)
            allow = {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()}
            assert allow - {"HEAD"} == methods, (method, path, r.headers.get("allow"))
            body = r.json()
            assert body["code"] and method in body["detail"], body
