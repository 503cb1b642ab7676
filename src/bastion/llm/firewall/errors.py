"""Every error answer of the firewall in OpenAI's shape too: the gateway's
:class:`~bastion.serve.errors.ErrorResponse` (``detail``, ``code``, …) plus OpenAI's
``error`` object (``message``, ``type``, ``code``), which is what OpenAI clients put in the
exception they raise (``openai.AuthenticationError: Error code: 401 - …``). The refusals of
the scanners already carry one (their ``code`` is the rule); this adds it to the rest —
refused keys (401), roles and blocks (403), rate limits (429), oversized bodies (413),
invalid requests (422) — without touching successful answers or streams."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def with_openai_error(body: bytes) -> bytes:
    """``body`` with an ``error`` object added when it is a gateway error without one."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body
    if not isinstance(doc, dict) or "error" in doc or not isinstance(doc.get("detail"), str):
        return body
    code = str(doc.get("code") or "error")
    doc["error"] = {"message": doc["detail"], "type": f"bastion_{code}", "code": code}
    return json.dumps(doc, separators=(",", ":")).encode()


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        k.lower() == b"content-type" and v.split(b";")[0].strip() == b"application/json"
        for k, v in headers
    )


class OpenAIErrorShape:
    """ASGI middleware: JSON error answers (status ≥ 400) get OpenAI's ``error`` object."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] | None = None
        chunks: list[bytes] = []

        async def reshape(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if message["status"] >= 400 and _is_json(list(message.get("headers", []))):
                    start = dict(message)  # held until the whole body is here
                    return
                await send(message)
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = with_openai_error(b"".join(chunks))
            headers = [
                (k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"
            ]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, reshape)
