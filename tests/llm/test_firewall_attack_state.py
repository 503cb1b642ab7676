"""The firewall's per-key attack-pattern counts shared by replicas through Redis: a key that
spreads its injection attempts over two replicas is blocked at the same attempt as against
one; unblocking on one replica resets the count on both; without Redis nothing breaks."""

from __future__ import annotations

import uuid

import pytest

from bastion.llm.firewall.attack_state import AttackState, RedisAttackState
from tests.services import REDIS_URL, redis_unreachable


@pytest.fixture()
def prefix():
    reason = redis_unreachable()
    if reason:
        pytest.skip(reason)
    import redis

    name = f"bastion-test:fw:{uuid.uuid4().hex}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{name}:*"):
        client.delete(key)


def test_replicas_count_a_key_together(prefix):
    now = [1000.0]
    a, b = (
        RedisAttackState(
            REDIS_URL, max_attempts=3, window_s=60, prefix=prefix, clock=lambda: now[0]
        )
        for _ in range(2)
    )
    alone = AttackState(max_attempts=3, window_s=60, clock=lambda: now[0])
    verdicts = []
    for i in range(3):
        replica = a if i % 2 == 0 else b
        verdicts.append((replica.record(7), alone.record(7)))
    assert verdicts == [(False, False), (False, False), (True, True)]
    assert a.attempts(7) == b.attempts(7) == 3 and a.attempts(8) == 0
    b.forget(7)  # an admin unblocked the key on replica b
    assert a.attempts(7) == 0
    now[0] += 61  # attempts older than the window do not count
    a.record(9)
    now[0] += 61
    assert a.attempts(9) == 0 and not b.record(9)


def test_an_unreachable_redis_counts_nothing_and_raises_nothing(caplog):
    from tests.ports import free_port

    state = RedisAttackState(
        f"redis://127.0.0.1:{free_port()}/0", max_attempts=1, window_s=60, timeout_s=0.5
    )
    with caplog.at_level("ERROR"):
        assert state.record(1) is False and state.attempts(1) == 0
    assert "attempt not counted" in caplog.text
