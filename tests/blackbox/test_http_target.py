"""HttpTarget against a real HTTP server on loopback (http.server in a thread)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from bastion.attacks.blackbox import HttpTarget, ModuleTarget, QueryBudget, square_attack
from bastion.errors import AttackError, TargetError


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def do_POST(self) -> None:
        path = self.path.strip("/")
        srv = self.server
        srv.calls[path] += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        x = torch.tensor(body["inputs"], dtype=torch.float32)
        srv.shapes.append(tuple(x.shape))
        with torch.no_grad():
            probs = torch.softmax(srv.model(x), 1)
        good = {"predictions": probs.argmax(1).tolist(), "probabilities": probs.tolist(), "id": 1}
        n = srv.calls[path]
        if path == "ok":
            self._send(200, good)
        elif path == "auth":
            if self.headers.get("Authorization") != "Bearer s3cret":
                self._send(401, {"detail": "bad key"})
            else:
                self._send(200, good)
        elif path == "slow":
            time.sleep(1.0)
            self._send(200, good)
        elif path == "flaky":
            self._send(503 if n <= 2 else 200, {"detail": "busy"} if n <= 2 else good)
        elif path == "limited":
            if n == 1:
                self._send(429, {"detail": "slow down"}, {"Retry-After": "0.05"})
            else:
                self._send(200, good)
        elif path == "limited-long":
            self._send(429, {"detail": "slow down"}, {"Retry-After": "3600"})
        elif path == "held":
            self._send(202, {"review_id": 7, "status": "held"})
        elif path == "blocked":
            self._send(403, {"detail": "request refused by the input guard", "request_id": "r"})
        elif path == "client-blocked":
            body = {
                "detail": "request blocked by policy; contact the operator",
                "request_id": "r",
                "blocked_until": "2026-12-02T10:00:00Z",
            }
            self._send(403, body)
        elif path == "garbage":
            self._send(200, b"<html>oops</html>")
        elif path == "short":
            self._send(200, {**good, "probabilities": good["probabilities"][:-1]})
        elif path == "nan":
            rows = good["probabilities"]
            rows[0][0] = float("nan")
            self._send(200, {"predictions": good["predictions"], "probabilities": rows})
        elif path == "notprob":
            self._send(200, {**good, "probabilities": (probs * 3).tolist()})
        elif path == "labels":
            self._send(200, {"predictions": good["predictions"]})
        elif path == "teapot":
            self._send(418, {"detail": "I am a teapot"})
        else:
            self._send(404, {"detail": "no such path"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, model) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.model = model
        self.calls: Counter[str] = Counter()
        self.shapes: list[tuple[int, ...]] = []


@pytest.fixture()
def server(digits_module):
    srv = _Server(digits_module)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(srv: _Server, path: str) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/{path}"


def test_http_target_matches_the_local_model(server, digits, digits_module):
    x = digits.test.x[:10]
    with HttpTarget(url(server, "ok"), batch_size=4) as target:
        probs = target(x)
        assert target.num_classes == 10
    expected = ModuleTarget(digits_module)(x)
    assert torch.allclose(probs, expected, atol=1e-5)
    assert target.queries == 10 and server.calls["ok"] == 3
    assert server.shapes[0] == (4, 1, 8, 8)  # inputs keep the sample shape
    labels = HttpTarget(url(server, "labels"), kind="labels", num_classes=10)(x)
    assert torch.equal(labels, expected.argmax(1))


def test_api_key_is_sent_as_bearer_token(server, digits):
    x = digits.test.x[:2]
    assert HttpTarget(url(server, "auth"), api_key="s3cret")(x).shape == (2, 10)
    with pytest.raises(TargetError, match=r"HTTP 401.*api_key"):
        HttpTarget(url(server, "auth"), api_key="wrong")(x)


def test_timeout_gives_a_clear_error(server, digits):
    target = HttpTarget(url(server, "slow"), timeout=0.2, retries=1, backoff=0)
    with pytest.raises(TargetError, match=r"failed after 2 attempt\(s\): timed out after 0.2 s"):
        target(digits.test.x[:1])


def test_server_errors_are_retried_with_backoff(server, digits):
    waits: list[float] = []
    target = HttpTarget(url(server, "flaky"), retries=3, backoff=0.01, sleep=waits.append)
    assert target(digits.test.x[:3]).shape == (3, 10)
    assert server.calls["flaky"] == 3 and waits == [0.01, 0.02]
    server.calls.clear()
    target = HttpTarget(url(server, "flaky"), retries=1, backoff=0, sleep=waits.append)
    with pytest.raises(TargetError, match="server error HTTP 503"):
        target(digits.test.x[:1])


def test_rate_limit_honours_retry_after(server, digits):
    waits: list[float] = []
    target = HttpTarget(url(server, "limited"), backoff=5.0, sleep=waits.append)
    assert target(digits.test.x[:2]).shape == (2, 10)
    assert waits == [0.05]
    target = HttpTarget(url(server, "limited-long"), sleep=waits.append)
    with pytest.raises(TargetError, match="asks to wait 3600 s"):
        target(digits.test.x[:1])


def test_held_requests_count_as_refused_queries(server, digits):
    target = HttpTarget(url(server, "held"), num_classes=10)
    out = target(digits.test.x[:3])
    assert torch.isnan(out).all() and target.queries == 3 and target.refused == 3
    labels = HttpTarget(url(server, "held"), kind="labels", num_classes=10)(digits.test.x[:2])
    assert labels.tolist() == [-1, -1]
    blocked = HttpTarget(url(server, "blocked"), kind="labels", num_classes=10)
    assert blocked(digits.test.x[:2]).tolist() == [-1, -1] and blocked.refused == 2
    # a gateway that blocked the client by policy: refused queries, not a key problem
    client = HttpTarget(url(server, "client-blocked"), kind="labels", num_classes=10)
    assert client(digits.test.x[:2]).tolist() == [-1, -1] and client.refused == 2


@pytest.mark.parametrize(
    ("path", "kind", "message"),
    [
        ("garbage", "scores", "answered non-JSON"),
        ("short", "scores", "must be a list of 3 rows"),
        ("nan", "scores", "contains NaN or Inf"),
        ("notprob", "scores", "not distributions"),
        ("labels", "scores", "use kind='labels'"),
        ("teapot", "scores", "answered HTTP 418"),
    ],
)
def test_malformed_answers_raise_clear_errors(server, digits, path, kind, message):
    with pytest.raises(TargetError, match=message):
        HttpTarget(url(server, path), kind=kind, retries=0)(digits.test.x[:3])


def test_connection_errors_and_bad_arguments():
    with pytest.raises(TargetError, match="connection failed"):
        HttpTarget("http://127.0.0.1:9/none", retries=0)(torch.zeros(1, 1, 8, 8))
    with pytest.raises(AttackError, match="must start with http"):
        HttpTarget("ftp://example.org")
    with pytest.raises(TargetError, match="needs num_classes"):
        _ = HttpTarget("http://127.0.0.1:9/", kind="labels").num_classes


def test_square_attack_runs_through_http(server, correct_batch, digits_module):
    x, y = correct_batch[0][:6], correct_batch[1][:6]
    target = QueryBudget(HttpTarget(url(server, "ok"), batch_size=64), 6 * 30)
    res = square_attack(target, x, y, eps=0.3, max_queries=30)
    assert res.success.any()
    fooled = digits_module(res.x_adv[res.success]).argmax(1) != y[res.success]
    assert fooled.all() and target.queries == int(res.queries.sum())
