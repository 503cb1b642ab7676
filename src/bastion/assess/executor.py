"""Where an assessment's probes run: in this process (:class:`LocalExecutor`) or as Ray
tasks (:class:`RayExecutor`), one task per probe, on a local Ray started on demand or on a
cluster by address.

Both run each probe through :func:`run_probe` on a private copy of the context, so a probe
sees only what it would see in a sequential run: the finding keys already done (resume),
fresh ``warnings`` and ``skipped`` lists, and, for the one probe that reads another's
output, that output. The black-box probe's sanity check compares its results with the
white-box evasion probe's per-point robust masks (``ctx.robust_masks``), so ``blackbox``
runs after ``evasion`` (:data:`DEPENDS_ON`): on Ray its task takes the evasion task's
result as an argument and starts when that finishes; on resume it takes the masks the
evasion probe's checkpoint record kept. Every random draw in a probe comes from
``ctx.generator(salt)`` or an explicit ``torch.manual_seed``, so nothing depends on which
probes ran before in the same process.

Results come back to the driver, which checkpoints them (:meth:`Plan.record
<bastion.assess.runner.Plan.record>`) as each task finishes and writes the files a probe
made (its ``out_dir`` is a scratch folder on the worker), so a Ray cluster needs no shared
file system.
"""

from __future__ import annotations

import logging
import pickle
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from bastion.assess.probe import ProbeContext
from bastion.assess.registry import make_probe
from bastion.assess.schema import Finding, SanityWarning, Skipped
from bastion.errors import AssessmentError, BastionError, ConfigError

if TYPE_CHECKING:
    from bastion.assess.runner import Plan

log = logging.getLogger(__name__)

DEPENDS_ON: dict[str, str] = {
    "blackbox": "evasion"
}  # blackbox's sanity check reads evasion's masks
RAY_MISSING = "--executor ray needs Ray: install the ray extra (pip install 'bastion-ml[ray]')"


@dataclass
class ProbeResult:
    """What one probe produced: its findings, warnings and skipped parts, the robust masks
    the evasion probe leaves for the black-box one, and (from a Ray task) the files it
    wrote under its ``out_dir``, by path relative to it."""

    probe: str
    findings: list[Finding] = field(default_factory=list)
    warnings: list[SanityWarning] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    robust_masks: dict[float, torch.Tensor] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    seconds: float = 0.0

    def to_record(self) -> dict[str, Any]:
        """The checkpoint's ``probe`` record (findings and warnings have their own lines)."""
        return {
            "probe": self.probe,
            "skipped": [s.model_dump(mode="json") for s in self.skipped],
            "robust_masks": {
                repr(float(e)): m.to(torch.int8).tolist() for e, m in self.robust_masks.items()
            },
        }

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> ProbeResult:
        return cls(
            probe=str(data["probe"]),
            skipped=[Skipped.model_validate(s) for s in data["skipped"]],
            robust_masks={
                float(e): torch.tensor(m, dtype=torch.bool) for e, m in data["robust_masks"].items()
            },
        )


OnDone = Callable[["Plan", ProbeResult], None]


class Executor(Protocol):
    """Runs the probes each plan has left (``plan.todo``) and hands every result to
    ``plan.record`` and then to the executor's ``on_done(plan, result)`` as it finishes."""

    def run(self, plans: list[Plan]) -> None: ...


def run_probe(
    ctx: ProbeContext,
    name: str,
    masks: dict[float, torch.Tensor] | None = None,
    on_finding: Callable[[Finding], None] | None = None,
) -> ProbeResult:
    """Run probe ``name`` on a private copy of ``ctx`` (``masks``: the evasion probe's
    robust masks, for the black-box sanity check)."""
    start = time.perf_counter()
    own = replace(
        ctx,
        done=set(ctx.done),
        warnings=[],
        skipped=[],
        robust_masks=dict(masks or {}),
        clean_retrain=None,
    )
    findings = []
    for finding in make_probe(name).run(own):
        findings.append(finding)
        own.done.add(finding.key)
        if on_finding is not None:
            on_finding(finding)
    keeps = name in DEPENDS_ON.values()
    return ProbeResult(
        probe=name,
        findings=findings,
        warnings=own.warnings,
        skipped=own.skipped,
        robust_masks=own.robust_masks if keeps else {},
        seconds=round(time.perf_counter() - start, 3),
    )


def upstream_masks(plan: Plan, name: str) -> dict[float, torch.Tensor]:
    """The masks probe ``name`` reads from the probe it depends on, if that one ran."""
    dep = DEPENDS_ON.get(name)
    done = plan.finished(dep) if dep in plan.chosen else None
    return done.robust_masks if done is not None else {}


class LocalExecutor:
    """Probes one after another in this process, each finding checkpointed as it comes."""

    def __init__(self, on_done: OnDone | None = None) -> None:
        self.on_done = on_done

    def run(self, plans: list[Plan]) -> None:
        on_done = self.on_done
        for plan in plans:
            for name in plan.todo:
                result = run_probe(
                    plan.ctx, name, upstream_masks(plan, name), on_finding=plan.add_finding
                )
                plan.record(result)
                if on_done is not None:
                    on_done(plan, result)


