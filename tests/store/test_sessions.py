"""Dashboard sessions on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bastion.store.keys import create_key
from bastion.store.sessions import create_session, delete_session, get_session, purge_expired

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_session_life(engine):
    key = create_key(engine, "reviewer", "rita")[0]
    token, rec = create_session(engine, key, max_s=3600, now=T0)
    assert rec.expires == T0 + timedelta(hours=1) and rec.key_id == key.id
    seen = get_session(engine, token, idle_s=600, now=T0 + timedelta(minutes=5))
    assert seen is not None and seen.last_seen == T0 + timedelta(minutes=5)
    assert seen.csrf == rec.csrf
    assert get_session(engine, token + "x", idle_s=600, now=T0) is None
    assert get_session(engine, "", idle_s=600) is None
    assert get_session(engine, "t" * 500, idle_s=600) is None
    # idle for longer than idle_s: gone, and deleted
    assert get_session(engine, token, idle_s=600, now=T0 + timedelta(minutes=16)) is None
    assert get_session(engine, token, idle_s=10**6, now=T0 + timedelta(minutes=17)) is None


def test_logout_and_purge(engine):
    key = create_key(engine, "admin", "ada")[0]
    t1, _ = create_session(engine, key, max_s=60, now=T0)
    t2, _ = create_session(engine, key, max_s=3600, now=T0)
    t3, _ = create_session(engine, key, max_s=3600, now=T0)
    assert delete_session(engine, t3) and not delete_session(engine, t3)
    assert purge_expired(engine, idle_s=600, now=T0 + timedelta(minutes=2)) == 1
    assert get_session(engine, t1, idle_s=600, now=T0 + timedelta(minutes=3)) is None
    assert get_session(engine, t2, idle_s=600, now=T0 + timedelta(minutes=3)) is not None
