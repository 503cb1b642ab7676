"""API keys on SQLite and PostgreSQL: create, look up, revoke, list; odd names and ids."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bastion.errors import ConfigError, StoreError
from bastion.store.keys import create_key, list_keys, lookup_key, revoke_key


def test_create_lookup_revoke(engine):
    before = datetime.now(UTC)
    info, secret = create_key(engine, "client", "acme")
    assert secret.startswith("bst_") and info.prefix == secret[:10]
    assert info.created.tzinfo is not None and info.created >= before
    found = lookup_key(engine, secret)
    assert found is not None and found.id == info.id and found.active
    assert found.created == info.created
    assert lookup_key(engine, secret + "x") is None
    assert lookup_key(engine, "bst_" + "a" * 200) is None
    revoked = revoke_key(engine, info.id)
    assert revoked.revoked is not None and revoked.revoked.tzinfo is not None
    assert revoke_key(engine, info.id).revoked == revoked.revoked  # idempotent
    assert lookup_key(engine, secret).active is False


def test_list_in_id_order(engine):
    made = [create_key(engine, role, f"k{i}")[0] for i, role in enumerate(("admin", "client"))]
    assert [k.id for k in list_keys(engine)] == [k.id for k in made]


@pytest.mark.parametrize("key_id", [0, 10**6, 2**31, 2**63 - 1])
def test_revoke_unknown_or_huge_id(engine, key_id):
    with pytest.raises(StoreError, match="no API key"):
        revoke_key(engine, key_id)


def test_bad_role(engine):
    with pytest.raises(ConfigError, match="unknown role"):
        create_key(engine, "root")


def test_name_of_full_length_and_unicode(engine):
    name = "é" * 128  # 128 characters (256 bytes): the column's length is in characters
    _info, secret = create_key(engine, "reviewer", name)
    assert lookup_key(engine, secret).name == name


@pytest.mark.parametrize("name", ["x" * 129, "nul\x00name"])
def test_name_the_column_cannot_hold_is_a_store_error(engine, name):
    # SQLite would keep these silently and PostgreSQL would raise a driver error: both
    # stores refuse them the same way, with one line
    with pytest.raises(StoreError, match="key name"):
        create_key(engine, "client", name)
    assert list_keys(engine) == []


def test_replicas_opening_a_fresh_store_at_once(db_url):
    # several gateways starting together each create the tables: none may fail
    import threading

    from bastion.store.db import make_engine

    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_store() -> None:
        barrier.wait()
        try:
            make_engine(db_url).dispose()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
