"""The OpenAI-compatible upstream as the firewall calls it (httpx, async).

One request per client request: no retries (the client retries, and a retried stream
would repeat text already sent). The upstream's key, when set, replaces the client's
``Authorization`` (the client's Bastion key never goes upstream). A refused connection
or a timeout is an :class:`UpstreamError` (the route answers 502 / 504); any other status
is passed back to the client as the upstream gave it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx


class UpstreamError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class UpstreamAnswer:
    status: int
    body: dict[str, Any] | None  # the JSON object, when the answer was one
    text: str


class Upstream:
    def __init__(self, base: str, *, api_key: str | None, timeout_s: float) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )

    def __repr__(self) -> str:  # never the key
        return f"Upstream({self.base!r})"

    async def aclose(self) -> None:
        await self.client.aclose()

    def _fail(self, exc: httpx.HTTPError) -> UpstreamError:
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamError(504, f"the upstream {self.base} timed out")
        return UpstreamError(502, f"cannot reach the upstream {self.base}: {type(exc).__name__}")

    async def get(self, path: str) -> UpstreamAnswer:
        try:
            resp = await self.client.get(f"{self.base}{path}", headers=self.headers)
        except httpx.HTTPError as exc:
            raise self._fail(exc) from None
        return _answer(resp.status_code, resp.text)

    async def post(self, path: str, body: dict[str, Any]) -> UpstreamAnswer:
        try:
            resp = await self.client.post(f"{self.base}{path}", json=body, headers=self.headers)
        except httpx.HTTPError as exc:
            raise self._fail(exc) from None
        return _answer(resp.status_code, resp.text)

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[SseEvent]:
        """The upstream's SSE events (``data`` payloads; ``done`` at ``[DONE]``). A non-200
        answer is raised as :class:`UpstreamStatus` before any event."""
        try:
            async with self.client.stream(
                "POST", f"{self.base}{path}", json=body, headers=self.headers
            ) as resp:
                if resp.status_code != 200:
                    text = (await resp.aread()).decode("utf-8", "replace")
                    raise UpstreamStatus(_answer(resp.status_code, text))
                data: list[str] = []
                async for line in resp.aiter_lines():
                    if line.startswith("data:"):
                        data.append(line[5:].lstrip(" "))
                    elif not line.strip() and data:
                        event = "\n".join(data)
                        data = []
                        if event.strip() == "[DONE]":
                            yield SseEvent(None, done=True)
                            return
                        yield SseEvent(_json_object(event))
                if data and "\n".join(data).strip() != "[DONE]":
                    yield SseEvent(_json_object("\n".join(data)))
        except httpx.HTTPError as exc:
            raise self._fail(exc) from None


@dataclass(frozen=True)
class SseEvent:
    data: dict[str, Any] | None
    done: bool = False


class UpstreamStatus(Exception):
    def __init__(self, answer: UpstreamAnswer) -> None:
        super().__init__(f"upstream answered {answer.status}")
        self.answer = answer


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _answer(status: int, text: str) -> UpstreamAnswer:
    return UpstreamAnswer(status, _json_object(text), text)
