"""What ``bastion serve`` checks before it says "serving on …": everything the app's lifespan
will open, opened once here so a bad setting is one line (exit 2) rather than a traceback
from inside uvicorn.

:func:`preflight` opens the record store (``--db``), the audit log and its signing key
(``audit.key_file`` / ``$BASTION_AUDIT_KEY``), pings Redis (``--redis-url``) and loads the
TLS certificate and key; :func:`bind` takes the listening socket (a port in use is one
line too). Each failure raises a :class:`~bastion.errors.ConfigError` or
:class:`~bastion.errors.StoreError` naming the setting and the fix.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

from bastion.audit import AuditLog, resolve_signing_key
from bastion.errors import BastionError, ConfigError
from bastion.serve.settings import ServeSettings
from bastion.store.db import default_url, make_engine, shown_url

REDIS_TIMEOUT_S = 2.0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_store(url: str | None) -> None:
    """The record store opens and holds the gateway's tables."""
    engine = make_engine(url)  # StoreError, one line, for a bad URL or an unreachable server
    engine.dispose()


def check_audit(settings: ServeSettings) -> None:
    """The audit log opens and its signing key (if any) reads."""
    au = settings.audit
    if not au.enabled:
        return
    url = au.url or settings.db_url or default_url()
    try:
        key = resolve_signing_key(au.key_file)  # a bad key file is its one-line error
        audit_log = AuditLog.open(url, signing_key=key, checkpoint_every=au.checkpoint_every)
    except BastionError:
        raise
    except Exception as exc:  # a driver's own error: name the log and the first line
        raise ConfigError(
            f"cannot open the audit log at {shown_url(url)!r} ({type(exc).__name__}: "
            f"{_first_line(exc)}): check audit.url / --db"
        ) from None
    audit_log.close()


def check_redis(settings: ServeSettings) -> None:
    """Redis answers a PING when rate limits are shared through it."""
    url = settings.redis_url
    if not url or not settings.rate_limit.enabled:
        return
    try:
        import redis
    except ImportError:  # pragma: no cover - redis is in the `scale` extra
        raise ConfigError(
            "--redis-url needs the redis package: pip install 'bastion-ml[scale]'"
        ) from None
    try:
        client = redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"bad --redis-url {url!r}: {_first_line(exc)}") from None
    try:
        client.ping()
    except Exception as exc:  # ConnectionError, TimeoutError, AuthenticationError, ...
        raise ConfigError(
            f"cannot reach Redis at {url} ({type(exc).__name__}: {_first_line(exc)}): start "
            "it or drop --redis-url"
        ) from None
    finally:
        client.close()


def check_tls(cert: Path | None, key: Path | None) -> None:
    """The certificate and key are PEM files that belong together."""
    if cert is None or key is None:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot use the TLS certificate {cert} with the key {key} "
            f"({_first_line(exc)}): give a PEM certificate and its unencrypted PEM key"
        ) from None


def preflight(settings: ServeSettings) -> None:
    """Open, check and close everything the app's lifespan will open."""
    check_tls(settings.ssl_certfile, settings.ssl_keyfile)
    check_store(settings.db_url)
    check_audit(settings)
    check_redis(settings)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket on ``host:port`` (uvicorn serves on it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"cannot resolve --host {host!r}: {_first_line(exc)}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): pick another --port"
        ) from None
    sock.set_inheritable(True)
    return sock


def serve_on(server: Any, sock: socket.socket) -> None:
    """Run the uvicorn ``server`` on the bound ``sock`` until it stops, then close the socket.
    uvicorn re-raises the Ctrl-C it shut down on gracefully: that stop is a clean exit (0);
    an interrupt before the server ran stays exit 130."""
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        if not server.should_exit:
            raise
    finally:
        sock.close()
