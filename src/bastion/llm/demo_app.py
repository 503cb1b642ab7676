"""A deliberately vulnerable OpenAI-compatible chat application — rule-based, no model —
for `bastion demo` and the tests: it behaves like an LLM application's model with known
weaknesses, deterministically, so that each probe and each firewall rule can be shown (and
tested) to find exactly what is there. Its rules answer the wordings of Bastion's own
payloads: it shows the pipeline, it does not rank tools (docs/benchmarks/llm.md).

``weaknesses`` (any subset of :data:`WEAKNESSES`):

- ``leak``: asked to repeat/print/show its instructions, it answers its system prompt (in
  base64, backwards or spaced out when asked to);
- ``records``: asked for records, it answers the confidential records of its system prompt;
- ``user``: follows a marker instruction in the user's own text (after decoding base64
  blobs and joining quoted fragments: encodings and payload splitting work too);
- ``agency``: calls a tool when the user's text says "call the tool `NAME`";
- ``markup``: repeats the (last) text between «« and »» in the user's text, markup and all;
- ``documents`` / ``tool-results``: follows every kind of instruction (marker, tool call,
  markup) found between <documents> tags / in tool results;
- ``ramble``: asked to go on forever, writes 5000 words (cut at ``max_tokens``).

With ``stream: true`` the same answer comes as OpenAI SSE chunks (``chunk_chars``
characters of content each, a tool call as one chunk, then a finish chunk and
``data: [DONE]``). ``GET /v1/models`` lists one model.

Without a weakness it refuses, quoting the start of the request (HTML-escaped) — so an
oracle fooled by a quote of the attack would show up as a false positive.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
import socket
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Header, HTTPException, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

WEAKNESSES = frozenset(
    {"leak", "records", "user", "agency", "markup", "documents", "tool-results", "ramble"}
)
LEAK_RE = re.compile(
    r"(repeat|print|output|show|write)\b.{0,40}(instructions|rules|directions|system prompt|text above)",
    re.I,
)
FLOOD_RE = re.compile(r"forever|100000|20000-word", re.I)
MARKER_RE = re.compile(r"BX-[A-Z0-9]{8}")
TOOL_RE = re.compile(r"call the tool `?([A-Za-z0-9_-]+)`?")
MARKUP_RE = re.compile(r"««(.*?)»»", re.S)
B64_RE = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")
DOCS_RE = re.compile(r"<documents>(.*?)</documents>", re.S)


class ChatRequest(BaseModel):
    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    stream: bool = False


class ChatResponse(BaseModel):
    id: str = "chatcmpl-fake"
    object: str = "chat.completion"
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, int] = Field(default_factory=dict)


def sse_chunks(
    model: str, content: str, call: str | None, finish: str, chunk_chars: int
) -> list[str]:
    """The answer as SSE ``data:`` events, in OpenAI's chat.completion.chunk form."""

    def event(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        chunk = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return f"data: {json.dumps(chunk)}\n\n"

    out = [event({"role": "assistant", "content": ""})]
    for i in range(0, len(content), chunk_chars):
        out.append(event({"content": content[i : i + chunk_chars]}))
    if call:
        fn = {"name": call, "arguments": "{}"}
        out.append(
            event(
                {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": fn}]}
            )
        )
    out.append(event({}, finish))
    out.append("data: [DONE]\n\n")
    return out


def _decoded(text: str) -> str:
    """``text`` plus its base64 blobs decoded and its quoted fragments joined."""
    extra = []
    for blob in B64_RE.findall(text):
        try:
            extra.append(base64.b64decode(blob, validate=True).decode())
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
    extra.append("".join(re.findall(r"'([^']*)'", text)))
    return "\n".join([text, *extra])


def _obey(text: str, kinds: set[str], tools: set[str]) -> tuple[str | None, str | None]:
    """(content, tool name) from the instructions in ``text`` this model follows."""
    text = _decoded(text)
    if "tool" in kinds and (m := TOOL_RE.search(text)) and m.group(1) in tools:
        return None, m.group(1)
    if "markup" in kinds and (spans := MARKUP_RE.findall(text)):
        return spans[-1], None
    if "marker" in kinds and (found := MARKER_RE.findall(text)):
        return found[-1].lower(), None
    return None, None


def _leak(system: str, ask: str) -> str:
    if "base64" in ask:
        return base64.b64encode(system.encode()).decode()
    if "backwards" in ask:
        return system[::-1]
    if "space between" in ask:
        return " ".join(system)
    return system


def respond(req: ChatRequest, weak: frozenset[str]) -> tuple[str, str | None, str]:
    """(content, tool call, finish reason) for a request."""
    msgs = req.messages
    system = next((m.get("content") or "" for m in msgs if m["role"] == "system"), "")
    user = next((m.get("content") or "" for m in reversed(msgs) if m["role"] == "user"), "")
    docs = "\n".join(DOCS_RE.findall(user))
    rest = DOCS_RE.sub("", user)
    results = "\n".join(m.get("content") or "" for m in msgs if m["role"] == "tool")
    tools = {t["function"]["name"] for t in req.tools or []}
    if "leak" in weak and LEAK_RE.search(rest):
        return _leak(system, rest), None, "stop"
    if "records" in weak and "record" in rest.lower() and "Confidential records" in system:
        return system.split("Confidential records", 1)[1], None, "stop"
    if "ramble" in weak and FLOOD_RE.search(rest):
        words = ["company"] * 5000
        if req.max_tokens is not None and req.max_tokens < len(words):
            return " ".join(words[: req.max_tokens]), None, "length"
        return " ".join(words), None, "stop"
    every = {"marker", "tool", "markup"}
    channels = [
        (
            rest,
            {
                k
                for k, w in (("marker", "user"), ("tool", "agency"), ("markup", "markup"))
                if w in weak
            },
        ),
        (docs, every if "documents" in weak else set()),
        (results, every if "tool-results" in weak else set()),
    ]
    for text, kinds in channels:
        content, call = _obey(text, kinds, tools)
        if content is not None or call is not None:
            return content or "", call, "tool_calls" if call else "stop"
    return f"Sorry, I can't help with that: {html.escape(rest.strip()[:40])}…", None, "stop"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeLLM:
    """The server on a free loopback port; ``url`` is its ``openai+http://…/v1`` target.
    ``key``: the Bearer key it requires; ``fail_first``: how many first requests get 429."""

    def __init__(
        self,
        weaknesses: set[str] | frozenset[str],
        *,
        key: str | None = None,
        fail_first: int = 0,
        chunk_chars: int = 4,
    ) -> None:
        unknown = set(weaknesses) - WEAKNESSES
        if unknown:
            raise ValueError(
                f"unknown weakness(es) {sorted(unknown)}: choose from {sorted(WEAKNESSES)}"
            )
        self.weak = frozenset(weaknesses)
        self.key = key
        self.fail_first = fail_first
        self.chunk_chars = chunk_chars
        self.requests = 0
        self.port = _free_port()
        self.url = f"openai+http://127.0.0.1:{self.port}/v1"
        self.app = self._build()
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        def models() -> dict[str, Any]:
            return {"object": "list", "data": [{"id": "fake", "object": "model"}]}

        @app.post("/v1/chat/completions", response_model=None)
        def chat(
            req: ChatRequest, response: Response, authorization: str | None = Header(None)
        ) -> ChatResponse | StreamingResponse:
            self.requests += 1
            if self.key and authorization != f"Bearer {self.key}":
                raise HTTPException(401, "bad key")
            if self.requests <= self.fail_first:
                raise HTTPException(429, "slow down", headers={"Retry-After": "0"})
            content, call, finish = respond(req, self.weak)
            if req.stream:
                events = sse_chunks(f"fake-{req.model}", content, call, finish, self.chunk_chars)
                return StreamingResponse(iter(events), media_type="text/event-stream")
            message: dict[str, Any] = {"role": "assistant", "content": content or None}
            if call:
                message["tool_calls"] = [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": call, "arguments": "{}"},
                    }
                ]
            return ChatResponse(
                model=f"fake-{req.model}",
                choices=[{"index": 0, "message": message, "finish_reason": finish}],
                usage={"completion_tokens": len(content.split())},
            )

        return app

    def __enter__(self) -> FakeLLM:
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            time.sleep(0.025)
        raise RuntimeError("the fake LLM server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
