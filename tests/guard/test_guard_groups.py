"""One guard pass for several clients' samples (the gateway's micro-batch): the same verdicts
and the same per-client state as one call per client, one model pass, and a monitor failure
confined to its own client's group."""

from __future__ import annotations

import pytest
import torch

from bastion.guard.guard import Guard


@pytest.fixture()
def fresh(fitted_guard, guard_module, tmp_path):
    """Copies of the package's fitted guard with no client state (saved and loaded)."""
    fitted_guard.save(tmp_path)
    return lambda: Guard.load(tmp_path, guard_module, check_model=False)


def _approx(value):
    """``value`` with every float wrapped in pytest.approx (nested dicts and lists kept)."""
    if isinstance(value, float):
        return pytest.approx(value, rel=1e-6)
    if isinstance(value, dict):
        return {k: _approx(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_approx(v) for v in value]
    return value


def _batches(digits):
    x = digits.test.x
    return [("alice", x[0:3]), ("bob", x[3:4]), ("carol", x[4:9]), ("alice", x[9:11])]


def test_groups_equal_one_call_per_client(fresh, digits):
    one, many = fresh(), fresh()
    batches = _batches(digits)
    separate = [one.predict_and_inspect(x, c, now=100.0) for c, x in batches]
    logits, results = many.predict_and_inspect_groups(
        torch.cat([x for _, x in batches]), [(c, len(x)) for c, x in batches], now=100.0
    )
    assert torch.allclose(logits, torch.cat([lg for lg, _ in separate]), atol=1e-5)
    for got, want in zip(results, [v for _, v in separate], strict=True):
        assert [v.verdict for v in got] == [v.verdict for v in want]
        for g, w in zip(got, want, strict=True):
            assert g.scores.keys() == w.scores.keys()
            assert all(
                g.scores[k] == pytest.approx(w.scores[k], rel=1e-4, abs=1e-5) for k in g.scores
            )
    for client in ("alice", "bob", "carol"):
        assert many.client_status(client) == one.client_status(client)
        # float fields (coverage spread) from another batch's float32 sums: equal to ~1e-7
        assert (
            _approx(many.query_status(client).model_dump()) == one.query_status(client).model_dump()
        )
    # the drift window took the batch once, in the same order as the separate calls
    assert many.drift_status() == one.drift_status()
    assert many.drift._count == one.drift._count == 11


def test_one_model_pass_for_every_client(fresh, digits, monkeypatch):
    guard = fresh()
    calls = []
    tap = guard.tap
    monkeypatch.setattr(guard, "tap", lambda x: calls.append(len(x)) or tap(x))
    batches = _batches(digits)
    guard.predict_and_inspect_groups(
        torch.cat([x for _, x in batches]), [(c, len(x)) for c, x in batches]
    )
    assert calls == [11]  # one pass over all eleven samples, not one per client


def test_a_failing_group_fails_alone(fresh, digits, monkeypatch):
    guard = fresh()
    real = guard._observe

    def observe(client_id, *args, **kwargs):
        if client_id == "bob":
            raise ConnectionError("shared state unreachable")
        return real(client_id, *args, **kwargs)

    monkeypatch.setattr(guard, "_observe", observe)
    batches = _batches(digits)
    _, results = guard.predict_and_inspect_groups(
        torch.cat([x for _, x in batches]), [(c, len(x)) for c, x in batches]
    )
    assert isinstance(results[1], ConnectionError)
    assert [len(r) for i, r in enumerate(results) if i != 1] == [3, 5, 2]
    with pytest.raises(Exception, match="do not add up"):
        guard.predict_and_inspect_groups(digits.test.x[:3], [("a", 2)])
