"""The local Redis the shared-state tests use, and why a test must skip without it."""

from __future__ import annotations

REDIS_URL = "redis://127.0.0.1:6379/0"


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
