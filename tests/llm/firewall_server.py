"""The LLM firewall app on a free loopback port, in a thread (uvicorn), with client,
second client and reviewer keys in a fresh SQLite store."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import openai
import uvicorn

from bastion.audit import AuditLog
from bastion.llm.firewall.app import create_firewall_app
from bastion.llm.firewall.config import FirewallSettings
from bastion.llm.profile import AppProfile
from bastion.serve.settings import ServeSettings
from bastion.store.db import make_engine
from bastion.store.keys import create_key
from tests.ports import free_port


class FirewallServer:
    def __init__(
        self,
        tmp: Path,
        upstream: str,
        profile: AppProfile | None,
        *,
        firewall: dict[str, Any] | None = None,
        serve: dict[str, Any] | None = None,
    ) -> None:
        self.db = f"sqlite:///{tmp / 'firewall.db'}"
        engine = make_engine(self.db)
        self.keys: dict[str, str] = {}
        self.ids: dict[str, int] = {}
        for name, role in (
            ("client", "client"),
            ("client2", "client"),
            ("client3", "client"),
            ("reviewer", "reviewer"),
            ("admin", "admin"),
        ):
            info, secret = create_key(engine, role, name)
            self.keys[name], self.ids[name] = secret, info.id
        engine.dispose()
        self.fw = FirewallSettings.model_validate({"upstream": upstream, **(firewall or {})})
        self.settings = ServeSettings.model_validate(
            {
                "db_url": self.db,
                "auth": {"cache_ttl_s": 0.0},
                "reviews": {"check_every_s": 3600},
                **(serve or {}),
            }
        )
        self.app = create_firewall_app(self.settings, self.fw, profile)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def client(self, key: str = "client", **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.base}/v1", api_key=self.keys.get(key, key), max_retries=0, **kwargs
        )

    def audit_entries(self) -> list[dict[str, Any]]:
        with AuditLog.open(self.db) as log:
            return [e for _, e in log.tail(10_000)]

    def __enter__(self) -> FirewallServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the firewall did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
