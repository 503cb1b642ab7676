"""An OpenAI-compatible chat-completions endpoint as an assessment target (httpx).

``openai+https://HOST/v1`` (or ``openai+http://`` for local servers: vLLM, llama.cpp,
Ollama) names the API base; requests go to ``BASE/chat/completions`` with
``Authorization: Bearer KEY`` when a key is given. The key comes from an environment
variable (never the command line) and is never logged or put in an error message.
429 and 5xx answers and timeouts are retried with exponential backoff (``Retry-After``
honoured up to ``max_retry_after``); a refused connection or any other status is a
:class:`~bastion.errors.TargetError` at once. ``requests`` counts every HTTP request sent.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, Field

from bastion.assess.schema import ModelRef
from bastion.errors import ConfigError, TargetError

log = logging.getLogger(__name__)
SCHEMES = {"openai+https": "https", "openai+http": "http"}
RETRY_STATUS = {429, 500, 502, 503, 504}


class ToolCall(BaseModel):
    id: str = ""
    name: str
    arguments: str = "{}"


class Message(BaseModel):
    """One chat message in the OpenAI form (``tool_calls`` on assistant turns,
    ``tool_call_id`` on tool results)."""

    role: str
    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None

    def openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class ChatReply(BaseModel):
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: str | None = None
    model: str | None = None
    system_fingerprint: str | None = None
    completion_tokens: int | None = None

    @property
    def output_tokens(self) -> int:
        """Reported completion tokens, else an estimate (4 characters a token)."""
        if self.completion_tokens is not None:
            return self.completion_tokens
        return (len(self.content) + 3) // 4


class LLMTarget(Protocol):
    """What the runner needs of a chat target: the OpenAI endpoint (:class:`ChatTarget`)
    and the local causal LM (:class:`bastion.llm.hf_target.HFChatTarget`) both are one."""

    form: str
    base: str
    model: str
    requests: int

    def chat(
        self,
        messages: list[Message],
        *,
        tools: list[dict[str, Any]] | None = None,
        max_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> ChatReply: ...

    def model_ref(self, reported: Reported) -> ModelRef: ...


class Reported(BaseModel):
    """What the target said about itself in its answers: every distinct ``model`` name and
    ``system_fingerprint``, in the order first seen (more than one model name means that
    several models answered the assessment)."""

    models: list[str] = Field(default_factory=list)
    fingerprints: list[str] = Field(default_factory=list)

    def add(self, reply: ChatReply) -> None:
        if reply.model and reply.model not in self.models:
            self.models.append(reply.model)
        fp = reply.system_fingerprint
        if fp and fp not in self.fingerprints:
            self.fingerprints.append(fp)

    def capabilities(self) -> dict[str, Any]:
        """The report's ``model.capabilities`` entries."""
        return {
            "reported_model": self.models[0] if self.models else None,
            "reported_models": list(self.models),
            "system_fingerprints": list(self.fingerprints),
        }

    def note(self) -> str:
        if not self.models:
            return "the target named no model in its answers"
        if len(self.models) > 1:
            return f"answers came from several models: {', '.join(self.models)}"
        return f"the target answered as {self.models[0]}"


def parse_target(url: str) -> str:
    """``openai+https://HOST/v1`` → ``https://HOST/v1`` (the API base), or ConfigError."""
    scheme, _, rest = url.partition("://")
    if scheme not in SCHEMES or not rest:
        raise ConfigError(
            f"--target must be openai+https://HOST/v1 or openai+http://HOST/v1 (or hf:DIR, "
            f"a local causal LM directory), got {url!r}"
        )
    base = f"{SCHEMES[scheme]}://{rest.rstrip('/')}"
    if not urlsplit(base).hostname:
        raise ConfigError(f"--target {url!r} names no host")
    return base


def api_key_from_env(name: str | None) -> str | None:
    if not name:
        return None
    key = os.environ.get(name)
    if not key:
        raise ConfigError(f"environment variable {name} (the endpoint's API key) is not set")
    return key


