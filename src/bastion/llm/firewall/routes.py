"""The firewall's routes: ``POST /v1/chat/completions`` (JSON or SSE), ``GET /v1/models``
(passed through) and ``GET /v1/chat/tickets/{ticket}`` (a held request's answer).

Every request needs a client key (``Authorization: Bearer``); it pays one ``requests``
token and its estimated ``tokens`` (:mod:`bastion.llm.firewall.config`) before anything
else. Then:

- input ``block`` → 400 naming the rule (the upstream is not called); a key with
  ``attack_state.max_attempts`` blocked injections in ``window_s`` is blocked (403
  ``code: blocked`` from then on);
- input ``hold`` → the upstream is called, its answer scanned and kept: 202 with a ticket;
  the client polls ``GET /v1/chat/tickets/{ticket}`` and gets the answer once a reviewer
  approves it (``/v1/reviews``);
- an output ``block`` (leak, forbidden tool call) → 403 naming the rule; on a stream, a
  final chunk with ``finish_reason: content_filter`` and a ``bastion`` object saying why,
  then ``data: [DONE]``;
- otherwise the answer, redacted and stripped as configured, with a ``bastion`` object
  (``request_id`` and the rules that fired).

Each request's decision goes to the audit log before its answer (a stream's before its
``[DONE]``): SHA-256 of the prompt and of the output, the rules and actions; the texts
themselves only with ``audit_content: true``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Request, status
from fastapi.responses import Response

from bastion.guard.verdict import GuardVerdict
from bastion.llm.firewall.exchange import (
    ChatCompletion,
    ChatCompletionRequest,
    Exchange,
    FirewallRefusal,
    HeldChat,
    HeldChatResult,
    ModelList,
    OpenAIError,
    estimate_tokens,
    passthrough,
)
from bastion.llm.firewall.records import Decision, Finding, worst
from bastion.llm.firewall.relay import stream_answer
from bastion.llm.firewall.scanners import InputResult
from bastion.llm.firewall.upstream import UpstreamError
from bastion.serve.deps import AUTH_ERRORS, LimitedAnyKey, LimitedClient, model_response, take
from bastion.serve.errors import error_response, error_responses
from bastion.serve.params import TicketPath
from bastion.serve.routes_reviews import visible_ticket

router = APIRouter(prefix="/v1", tags=["llm firewall"])

_CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the scanned answer (JSON), or with ``stream: true`` an SSE stream",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    202: {"model": HeldChat, "description": "held for human review"},
    **error_responses(
        400,
        *AUTH_ERRORS,
        422,
        429,
        502,
        503,
        504,
        blocked=True,
        describe={
            400: "a bad request",
            403: "the key's role may not chat",
            502: "the upstream could not be reached",
            504: "the upstream timed out",
        },
    ),
}
_CHAT_RESPONSES[400] = {
    "model": FirewallRefusal,
    "description": "the firewall blocked the prompt (the detail names the rule), or a bad request",
}
_CHAT_RESPONSES[403] = {
    "model": FirewallRefusal,
    "description": "the firewall blocked the answer (a leak, a forbidden tool call), the key's "
    "role may not chat, or the client is blocked by policy (code 'blocked')",
}


def _upstream_body(body: ChatCompletionRequest, inp: InputResult) -> dict[str, Any]:
    out = body.model_dump(exclude_unset=True)
    out["messages"] = inp.messages
    return out


@router.post("/chat/completions", response_model=ChatCompletion, responses=_CHAT_RESPONSES)
async def chat_completions(
    request: Request, key: LimitedClient, body: Annotated[ChatCompletionRequest, Body()]
) -> Response:
    """An OpenAI chat completion through the firewall (``stream: true`` for SSE)."""
    state = request.app.state
    fw = state.firewall_settings
    if len(body.messages) > fw.max_messages:
        raise HTTPException(400, f"at most {fw.max_messages} messages per request")
    if body.stream and (body.n or 1) > 1:
        raise HTTPException(400, "the firewall streams one choice: drop n or stream")
    tokens = estimate_tokens(body, fw.default_completion_tokens)
    await take(request, key, "tokens", tokens)
    state.fw_metrics.tokens.inc(tokens)
    ex = Exchange(request, key, body)
    ex.entry["tokens_estimate"] = tokens
    inp = await state.firewall.scan_input_async(ex.messages)
    ex.findings += inp.decision.findings
    ex.entry.update(input_action=inp.decision.action, injection_score=round(inp.injection_score, 4))
    state.fw_metrics.decisions.labels(side="input", action=inp.decision.action).inc()
    if inp.decision.action == "block":
        return await _refuse_input(ex, inp.decision)
    upstream_body = _upstream_body(body, inp)
    if inp.decision.action == "hold":
        return await _hold(ex, inp, upstream_body)
    if body.stream:
        return await stream_answer(ex, upstream_body)
    return await _complete(ex, upstream_body)


async def _refuse_input(ex: Exchange, decision: Decision) -> Response:
    state = ex.state
    blocked = decision.of("block")
    injected = any(f.rule == "input.injection" for f in blocked)
    if (
        injected
        and state.firewall_settings.attack_state.enabled
        and state.attack_state.record(ex.key.id)
    ):
        block, created = await state.blocks.block(
            ex.key.id,
            reasons=[
                f"{state.attack_state.max_attempts} prompt-injection attempts within "
                f"{state.firewall_settings.attack_state.window_s:g} s"
            ],
            created_by="llm-firewall",
            request_id=ex.request_id,
        )
        ex.entry["block"] = {"block_id": block.id, "created": created, "reasons": block.reasons}
    await ex.audit("input_blocked")
    reasons = "; ".join(f.line() for f in blocked)
    return refusal(400, f"prompt blocked by the LLM firewall: {reasons}", ex.request_id, blocked[0])


def refusal(status_code: int, detail: str, request_id: str, finding: Finding) -> Response:
    """The gateway's error body plus OpenAI's ``error`` object (what OpenAI clients show)."""
    body = FirewallRefusal(
        detail=detail,
        code="bad_request" if status_code == 400 else "forbidden",
        request_id=request_id,
        error=OpenAIError(message=detail, code=finding.rule),
    )
    return model_response(body, status_code)


def _refuse_output(ex: Exchange, finding: Finding) -> Response:
    return refusal(
        status.HTTP_403_FORBIDDEN,
        f"answer blocked by the LLM firewall: {finding.line()}",
        ex.request_id,
        finding,
    )


async def _scan_completion(ex: Exchange, data: dict[str, Any]) -> Finding | None:
    """Scan every choice of a completion in place; the blocking finding, if any."""
    fwall, leak = ex.firewall, ex.firewall.leak_detector(ex.messages)
    raw, sent = [], []
    for choice in data.get("choices") or []:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        for call in message.get("tool_calls") or []:
            name = str((call.get("function") or {}).get("name", ""))
            if (found := fwall.tool_call(name)) is not None:
                ex.findings.append(found)
                if found.action == "block":
                    return found
        text = message.get("content")
        if isinstance(text, str) and text:
            raw.append(text)
            result = fwall.scan_output(text, leak)
            ex.findings += result.findings
            if any(f.action == "block" for f in result.findings):
                ex.output_raw = "\n".join(raw)
                return result.findings[0]
            message["content"] = result.text
            sent.append(result.text)
    ex.output_raw, ex.output_sent = "\n".join(raw), "\n".join(sent)
    return None


async def _call(ex: Exchange, upstream_body: dict[str, Any]) -> dict[str, Any] | Response:
    try:
        answer = await ex.state.upstream.post(
            "/chat/completions", {**upstream_body, "stream": False}
        )
    except UpstreamError as exc:
        await ex.audit("upstream_error", upstream_status=exc.status)
        return error_response(exc.status, exc.detail, request_id=ex.request_id)
    if answer.status != 200 or answer.body is None:
        await ex.audit("upstream_error", upstream_status=answer.status)
        return passthrough(answer.status if answer.status != 200 else 502, answer.text)
    return answer.body


async def _complete(ex: Exchange, upstream_body: dict[str, Any]) -> Response:
    data = await _call(ex, upstream_body)
    if isinstance(data, Response):
        return data
    stop = await _scan_completion(ex, data)
    action = "block" if stop else worst([f for f in ex.findings if f.rule.startswith("output.")])
    ex.state.fw_metrics.decisions.labels(side="output", action=action).inc()
    if stop is not None:
        await ex.audit("output_blocked", output_action="block")
        return _refuse_output(ex, stop)
    await ex.audit("answered", output_action=action)
    data["bastion"] = ex.note().model_dump()
    return Response(json.dumps(data), 200, media_type="application/json")


async def _hold(ex: Exchange, inp: InputResult, upstream_body: dict[str, Any]) -> Response:
    data = await _call(ex, upstream_body)
    if isinstance(data, Response):
        return data
    stop = await _scan_completion(ex, data)
    result = HeldChatResult(predictions=[], verdicts=["hold"], prompt=ex.messages)
    if stop is not None:
        result.blocked_reason = stop.line()
    else:
        data["bastion"] = ex.note().model_dump()
        result.completion = data
    verdict = GuardVerdict(
        verdict="hold",
        scores={"injection": round(inp.injection_score, 4)},
        reasons=inp.decision.reasons,
    )
    ticket = await ex.state.reviews.hold(
        key=ex.key, request_id=ex.request_id, verdicts=[verdict], result=result
    )
    ex.entry["ticket"] = ticket.id
    await ex.audit("held")
    held = HeldChat(
        ticket=ticket.id,
        status="held",
        request_id=ex.request_id,
        poll=f"/v1/chat/tickets/{ticket.id}",
        reasons=inp.decision.reasons,
    )
    return model_response(held, 202, exclude_none=True)


@router.get(
    "/models", response_model=ModelList, responses=error_responses(*AUTH_ERRORS, 429, 502, 504)
)
async def list_models(request: Request, _key: LimitedClient) -> Response:
    """The upstream's model list, passed through."""
    try:
        answer = await request.app.state.upstream.get("/models")
    except UpstreamError as exc:
        return error_response(exc.status, exc.detail)
    return passthrough(answer.status, answer.text)


@router.get(
    "/chat/tickets/{ticket}",
    response_model=HeldChat,
    response_model_exclude_none=True,
    responses=error_responses(*AUTH_ERRORS, 404, 429),
)
async def chat_ticket(request: Request, key: LimitedAnyKey, ticket: TicketPath) -> HeldChat:
    """A held request: its status; the answer once approved. Clients see only their own."""
    found = await visible_ticket(request, ticket, key)
    staff = key.role in ("reviewer", "admin")
    result = found.result or {}
    reasons = [r for v in found.verdicts for r in v.get("reasons", [])]
    view = HeldChat(
        ticket=found.id,
        status=found.status,  # type: ignore[arg-type]
        request_id=found.request_id,
        poll=f"/v1/chat/tickets/{found.id}",
        reasons=reasons,
    )
    if staff or found.status == "approved":
        if result.get("completion") is not None:
            view.completion = ChatCompletion.model_validate(result["completion"])
        view.blocked_reason = result.get("blocked_reason")
    if staff:
        view.prompt = result.get("prompt")
    return view