def require_ray() -> Any:
    """The ``ray`` module, or a ConfigError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


def _prepare_worker(form: str) -> None:
    """What must be imported before a model of ``form`` is unpickled on a worker: an ONNX
    graph converted by onnx2torch needs onnx2torch, which imports torchvision at import —
    Bastion does without it: :func:`~bastion.models.forms_torch.import_onnx2torch` puts its
    stand-in in place."""
    if form == "onnx-torch":
        from bastion.models.forms_torch import import_onnx2torch

        import_onnx2torch()


def _probe_task(
    ctx_blob: bytes,
    form: str,
    name: str,
    upstream: ProbeResult | dict | None,
    threads: int | None,
) -> ProbeResult:
    """The body of one Ray task: the probe in a scratch ``out_dir`` whose files travel back.
    The context arrives pickled (``ctx_blob``) so that the worker is prepared before the
    model is unpickled (Ray would unpickle an argument before the task's first line)."""
    from bastion.progress import set_progress

    _prepare_worker(form)
    ctx: ProbeContext = pickle.loads(ctx_blob)
    set_progress(False)
    if threads:
        torch.set_num_threads(threads)
    masks = upstream.robust_masks if isinstance(upstream, ProbeResult) else upstream
    with tempfile.TemporaryDirectory(prefix="bastion-probe-") as tmp:
        root = Path(tmp)
        result = run_probe(replace(ctx, out_dir=root), name, masks)
        result.files = {
            str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()
        }
    return result


class RayExecutor:
    """One Ray task per probe (one CPU each), every plan's tasks submitted at once.

    ``address`` names a running cluster (``auto``, ``ray://HOST:10001``, ``HOST:6379``);
    without it a local Ray with ``num_cpus`` CPUs (default: all) starts for the run and stops
    after it. A Ray already initialised in this process is used as it is. ``threads`` sets
    each task's torch threads (default: Ray's, one per CPU the task holds). ``on_done(plan,
    result)`` is called on the driver as each task finishes. ``submitted`` lists
    ``(out_dir, probe)`` for every task sent, in order.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        threads: int | None = None,
        on_done: OnDone | None = None,
    ) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.threads = threads
        self.on_done = on_done
        self.submitted: list[tuple[str, str]] = []

    def _connect(self, ray: Any) -> bool:
        """Start or join Ray; True when this call started it (and must stop it)."""
        if ray.is_initialized():
            return False
        if self.address:
            check_address(self.address)
        try:
            if self.address:
                ray.init(address=self.address, include_dashboard=False)
            else:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"at {self.address}" if self.address else "locally"
            raise ConfigError(f"cannot start or reach Ray {where}: {exc}") from None
        return True

    def run(self, plans: list[Plan]) -> None:
        ray = require_ray()
        for plan in plans:
            if plan.ctx.device.type != "cpu" and plan.todo:
                raise ConfigError(
                    f"--executor ray runs probes on CPU workers, got --device {plan.ctx.device}: "
                    "use --device cpu or --executor local"
                )
        if not any(plan.todo for plan in plans):
            return
        started = self._connect(ray)
        try:
            self._run(ray, plans)
        finally:
            if started:
                ray.shutdown()

    def _submit(self, ray: Any, plans: list[Plan]) -> dict[Any, tuple[Plan, str]]:
        from ray import cloudpickle

        task = ray.remote(num_cpus=1, max_retries=0)(_probe_task)
        pending: dict[Any, tuple[Plan, str]] = {}
        for plan in plans:
            if not plan.todo:
                continue
            try:
                ctx_ref = ray.put(cloudpickle.dumps(plan.ctx))
            except Exception as exc:  # cloudpickle raises many types for what it cannot ship
                model = plan.ctx.model
                raise ConfigError(
                    f"the {model.form} model {model.name} cannot be sent to Ray workers "
                    f"({_pickle_problem(exc)}): use --executor local"
                ) from None
            refs: dict[str, Any] = {}
            for name in plan.todo:
                dep = DEPENDS_ON.get(name)
                upstream = refs[dep] if dep in refs else upstream_masks(plan, name)
                refs[name] = task.remote(ctx_ref, plan.ctx.model.form, name, upstream, self.threads)
                pending[refs[name]] = (plan, name)
                self.submitted.append((str(plan.ctx.out_dir), name))
        log.info("submitted %d probe task(s) to Ray", len(pending))
        return pending

    def _run(self, ray: Any, plans: list[Plan]) -> None:
        pending = self._submit(ray, plans)
        failures: list[BaseException] = []
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            plan, name = pending.pop(ready)
            try:
                result = ray.get(ready)
            except ray.exceptions.RayError as exc:  # the others still finish and checkpoint
                failures.append(_task_error(exc, name, plan))
                continue
            plan.record(result)
            if self.on_done is not None:
                self.on_done(plan, result)
        if failures:
            raise failures[0]


def check_address(address: str, timeout: float = 5.0) -> None:
    """A ``HOST:PORT`` (or ``ray://HOST:PORT``) address answers a TCP connect, else one
    line: Ray itself retries an unreachable address without end."""
    if address == "auto" or ":" not in address.removeprefix("ray://"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot reach Ray at {address} ({exc}): start the cluster (`ray start --head`) "
            "or drop --address to run on a local Ray"
        ) from None


def _pickle_problem(exc: Exception) -> str:
    """What could not be pickled: the cause Ray's (long) serialization report wraps."""
    cause = exc.__cause__ or exc.__context__ or exc
    first = next((ln.strip() for ln in str(cause).splitlines() if ln.strip()), "")
    return f"{type(cause).__name__}: {first[:200]}"


def _task_error(exc: Exception, name: str, plan: Plan) -> BaseException:
    """A failed task as the error the CLI reports: the probe's own BastionError if it raised
    one, else an AssessmentError naming the probe and the cause on one line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BastionError):
        return cause
    what = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc).splitlines()[0]
    return AssessmentError(
        f"probe {name} failed on Ray for {plan.ctx.out_dir} ({what}); finished probes are "
        "checkpointed: fix the cause and run again with the same --out to resume"
    )
