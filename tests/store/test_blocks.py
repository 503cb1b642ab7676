"""Client blocks on SQLite and PostgreSQL: block, find, list, expire, replace, unblock."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest

from bastion.errors import StoreError
from bastion.store.blocks import (
    NotBlocked,
    UnknownClient,
    block_client,
    client_info,
    get_block,
    list_blocks,
    require_client,
    unblock_client,
)
from bastion.store.keys import create_key

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture()
def client_id(engine) -> int:
    return create_key(engine, "client", "acme")[0].id


def test_block_get_list_unblock(engine, client_id):
    other = create_key(engine, "client", "globex")[0].id
    b, created = block_client(
        engine, client_id, reasons=["guard: extreme", "x"], created_by="guard", now=T0
    )
    assert created and b.reasons == ["guard: extreme", "x"] and b.created == T0
    again, created2 = block_client(engine, client_id, reasons=["y"], created_by="guard", now=T0)
    assert not created2 and again.id == b.id
    block_client(engine, other, reasons=["z"], created_by="admin", now=T0 + timedelta(seconds=1))
    assert get_block(engine, client_id, now=T0) == b
    assert [x.client_id for x in list_blocks(engine, now=T0 + timedelta(seconds=2))] == [
        other,
        client_id,
    ]
    gone = unblock_client(engine, client_id, removed_by="admin", now=T0 + timedelta(minutes=1))
    assert gone.removed == T0 + timedelta(minutes=1) and gone.removed_by == "admin"
    assert get_block(engine, client_id, now=T0 + timedelta(minutes=2)) is None
    with pytest.raises(NotBlocked):
        unblock_client(engine, client_id, removed_by="admin")


def test_expiry_in_any_time_zone(engine, client_id):
    east = timezone(timedelta(hours=5))
    expires = (T0 + timedelta(hours=1)).astimezone(east)
    b, _ = block_client(
        engine, client_id, reasons=["r"], created_by="guard", expires=expires, now=T0
    )
    assert b.expires == expires and b.expires.tzinfo is not None
    assert get_block(engine, client_id, now=T0 + timedelta(minutes=59)) is not None
    assert get_block(engine, client_id, now=T0 + timedelta(hours=1)) is None
    assert list_blocks(engine, now=T0 + timedelta(hours=2)) == []
    with pytest.raises(StoreError, match="must expire after"):
        block_client(engine, client_id, reasons=["r"], created_by="g", expires=T0, now=T0)


def test_replace_keeps_history(engine, client_id):
    old, _ = block_client(engine, client_id, reasons=["a"], created_by="guard", now=T0)
    new, created = block_client(
        engine,
        client_id,
        reasons=["b"],
        created_by="admin",
        replace=True,
        now=T0 + timedelta(seconds=5),
    )
    assert created and new.id != old.id
    assert get_block(engine, client_id, now=T0 + timedelta(seconds=6)).id == new.id


@pytest.mark.parametrize("cid", [999, 2**31, 2**63 - 1, 2**70])
def test_unknown_or_huge_client(engine, cid):
    assert client_info(engine, cid) is None and get_block(engine, cid) is None
    with pytest.raises(UnknownClient):
        require_client(engine, cid)
    with pytest.raises(NotBlocked):
        unblock_client(engine, cid, removed_by="admin")


def test_concurrent_blocks_make_one(engine, client_id):
    made: list[bool] = []
    barrier = threading.Barrier(4)

    def go() -> None:
        barrier.wait()
        made.append(block_client(engine, client_id, reasons=["r"], created_by="guard")[1])

    threads = [threading.Thread(target=go) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert made.count(True) == 1
    assert len(list_blocks(engine)) == 1
