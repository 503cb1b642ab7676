from __future__ import annotations

import logging

import httpx
import pytest

from bastion.errors import ConfigError, TargetError
from bastion.llm.target import ChatTarget, Message, api_key_from_env, parse_target
from tests.llm.fake_llm import FakeLLM
from tests.ports import free_port

HELLO = [Message(role="user", content="hello")]


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("openai+https://api.example.com/v1", "https://api.example.com/v1"),
        ("openai+http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
    ],
)
def test_parse_target(url: str, base: str) -> None:
    assert parse_target(url) == base


@pytest.mark.parametrize("url", ["https://x/v1", "openai+ftp://x", "openai+http://", "x"])
def test_bad_target(url: str) -> None:
    with pytest.raises(ConfigError, match="--target"):
        parse_target(url)


def test_key_env(monkeypatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_KEY_VAR"):
        api_key_from_env("NO_SUCH_KEY_VAR")
    monkeypatch.setenv("K", "v")
    assert api_key_from_env("K") == "v"
    assert api_key_from_env(None) is None


def test_retries_429_and_counts_requests(caplog) -> None:
    slept: list[float] = []
    with FakeLLM(set(), key="s3cret-key", fail_first=2) as fake:
        with (
            caplog.at_level(logging.DEBUG),
            ChatTarget(fake.url, "m", api_key="s3cret-key", sleep=slept.append) as t,
        ):
            reply = t.chat(HELLO)
        assert t.requests == 3 == fake.requests
    assert reply.content.startswith("Sorry")
    assert reply.model == "fake-m"
    assert slept == [0.0, 0.0]  # Retry-After: 0
    assert "s3cret-key" not in caplog.text
    assert "s3cret-key" not in repr(t)


def test_gives_up_after_retries() -> None:
    with (
        FakeLLM(set(), fail_first=10) as fake,
        ChatTarget(fake.url, "m", retries=2, sleep=lambda s: None) as t,
    ):
        with pytest.raises(TargetError, match="failed after 3 attempt"):
            t.chat(HELLO)
        assert t.requests == 3


def test_bad_key_is_one_error_without_the_key() -> None:
    with (
        FakeLLM(set(), key="right") as fake,
        ChatTarget(fake.url, "m", api_key="wrong") as t,
        pytest.raises(TargetError, match="HTTP 401") as exc,
    ):
        t.chat(HELLO)
    assert "wrong" not in str(exc.value)


def test_unreachable_and_5xx() -> None:
    with (
        ChatTarget(f"openai+http://127.0.0.1:{free_port()}/v1", "m") as t,
        pytest.raises(TargetError, match="cannot reach"),
    ):
        t.chat(HELLO)
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(503)
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}]})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    t = ChatTarget(
        "openai+https://x.example/v1", "m", client=client, backoff=0.1, sleep=calls.append
    )
    assert t.chat(HELLO).content == "ok"
    assert t.requests == 2
    assert calls[1] == 0.1  # the backoff before the retry


def test_not_a_chat_answer() -> None:
    client = httpx.Client(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json={"x": 1}))
    )
    t = ChatTarget("openai+https://x.example/v1", "m", client=client)
    with pytest.raises(TargetError, match="not a chat-completions answer"):
        t.chat(HELLO)
