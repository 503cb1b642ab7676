"""The local PostgreSQL and Redis the back-end tests use, and why a test must skip without
them."""

from __future__ import annotations

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"


def pg_unreachable(url: str = PG_URL) -> str | None:
    """None when PostgreSQL answers at ``url``, else the reason to skip."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'bastion-ml[scale]')"
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {url} is unreachable: {str(exc).strip()}"
    return None


def redis_unreachable() -> str | None:
    """None when Redis answers at :data:`REDIS_URL`, else the reason to skip."""
    try:
        import redis
    except ImportError:
        return "the redis package is not installed (pip install 'bastion-ml[scale]')"
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except (redis.RedisError, OSError) as exc:
        return f"Redis at {REDIS_URL} is unreachable: {exc}"
    return None
