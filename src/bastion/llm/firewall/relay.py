"""The SSE relay of a streamed answer: the upstream's chunks re-emitted one by one after
:class:`~bastion.llm.firewall.stream.StreamGuard` has scanned them; a blocking rule ends the
stream with a ``content_filter`` chunk saying why, then ``data: [DONE]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi.responses import Response, StreamingResponse

from bastion.llm.firewall.exchange import Exchange, passthrough
from bastion.llm.firewall.records import Finding, worst
from bastion.llm.firewall.stream import StreamGuard
from bastion.llm.firewall.upstream import SseEvent, UpstreamError, UpstreamStatus
from bastion.serve.errors import error_response


def _sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _chunk_like(last: dict[str, Any], delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": last.get("id", ""),
        "object": "chat.completion.chunk",
        "created": last.get("created", int(time.time())),
        "model": last.get("model", ""),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


async def stream_answer(ex: Exchange, upstream_body: dict[str, Any]) -> Response:
    state = ex.state
    events = state.upstream.stream("/chat/completions", {**upstream_body, "stream": True})
    try:
        first = await anext(events)
    except StopAsyncIteration:
        first = SseEvent(None, done=True)
    except UpstreamStatus as exc:
        await ex.audit("upstream_error", upstream_status=exc.answer.status)
        return passthrough(exc.answer.status, exc.answer.text)
    except UpstreamError as exc:
        await ex.audit("upstream_error", upstream_status=exc.status)
        return error_response(exc.status, exc.detail, request_id=ex.request_id)
    cfg = state.firewall_settings.stream
    guard = StreamGuard(
        ex.firewall,
        ex.firewall.leak_detector(ex.messages),
        holdback=cfg.holdback_chars,
        window=cfg.window_chars,
    )
    return StreamingResponse(
        _relay(ex, guard, first, events),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _relay(
    ex: Exchange, guard: StreamGuard, first: SseEvent, events: AsyncIterator[SseEvent]
) -> AsyncIterator[bytes]:
    """Re-emit the upstream's chunks, scanned; stop with a content_filter chunk on a block."""
    last: dict[str, Any] = {}
    stop: Finding | None = None
    outcome = "answered"
    audited = False

    async def upstream_events() -> AsyncIterator[SseEvent]:
        yield first
        async for e in events:
            yield e

    try:
        async for event in upstream_events():
            if event.done:
                break
            data = event.data
            if data is None:
                continue
            last = data
            choices = data.get("choices") or []
            choice = choices[0] if choices and isinstance(choices[0], dict) else {}
            delta = dict(choice.get("delta") or {})
            for call in delta.get("tool_calls") or []:
                name = str((call.get("function") or {}).get("name") or "")
                if name and (found := ex.firewall.tool_call(name)) is not None:
                    ex.findings.append(found)
                    if found.action == "block":
                        stop = found
            if stop is not None:
                break
            finish = choice.get("finish_reason")
            content = delta.get("content")
            if isinstance(content, str) and content:
                ex.output_raw += content
                released, stop = guard.feed(content)
                if stop is not None:
                    break
                delta["content"] = released
            if finish is not None:
                tail, stop = guard.finish()
                if stop is not None:
                    break
                delta["content"] = (delta.get("content") or "") + tail
            if delta.get("content") == "":
                delta.pop("content")
            if not delta and finish is None and choices:
                continue
            ex.output_sent += delta.get("content") or ""
            out = {**data, "choices": [{**choice, "delta": delta}]} if choices else data
            yield _sse(out)
        if stop is None and guard.pending:
            tail, stop = guard.finish()
            if stop is None and tail:
                ex.output_sent += tail
                yield _sse(_chunk_like(last, {"content": tail}, None))
        ex.findings += list(guard.findings.values())
        if stop is not None:
            outcome = "stream_stopped"
            ex.findings.append(stop)
            ex.state.fw_metrics.streams_stopped.inc()
            final = _chunk_like(last, {}, "content_filter")
            final["bastion"] = ex.note(stopped=True, reason=stop.line()).model_dump()
            yield _sse(final)
        action = (
            "block" if stop else worst([f for f in ex.findings if f.rule.startswith("output.")])
        )
        ex.state.fw_metrics.decisions.labels(side="output", action=action).inc()
        audited = True
        await ex.audit(outcome, output_action=action, released_chars=guard.released)
        yield b"data: [DONE]\n\n"
    except UpstreamError as exc:
        ex.findings += list(guard.findings.values())
        audited = True
        await ex.audit("upstream_error", upstream_status=exc.status)
        err = {"error": {"message": exc.detail, "type": "upstream_error", "code": exc.status}}
        yield _sse(err)
        yield b"data: [DONE]\n\n"
    finally:
        with anyio.CancelScope(shield=True):  # the client may have gone: still log, close
            if not audited:
                ex.findings += list(guard.findings.values())
                await ex.audit("client_disconnected", released_chars=guard.released)
            await events.aclose()  # type: ignore[attr-defined]
