"""The review queue on SQLite and PostgreSQL: tickets, racing reviewers, escalation."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import numpy as np
import pytest

from bastion.errors import StoreError
from bastion.store.review_inputs import get_inputs, save_inputs
from bastion.store.reviews import (
    count_held,
    create_ticket,
    decide_ticket,
    escalate_overdue,
    get_ticket,
    list_tickets,
)


def _ticket(engine, n: int = 1, client: int = 1):
    return create_ticket(
        engine,
        client_key_id=client,
        request_id=f"req{n}",
        n_samples=n,
        verdicts=[{"verdict": "hold", "reasons": ["z 9 > 3"]}],
        result={"predictions": [3] * n},
    )


def test_create_get_list_count(engine):
    a = _ticket(engine, 1)
    time.sleep(0.01)
    b = _ticket(engine, 2)
    assert a.created.tzinfo is not None
    assert get_ticket(engine, a.id) == a
    assert get_ticket(engine, "0" * 32) is None
    assert get_ticket(engine, "x" * 200) is None  # longer than any id: found nowhere
    assert [t.id for t in list_tickets(engine)] == [b.id, a.id]
    assert count_held(engine) == 2
    decide_ticket(engine, a.id, approve=False, reviewer_key_id=7, note="no")
    assert [t.id for t in list_tickets(engine)] == [b.id]
    assert [t.id for t in list_tickets(engine, status=None, limit=1)] == [b.id]
    rejected = get_ticket(engine, a.id)
    assert rejected.status == "rejected" and rejected.result is None
    assert rejected.decided is not None and rejected.decided.tzinfo is not None
    assert count_held(engine) == 1


def test_decide_twice_and_unknown(engine):
    t = _ticket(engine)
    done = decide_ticket(engine, t.id, approve=True, reviewer_key_id=3, note="ok ✓")
    assert done.status == "approved" and done.result == {"predictions": [3]}
    assert done.note == "ok ✓" and done.reviewer_key_id == 3
    with pytest.raises(StoreError, match="already approved"):
        decide_ticket(engine, t.id, approve=False, reviewer_key_id=4)
    with pytest.raises(StoreError, match="no ticket"):
        decide_ticket(engine, "f" * 32, approve=True, reviewer_key_id=3)


def test_note_with_nul_is_a_store_error(engine):
    t = _ticket(engine)
    with pytest.raises(StoreError, match="NUL"):
        decide_ticket(engine, t.id, approve=True, reviewer_key_id=3, note="a\x00b")
    assert get_ticket(engine, t.id).status == "held"


def test_racing_reviewers_one_wins(engine):
    t = _ticket(engine)
    wins, losses = [], []
    barrier = threading.Barrier(6)

    def review(i: int) -> None:
        barrier.wait()
        try:
            wins.append(decide_ticket(engine, t.id, approve=i % 2 == 0, reviewer_key_id=i))
        except StoreError:
            losses.append(i)

    threads = [threading.Thread(target=review, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(wins) == 1 and len(losses) == 5
    assert get_ticket(engine, t.id).status == wins[0].status


def test_escalate_overdue_once(engine):
    t = _ticket(engine)
    assert escalate_overdue(engine, older_than_s=3600) == []
    first = escalate_overdue(engine, older_than_s=0)
    assert [x.id for x in first] == [t.id]
    assert first[0].escalated is not None and first[0].escalated <= datetime.now(UTC)
    assert escalate_overdue(engine, older_than_s=0) == []


def test_review_inputs_roundtrip_and_overwrite(engine):
    t = _ticket(engine)
    x = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
    assert get_inputs(engine, t.id) is None
    save_inputs(engine, t.id, x)
    np.testing.assert_array_equal(get_inputs(engine, t.id), x)
    save_inputs(engine, t.id, x[:1] * 2)  # an upsert, on both stores
    np.testing.assert_array_equal(get_inputs(engine, t.id), x[:1] * 2)


def test_replicas_escalating_at_once_escalate_each_ticket_once(engine):
    tickets = {_ticket(engine, i).id for i in range(1, 6)}
    got: list[str] = []
    barrier = threading.Barrier(4)

    def check() -> None:
        barrier.wait()
        got.extend(t.id for t in escalate_overdue(engine, older_than_s=0))

    threads = [threading.Thread(target=check) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(got) == sorted(tickets)  # each once, by one of the checkers
