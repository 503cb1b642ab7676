"""Fixtures of the record-store tests: every test runs on SQLite and on the real PostgreSQL
server (skipped, with the reason, when it cannot be reached).

PostgreSQL tests of one pytest session share one fresh database ``bastion_test_<random>``,
created at the first use and dropped at the end, so parallel sessions never meet; each test
drops the store's tables afterwards so that tests do not see each other's rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from bastion.store.db import Base, make_engine
from tests.services import PG_URL, pg_unreachable


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this session (SQLAlchemy URL), dropped at the end."""
    reason = pg_unreachable()
    if reason:
        pytest.skip(reason)
    import psycopg

    name = f"bastion_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> Iterator[str]:
    """The URL of an empty record store: a SQLite file, or the session's PostgreSQL database
    (its tables dropped after the test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    url = request.getfixturevalue("pg_database")
    yield url
    engine = make_engine(url)
    Base.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture()
def engine(db_url) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()
