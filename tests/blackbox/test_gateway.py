"""Bastion's own gateway (POST /v1/predict) is attackable through HttpTarget."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.blackbox import HttpTarget, ModuleTarget, QueryBudget, square_attack
from bastion.errors import TargetError

serve_app = pytest.importorskip("bastion.serve.app")


@pytest.fixture()
def gateway(digits_model_dir, tmp_path):
    from fastapi.testclient import TestClient

    from bastion.serve.settings import ServeSettings
    from bastion.store.db import make_engine
    from bastion.store.keys import create_key

    settings = ServeSettings(
        model_dir=digits_model_dir,
        db_url=f"sqlite:///{tmp_path / 'serve.db'}",
        guard={"enabled": False},
        reviews={"check_every_s": 3600},
    )
    engine = make_engine(settings.db_url)
    _, secret = create_key(engine, "client", "attacker")
    engine.dispose()
    with TestClient(serve_app.create_app(settings)) as client:
        yield client, secret


def test_square_attack_through_the_gateway(gateway, correct_batch, digits_module):
    client, secret = gateway
    url = "http://testserver/v1/predict"
    target = HttpTarget(url, api_key=secret, client=client)
    x, y = correct_batch[0][:5], correct_batch[1][:5]
    assert torch.allclose(target(x), ModuleTarget(digits_module)(x), atol=1e-4)
    budget = QueryBudget(target, 5 * 25)
    res = square_attack(budget, x, y, eps=0.3, max_queries=25)
    assert res.success.any() and budget.queries == int(res.queries.sum())
    with torch.no_grad():
        assert (digits_module(res.x_adv[res.success]).argmax(1) != y[res.success]).all()
    with pytest.raises(TargetError, match="HTTP 401"):
        HttpTarget(url, api_key="not-a-key", client=client)(x)
