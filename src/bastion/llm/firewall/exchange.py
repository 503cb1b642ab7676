"""The records of one chat request through the firewall: the request and answer models,
the token estimate, and :class:`Exchange` (what fired, and the audit entry).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from bastion.llm.firewall.records import Finding, worst
from bastion.llm.firewall.scanners import Firewall, message_texts
from bastion.serve.reviews import HeldResult
from bastion.store.keys import KeyInfo

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    """The OpenAI chat-completions body; fields not named here pass through unchanged."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessageIn] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=16)


class FirewallNote(BaseModel):
    """What the firewall did (on every answer, and on the chunk that stops a stream)."""

    request_id: str
    rules: list[str] = Field(default_factory=list, description="rules that fired: rule:action")
    stopped: bool = False
    reason: str | None = None


class ChatCompletion(BaseModel):
    """The upstream's answer as scanned (other fields pass through)."""

    model_config = ConfigDict(extra="allow")

    id: str = ""
    object: str = "chat.completion"
    model: str = ""
    choices: list[dict[str, Any]]
    bastion: FirewallNote | None = None


class HeldChatResult(HeldResult):
    """What the review queue keeps of a held chat request: the prompt, and the scanned
    answer (or why the output rules blocked it)."""

    prompt: list[dict[str, Any]] = Field(default_factory=list)
    completion: dict[str, Any] | None = None
    blocked_reason: str | None = None


class OpenAIError(BaseModel):
    message: str
    type: str = "bastion_firewall"
    code: str = Field(description="the rule that fired, e.g. input.injection")


class FirewallRefusal(BaseModel):
    """A prompt or an answer the firewall refused (400 / 403)."""

    detail: str
    code: Literal["bad_request", "forbidden"]
    request_id: str
    error: OpenAIError


class ModelList(BaseModel):
    model_config = ConfigDict(extra="allow")

    object: str = "list"
    data: list[dict[str, Any]] = Field(default_factory=list)


class HeldChat(BaseModel):
    """A held request's ticket; ``completion`` once a reviewer approved it; reviewers and
    admins also see the prompt."""

    ticket: str
    status: Literal["held", "approved", "rejected"]
    request_id: str
    poll: str
    reasons: list[str] = Field(default_factory=list)
    completion: ChatCompletion | None = None
    blocked_reason: str | None = None
    prompt: list[dict[str, Any]] | None = None


def estimate_tokens(body: ChatCompletionRequest, default_completion: int) -> int:
    """ceil(characters / 4) of the messages' text, 4 per message, plus the completion's cap."""
    chars = sum(len(t) for m in body.messages for t in message_texts(m.model_dump()))
    out = body.max_completion_tokens or body.max_tokens or default_completion
    return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(body.messages) + out


def sha256_json(value: Any) -> str:
    data = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _rules(findings: list[Finding]) -> list[str]:
    return list(dict.fromkeys(f"{f.rule}:{f.action}" for f in findings))


class Exchange:
    """One request through the firewall: what it was, what fired, what goes to the log."""

    def __init__(self, request: Request, key: KeyInfo, body: ChatCompletionRequest) -> None:
        self.state = request.app.state
        self.start = time.perf_counter()
        self.request_id = uuid.uuid4().hex
        self.key = key
        self.body = body
        self.messages = [m.model_dump(exclude_unset=True) for m in body.messages]
        self.findings: list[Finding] = []
        self.output_raw = ""
        self.output_sent = ""
        self.entry: dict[str, Any] = {
            "kind": "llm_decision",
            "request_id": self.request_id,
            "key_id": key.id,
            "upstream": self.state.firewall_settings.base_url,
            "model": body.model,
            "stream": body.stream,
            "prompt_sha256": sha256_json(self.messages),
        }

    @property
    def firewall(self) -> Firewall:
        return self.state.firewall

    def note(self, *, stopped: bool = False, reason: str | None = None) -> FirewallNote:
        return FirewallNote(
            request_id=self.request_id, rules=_rules(self.findings), stopped=stopped, reason=reason
        )

    async def audit(self, outcome: str, **extra: Any) -> int:
        metrics = self.state.fw_metrics
        for f in self.findings:
            metrics.findings.labels(rule=f.rule).inc()
        self.entry.update(
            outcome=outcome,
            action=worst(self.findings),
            findings=[
                {"rule": f.rule, "action": f.action, "reason": f.reason} for f in self.findings
            ],
            output_sha256=sha256_text(self.output_raw),
            delivered_sha256=sha256_text(self.output_sent),
            latency_ms=round((time.perf_counter() - self.start) * 1000, 3),
            **extra,
        )
        if self.state.firewall_settings.audit_content:
            self.entry.update(prompt=self.messages, output=self.output_sent)
        started = time.perf_counter()
        index = await self.state.audit.submit(self.entry)
        self.state.metrics.audit_seconds.observe(time.perf_counter() - started)
        return index


def passthrough(status_code: int, text: str) -> Response:
    """An upstream's answer passed back as it came."""
    return Response(text, status_code, media_type="application/json")
