"""The guard's stateful monitors shared by replicas through a Redis stream: an attacker who
alternates between two replicas is alerted at the same query as against one process.

Needs the local Redis (skipped, with the reason, when it cannot be reached); each test uses
a stream of its own, deleted afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from bastion.guard.guard import Guard
from bastion.guard.shared import (
    LocalClientState,
    Observation,
    RedisClientState,
    SharedStateUnavailable,
    decode,
    encode,
)
from tests.guard.test_similarity import _square_like
from tests.ports import free_port
from tests.services import REDIS_URL, redis_unreachable


@pytest.fixture()
def stream() -> Iterator[str]:
    reason = redis_unreachable()
    if reason:
        pytest.skip(reason)
    import redis

    name = f"bastion-test:guard:{uuid.uuid4().hex}"
    yield name
    redis.Redis.from_url(REDIS_URL).delete(name)


@pytest.fixture()
def replicas(fitted_guard, tmp_path) -> Iterator[tuple[Guard, Guard, Guard]]:
    """The fitted guard loaded three times: two replicas (to be shared) and a reference."""
    fitted_guard.save(tmp_path)
    model = fitted_guard.tap.model
    made = tuple(Guard.load(tmp_path, model) for _ in range(3))
    yield made
    for g in made:
        if g.shared is not None:
            g.shared.close()


def _shared(replicas, stream):
    a, b, ref = replicas
    a.share_state(RedisClientState(REDIS_URL, stream))
    b.share_state(RedisClientState(REDIS_URL, stream))
    return a, b, ref


def test_observation_round_trip():
    rng = np.random.default_rng(0)
    obs = Observation(
        "7",
        rng.random((3, 1, 8, 8), dtype=np.float32),
        rng.random((3, 16), dtype=np.float32),
        np.array([1, 2, 3], dtype=np.int64),
        np.array([True, False, True]),
        1234.5,
    )
    wire = {k.encode(): v for k, v in encode(obs, "r1").items()}
    back = decode(wire)
    assert back.client_id == "7" and back.now == 1234.5 and back.kind == "observe"
    for name in ("scaled", "features", "predictions", "anomalous"):
        np.testing.assert_array_equal(getattr(back, name), getattr(obs, name))
    assert decode({b"k": b"reset", b"c": b"9"}).kind == "reset"
    wire[b"p"] = wire[b"p"][:8]
    with pytest.raises(ValueError, match="differ in length"):
        decode(wire)


def test_default_is_this_process_only(fitted_guard):
    assert fitted_guard.shared is None
    obs = Observation.reset("1")
    assert list(LocalClientState().exchange(obs)) == [(obs, True)]


def test_square_attacker_alternating_replicas_is_alerted_as_fast(replicas, stream, digits):
    a, b, ref = _shared(replicas, stream)
    queries = _square_like(digits.test.x[3], 12, eps=0.03, seed=4)
    split, alone = [], []
    for i in range(12):
        replica = a if i % 2 == 0 else b
        split.append(replica.inspect(queries[i : i + 1], "sq")[0].verdict)
        alone.append(ref.inspect(queries[i : i + 1], "sq")[0].verdict)
    assert split == alone and alone[-1] == "block"
    want = ref.query_status("sq").similarity
    for replica in (a, b):  # each replica sees the whole attack
        got = replica.query_status("sq").similarity
        assert got.alert and got.alert_at_query == want.alert_at_query
        assert got.queries == want.queries == 12


def test_noise_attacker_alternating_replicas_trips_the_anomaly_rate_as_fast(
    replicas, stream, digits
):
    a, b, ref = _shared(replicas, stream)
    gen = torch.Generator().manual_seed(3)
    noise = torch.rand((60, *digits.test.x.shape[1:]), generator=gen)
    for i in range(60):
        replica = a if i % 2 == 0 else b
        replica.inspect(noise[i : i + 1], "nz")
        ref.inspect(noise[i : i + 1], "nz")
        if i % 2 == 0:  # what one replica of two would see without sharing
            ref.inspect(noise[i : i + 1], "half")
    want = ref.client_status("nz")
    assert want.extraction_alert
    half = ref.client_status("half")  # alerted later in the attacker's queries, if at all
    assert not half.extraction_alert or 2 * half.alert_at_query - 1 > want.alert_at_query
    for replica in (a, b):
        got = replica.client_status("nz")
        assert got.extraction_alert and got.alert_at_query == want.alert_at_query
        assert got.queries == 60 and got.anomaly_rate == want.anomaly_rate
    assert a.drift_status().window_size == b.drift_status().window_size == 60  # one window


def test_reset_on_one_replica_holds_on_the_other(replicas, stream, digits):
    a, b, _ = _shared(replicas, stream)
    a.inspect(digits.test.x[:5], "c1")
    assert b.client_status("c1").queries == 5
    b.reset_client("c1")
    assert a.client_status("c1").queries == 0


def test_a_late_replica_replays_the_stream(replicas, stream, digits):
    a, b, _ = replicas
    a.share_state(RedisClientState(REDIS_URL, stream))
    a.inspect(digits.test.x[:7], "c2")
    b.share_state(RedisClientState(REDIS_URL, stream))  # starts after: replays
    assert b.client_status("c2").queries == 7


def test_redis_down_fails_closed(replicas, digits):
    a = replicas[0]
    a.shared = RedisClientState(f"redis://127.0.0.1:{free_port()}/0", "x", timeout_s=0.5)
    with pytest.raises(SharedStateUnavailable, match="unavailable"):
        a.inspect(digits.test.x[:1], "c3")


def test_the_local_store_decides_as_the_default_path(replicas, digits):
    a, _, ref = replicas
    a.share_state(LocalClientState())
    queries = _square_like(digits.test.x[5], 10, eps=0.03, seed=2)
    for i in range(10):
        got = a.inspect(queries[i : i + 1], "l1")[0]
        want = ref.inspect(queries[i : i + 1], "l1")[0]
        assert got.verdict == want.verdict and got.scores == want.scores
    assert a.query_status("l1") == ref.query_status("l1")


def test_a_micro_batch_of_several_clients_is_one_exchange(replicas, stream, digits, monkeypatch):
    """Replica a takes mixed-client micro-batches in one pass (one pipelined append and one
    read of the log), replica b single requests: both end where one process does."""
    a, b, ref = _shared(replicas, stream)
    x = digits.test.x
    calls = []
    real = a.shared.exchange_many
    monkeypatch.setattr(
        a.shared, "exchange_many", lambda batch: calls.append(len(batch)) or real(batch)
    )
    monkeypatch.setattr(a.shared, "exchange", None)  # the per-group path must not be taken
    groups = [("alice", 2), ("bob", 1), ("carol", 3)]
    for r in range(4):
        rows = x[r * 6 : r * 6 + 6]
        _, results = a.predict_and_inspect_groups(rows, groups, now=50.0 + r)
        assert not any(isinstance(v, Exception) for v in results)
        b.inspect(x[100 + r : 101 + r], "bob")
        start = 0
        for client, n in groups:
            want = ref.predict_and_inspect(rows[start : start + n], client, now=50.0 + r)[1]
            assert [v.verdict for v in results[groups.index((client, n))]] == [
                v.verdict for v in want
            ]
            start += n
        ref.inspect(x[100 + r : 101 + r], "bob")
    assert calls == [3, 3, 3, 3]
    for client in ("alice", "bob", "carol"):
        want = ref.client_status(client)
        for replica in (a, b):
            got = replica.client_status(client)
            assert got.queries == want.queries and got.prada_w == pytest.approx(want.prada_w)


def test_entries_trimmed_before_a_replica_read_them_are_reported(replicas, stream, digits, caplog):
    import redis

    a, b, _ = _shared(replicas, stream)
    x = digits.test.x
    a.inspect(x[:1], "alice")
    b.sync()  # b is up to date
    assert b.shared.check_gap(force=True) is False and b.shared.gaps == 0
    for i in (1, 2, 3):
        a.inspect(x[i : i + 1], "alice")
    redis.Redis.from_url(REDIS_URL).xtrim(stream, maxlen=1, approximate=False)  # 1, 2 gone
    with caplog.at_level("ERROR"):
        assert b.shared.check_gap(force=True) is True
    assert b.shared.gaps == 1 and "missed those observations" in caplog.text
    assert b.shared.check_gap(force=True) is False  # each loss reported once
    b.sync()  # and b carries on with what is there
    assert b.client_status("alice").queries == 2  # the first and the last: two were lost
    assert a.client_status("alice").queries == 4


def test_a_status_call_applies_what_the_serving_path_made_under_inference_mode(
    replicas, stream, digits
):
    """The gateway predicts under torch.inference_mode, so a client's PRADA buffers are
    inference tensors; the drift sampler and the dashboard ask for status outside it, and
    applying the other replica's observations then updated those buffers in place (a
    RuntimeError in every status call, seen with two workers)."""
    a, b, _ = _shared(replicas, stream)
    with torch.inference_mode():
        a.inspect(digits.test.x[:5], "c5")
        b.inspect(digits.test.x[5:10], "c5")  # a has not applied this one yet
    assert a.drift_status().window_size > 0
    assert a.client_status("c5").queries == 10
