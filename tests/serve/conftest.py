"""Fixtures of the gateway tests: settings on a tmp SQLite store, an app factory that yields
a started TestClient with keys of every role, and a scripted guard for hold/block paths."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
from fastapi.testclient import TestClient

from bastion.serve.app import create_app
from bastion.serve.settings import ServeSettings
from bastion.store.db import make_engine
from bastion.store.keys import create_key


@dataclass
class Gateway:
    client: TestClient
    keys: dict[str, str]  # role -> secret
    ids: dict[str, int]  # role -> key id

    def auth(self, role: str = "client") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}

    @property
    def app(self) -> Any:
        return self.client.app

    @property
    def state(self) -> Any:
        return self.client.app.state


@pytest.fixture()
def settings(digits_model_dir, tmp_path) -> ServeSettings:
    return ServeSettings(
        model_dir=digits_model_dir,
        db_url=f"sqlite:///{tmp_path / 'serve.db'}",
        guard={"enabled": False},
        auth={"cache_ttl_s": 0.0},
        reviews={"check_every_s": 3600},
    )


@pytest.fixture()
def gateway_factory() -> Iterator[Callable[..., Any]]:
    @contextmanager
    def make(settings: ServeSettings, **client_kwargs: Any) -> Iterator[Gateway]:
        engine = make_engine(settings.db_url)
        keys, ids = {}, {}
        for role in ("client", "reviewer", "admin"):
            info, secret = create_key(engine, role, f"test {role}")
            keys[role], ids[role] = secret, info.id
        info, secret = create_key(engine, "client", "second client")
        keys["client2"], ids["client2"] = secret, info.id
        engine.dispose()
        with TestClient(create_app(settings), **client_kwargs) as client:
            yield Gateway(client, keys, ids)

    yield make


@pytest.fixture()
def gw(settings, gateway_factory) -> Iterator[Gateway]:
    with gateway_factory(settings) as g:
        yield g


@pytest.fixture(scope="session")
def sample(digits) -> list:
    return digits.test.x[0].tolist()


class ScriptedGuard:
    """A stand-in guard whose verdict is read from the input: a sample whose first pixel is
    0.25 is held, 0.5 is blocked, 0.75 flagged, anything else allowed."""

    meta: ClassVar[dict[str, Any]] = {}

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.calls: list[str] = []

    def predict_and_inspect(self, x: torch.Tensor, client_id: str) -> tuple[torch.Tensor, list]:
        from bastion.guard.verdict import GuardVerdict

        self.calls.append(client_id)
        table = {0.25: "hold", 0.5: "block", 0.75: "flag"}
        verdicts = []
        for xi in x:
            v = table.get(round(float(xi.flatten()[0]), 2), "allow")
            reasons = [] if v == "allow" else [f"scripted {v}"]
            verdicts.append(GuardVerdict(verdict=v, scores={"scripted": 1.0}, reasons=reasons))
        return self.module(x), verdicts

    def drift_status(self) -> Any:
        from bastion.guard.verdict import DriftStatus

        return DriftStatus(p_value=0.5, alert=False, window_size=3, window_capacity=200, alpha=0.01)

    def reset_client(self, client_id: str) -> None:
        self.calls.append(f"reset {client_id}")


def marked(sample: list, value: float) -> list:
    """A copy of ``sample`` whose first pixel is ``value`` (the scripted guard's marker)."""
    x = torch.tensor(sample).clone()
    x.view(-1)[0] = value
    return x.tolist()


@pytest.fixture()
def scripted(gw) -> ScriptedGuard:
    guard = ScriptedGuard(gw.state.runtime.module)
    gw.state.runtime.guard = guard
    return guard
