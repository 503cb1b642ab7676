"""The risk register the gateway shows and edits (``risk_register`` in serve.yaml: the JSON
file of ``bastion risk init``). Reads load the file; edits are serialised by a lock, applied
with the register's own methods (so every change lands in the risk's history, with who made
it) and written back atomically."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import anyio.to_thread

from bastion.risk.register import Risk, RiskRegister, load_register, save_register


class NoRegister(LookupError):
    """The gateway has no risk register configured (the API answers 404)."""


class RiskRegisterFile:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    def _path(self) -> Path:
        if self.path is None:
            raise NoRegister("no risk register is configured: set risk_register in serve.yaml")
        return self.path

    async def read(self) -> RiskRegister:
        """The register as the file holds it now (ConfigError when unreadable)."""
        return await anyio.to_thread.run_sync(load_register, self._path())

    async def edit(self, risk_id: str, apply: Callable[[RiskRegister], Risk]) -> Risk:
        """Load, ``apply`` (a register method call; ConfigError for a bad edit), save."""
        path = self._path()

        def run() -> Risk:
            register = load_register(path)
            risk = apply(register)
            save_register(register, path)
            return risk

        async with self._lock:
            return await anyio.to_thread.run_sync(run)
