"""The ``--executor`` / ``--address`` options `bastion assess` and `bastion sweep` share:
where the probes run, and one console line per probe as each finishes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from bastion.cli.common import console
from bastion.cli.validate import choice_check
from bastion.errors import ConfigError

if TYPE_CHECKING:
    from bastion.assess.executor import Executor, ProbeResult
    from bastion.assess.runner import Plan

ExecutorOpt = Annotated[
    str,
    typer.Option(
        help="where probes run: local (this process) | ray (one Ray task per probe shard; "
        "a local Ray starts on demand unless --address names a cluster)",
        callback=choice_check(("local", "ray"), "executor"),
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(help="with --executor ray: the cluster (auto, ray://HOST:10001, HOST:6379)"),
]


class ProbeProgress:
    """``on_done`` for an executor: one line per finished probe, with a running count."""

    def __init__(self) -> None:
        self.count = 0
        self.start = time.perf_counter()

    def __call__(self, plan: Plan, result: ProbeResult) -> None:
        self.count += 1
        left = len([n for n in plan.chosen if plan.finished(n) is None])
        console.print(
            f"[green]✓[/] {plan.ctx.out_dir.name}: {result.probe} "
            f"({len(result.findings)} finding(s), {result.seconds:.1f} s) · "
            f"{self.count} probe(s) done, {left} left here · "
            f"{time.perf_counter() - self.start:.0f} s",
            highlight=False,
        )


def make_executor(name: str, address: str | None) -> Executor:
    """The executor the options name; ``ray`` is checked to be installed before any work."""
    from bastion.assess.executor import LocalExecutor, RayExecutor, check_address, require_ray

    if name != "ray":
        if address is not None:
            raise ConfigError("--address names a Ray cluster: give it with --executor ray")
        return LocalExecutor(on_done=ProbeProgress())
    require_ray()
    if address is not None:
        check_address(address)
    return RayExecutor(address, on_done=ProbeProgress())
