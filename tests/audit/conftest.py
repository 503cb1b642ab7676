"""Fixtures of the audit-log tests: a signing key, a fresh SQLite log, and the same log on
the real PostgreSQL server (a unique schema per test, dropped afterwards)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.audit import AuditLog
from tests.services import PG_URL, pg_unreachable


@pytest.fixture(scope="session")
def pg_skip_reason() -> str | None:
    return pg_unreachable()


@pytest.fixture()
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture()
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'audit.db'}"


@pytest.fixture()
def pg_schema(pg_skip_reason) -> Iterator[str]:
    """A fresh schema name on the test server, dropped after the test."""
    if pg_skip_reason:
        pytest.skip(pg_skip_reason)
    import psycopg

    schema = f"bastion_audit_test_{uuid.uuid4().hex[:12]}"
    yield schema
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def open_log(request, tmp_path) -> Iterator[Callable[..., AuditLog]]:
    """``open_log(**kw)`` opens the same log (SQLite file or PostgreSQL schema) each call."""
    opened: list[AuditLog] = []
    if request.param == "sqlite":
        url, schema = f"sqlite:///{tmp_path / 'audit.db'}", None
    else:
        url, schema = PG_URL, request.getfixturevalue("pg_schema")

    def _open(**kw) -> AuditLog:
        log = AuditLog.open(url, schema=schema, **kw)
        opened.append(log)
        return log

    yield _open
    for log in opened:
        log.close()


def entry(i: int) -> dict:
    """A gateway-like decision entry."""
    return {
        "event": "predict",
        "key_id": f"k{i % 7}",
        "input_sha256": f"{i * 7919:064x}",
        "scores": {"mahalanobis": 1.25 + i, "recon": 0.01},
        "verdict": "allow",
        "model": "sha256:abc",
        "latency_ms": 3.5,
        "seq": i,
    }