class ChatTarget:
    """Send chat-completions requests to one model of one endpoint."""

    form = "openai-chat"

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_after: float = 60.0,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not model:
            raise ConfigError("give --llm-model NAME (the model the endpoint serves)")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ConfigError("timeout must be > 0, retries and backoff >= 0")
        self.url = url
        self.base = parse_target(url)
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.requests = 0
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.Client(timeout=timeout)
        self._own_client = client is None
        self._sleep = sleep

    def __repr__(self) -> str:  # never the key
        return f"ChatTarget({self.base!r}, model={self.model!r})"

    def model_ref(self, reported: Reported) -> ModelRef:
        """The report's model record: the endpoint and model asked for, and what the
        endpoint reported in its answers (``reported_model``, ``system_fingerprints``)."""
        return ModelRef(
            name=self.model,
            sha256=hashlib.sha256(f"{self.base}|{self.model}".encode()).hexdigest(),
            path=self.base,
            form=self.form,
            capabilities={**reported.capabilities(), "requests": self.requests},
            notes=[
                f"OpenAI-compatible chat endpoint {self.base}, model {self.model}; "
                + reported.note()
            ],
        )

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self) -> ChatTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _delay(self, attempt: int, resp: httpx.Response | None) -> float:
        delay = min(self.max_backoff, self.backoff * 2**attempt)
        asked = resp.headers.get("Retry-After") if resp is not None else None
        if asked is None:
            return delay
        try:
            wait = max(0.0, float(asked))
        except ValueError:
            return delay
        if wait > self.max_retry_after:
            raise TargetError(
                f"{self.base} is rate limiting and asks to wait {wait:g} s "
                f"(more than {self.max_retry_after:g} s): try later"
            )
        return wait

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        endpoint = f"{self.base}/chat/completions"
        last = ""
        for attempt in range(self.retries + 1):
            resp = None
            self.requests += 1
            try:
                resp = self._client.post(endpoint, json=body, headers=self._headers)
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout:g} s"
            except httpx.TransportError as exc:
                raise TargetError(f"cannot reach {endpoint}: {type(exc).__name__}") from None
            else:
                if resp.status_code == 200:
                    return _json(resp, endpoint)
                if resp.status_code in (401, 403):
                    raise TargetError(
                        f"{endpoint} refused the request (HTTP {resp.status_code}): "
                        "check the key in --api-key-env"
                    )
                if resp.status_code not in RETRY_STATUS:
                    raise TargetError(
                        f"{endpoint} answered HTTP {resp.status_code}: {resp.text[:200]!r}"
                    )
                last = f"HTTP {resp.status_code}"
            if attempt < self.retries:
                delay = self._delay(attempt, resp)
                log.info("%s: %s; retry %d in %.2f s", endpoint, last, attempt + 1, delay)
                self._sleep(delay)
        raise TargetError(f"{endpoint} failed after {self.retries + 1} attempt(s): {last}")

    def chat(
        self,
        messages: list[Message],
        *,
        tools: list[dict[str, Any]] | None = None,
        max_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> ChatReply:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [m.openai() for m in messages],
            "temperature": temperature,
        }
        if tools:
            body["tools"] = tools
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return parse_reply(self._post(body), self.base)


def _json(resp: httpx.Response, endpoint: str) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        raise TargetError(f"{endpoint} answered non-JSON: {resp.text[:200]!r}") from None
    if not isinstance(data, dict):
        raise TargetError(f"{endpoint} answered a JSON {type(data).__name__}, not an object")
    return data


def parse_reply(data: dict[str, Any], where: str) -> ChatReply:
    """The first choice of a chat-completions answer, or TargetError naming what is wrong."""
    try:
        choice = data["choices"][0]
        msg = choice["message"]
        calls = [
            ToolCall(
                id=str(c.get("id", "")),
                name=str(c["function"]["name"]),
                arguments=str(c["function"].get("arguments") or "{}"),
            )
            for c in msg.get("tool_calls") or []
        ]
        usage = data.get("usage") or {}
        tokens = usage.get("completion_tokens")
        return ChatReply(
            content=str(msg.get("content") or ""),
            tool_calls=calls,
            finish_reason=choice.get("finish_reason"),
            model=data.get("model"),
            system_fingerprint=data.get("system_fingerprint") or None,
            completion_tokens=int(tokens) if isinstance(tokens, int) else None,
        )
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise TargetError(
            f"{where}: not a chat-completions answer (missing {exc}): {str(data)[:200]!r}"
        ) from None
