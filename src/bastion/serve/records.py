"""What every app over the record store opens the same way in its lifespan — the gateway
(`bastion serve`), the LLM firewall (`serve --upstream`) and the read-only dashboard
(`bastion dashboard`): the database engine, the key authenticator, the audit log, the review
queue and the client blocks, on ``app.state``."""

from __future__ import annotations

from typing import Any

from bastion.serve.audit_adapter import open_audit
from bastion.serve.auth import Authenticator
from bastion.serve.deps import ClientBlocks
from bastion.serve.reviews import ReviewQueue
from bastion.serve.settings import ServeSettings
from bastion.store.db import default_url, make_engine


async def open_records(state: Any, settings: ServeSettings, *, read_only: bool = False) -> None:
    """Open them onto ``state`` (which already holds ``metrics``). ``read_only`` (the
    dashboard without a model) never signs a new tree head and always checks keys."""
    state.engine = make_engine(settings.db_url)
    state.authenticator = Authenticator(
        state.engine,
        ttl_s=settings.auth.cache_ttl_s,
        enabled=True if read_only else settings.auth.enabled,
    )
    au = settings.audit
    url = au.url or settings.db_url or default_url()
    if read_only:  # reading only: never sign a new head here
        state.audit = await open_audit(
            url, enabled=au.enabled, key_file=au.key_file, checkpoint_every=0
        )
    else:
        state.audit = await open_audit(
            url,
            enabled=au.enabled,
            key_file=au.key_file,
            checkpoint_every=au.checkpoint_every,
            max_batch=au.max_batch,
            max_delay_ms=au.max_delay_ms,
        )
    state.reviews = ReviewQueue(
        state.engine, state.metrics, state.audit, escalate_after_s=settings.reviews.escalate_after_s
    )
    state.blocks = ClientBlocks(
        state.engine,
        expire_after_s=settings.blocks.expire_after_s,
        cache_ttl_s=settings.auth.cache_ttl_s,
    )
