"""The gateway's side of the shared guard state: off without ``redis_url`` (no Redis on the
request path), and a Redis outage mid-flight answers 503 with Retry-After, never 500 and
never an unguarded answer."""

from __future__ import annotations

from bastion.guard.shared import SharedStateUnavailable
from tests.serve.conftest import ScriptedGuard


class _Unreachable(ScriptedGuard):
    def predict_and_inspect(self, x, client_id):
        raise SharedStateUnavailable("shared guard state unavailable: connection refused")


def test_no_redis_url_shares_nothing(gw):
    assert gw.state.shared_state is None


def test_outage_of_the_shared_state_is_503(gw, sample):
    gw.state.runtime.guard = _Unreachable(gw.state.runtime.module)
    r = gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=gw.auth())
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    body = r.json()
    assert body["code"] == "unavailable" and "shared state" in body["detail"]
    assert "predictions" not in body
