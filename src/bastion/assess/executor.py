"""Where an assessment's probes run: in this process (:class:`LocalExecutor`) or as Ray
tasks (:class:`RayExecutor`), one task per probe shard, on a local Ray started on demand or
on a cluster by address.

The unit of work is a shard (:class:`~bastion.assess.probe.Shard`): a probe that splits its
work (the white-box evasion probe: one shard per (attack, ε) job, the curve, the sanity
checks) has several, any other probe one. Both executors run the same shards through
:func:`run_shard`, each on a private copy of the context, so a shard sees only what it
would see in a sequential run: the finding keys already done (resume), fresh ``warnings``
and ``skipped`` lists, and the robust masks of the shards it reads. A shard reads the masks
of the earlier shards of its probe it ``needs``; the black-box probe's sanity check reads
the white-box evasion probe's masks, so ``blackbox`` runs after every ``evasion`` shard
(:data:`DEPENDS_ON`). On Ray a task takes the tasks it reads as arguments and starts when
they finish; on resume it takes the masks the checkpoint's shard (or probe) records kept.
Every random draw comes from ``ctx.generator(salt)`` or an explicit ``torch.manual_seed``,
so nothing depends on which shards ran before in the same process.

Results come back to the driver, which checkpoints each shard as its task finishes
(:meth:`Plan.record_shard <bastion.assess.runner.Plan.record_shard>`), writes the files it
made (its ``out_dir`` is a scratch folder on the worker), so a Ray cluster needs no shared
file system, and merges a probe's shards into its :class:`ProbeResult` when the last one is
in.
"""

from __future__ import annotations

import logging
import pickle
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from bastion.assess.probe import ProbeContext, Shard, shard_findings
from bastion.assess.registry import make_probe
from bastion.assess.schema import Finding, SanityWarning, Skipped
from bastion.errors import AssessmentError, BastionError, ConfigError
from bastion.progress import track

if TYPE_CHECKING:
    from bastion.assess.runner import Plan

log = logging.getLogger(__name__)

DEPENDS_ON: dict[str, str] = {
    "blackbox": "evasion"
}  # blackbox's sanity check reads evasion's masks
RAY_MISSING = "--executor ray needs Ray: install the ray extra (pip install 'bastion-ml[ray]')"


@dataclass
class ProbeResult:
    """What one probe (``shard`` None) or one shard of it produced: its findings, warnings
    and skipped parts, the robust masks the evasion probe leaves for the black-box one (a
    shard: the masks it made), a shard's ``outputs`` for the shards that need it (what it
    left in ``ctx.shard_outputs``), and (from a Ray task) the files it wrote under its
    ``out_dir``, by path relative to it."""

    probe: str
    findings: list[Finding] = field(default_factory=list)
    warnings: list[SanityWarning] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    robust_masks: dict[float, torch.Tensor] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    seconds: float = 0.0
    shard: str | None = None
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)  # a shard's, for others

    def to_record(self) -> dict[str, Any]:
        """The checkpoint's ``probe`` or ``shard`` record (findings have their own lines; a
        probe's warnings too, a shard's are in its record until its probe finishes)."""
        record: dict[str, Any] = {
            "probe": self.probe,
            "skipped": [s.model_dump(mode="json") for s in self.skipped],
            "robust_masks": {
                repr(float(e)): m.to(torch.int8).tolist() for e, m in self.robust_masks.items()
            },
        }
        if self.shard is not None:
            record["shard"] = self.shard
            record["warnings"] = [w.model_dump(mode="json") for w in self.warnings]
            record["outputs"] = {k: _tensor_record(t) for k, t in self.outputs.items()}
        return record

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> ProbeResult:
        shard = data.get("shard")
        return cls(
            probe=str(data["probe"]),
            skipped=[Skipped.model_validate(s) for s in data["skipped"]],
            warnings=[SanityWarning.model_validate(w) for w in data.get("warnings", [])],
            robust_masks={
                float(e): torch.tensor(m, dtype=torch.bool) for e, m in data["robust_masks"].items()
            },
            shard=None if shard is None else str(shard),
            outputs={k: _tensor(t) for k, t in data.get("outputs", {}).items()},
        )

    @classmethod
    def merge(cls, probe: str, parts: Sequence[ProbeResult], *, new: set[str]) -> ProbeResult:
        """One probe's result from its shards' (in shard order): the findings and time of
        the shards run now (``new``: their ids; the others' findings are in the checkpoint
        already), every shard's warnings, skipped parts and masks (the masks only for a
        probe another one reads)."""
        ran = [p for p in parts if p.shard in new]
        keeps = probe in DEPENDS_ON.values()
        return cls(
            probe=probe,
            findings=[f for p in ran for f in p.findings],
            warnings=[w for p in parts for w in p.warnings],
            skipped=[s for p in parts for s in p.skipped],
            robust_masks=merge_masks(parts) if keeps else {},
            seconds=round(sum(p.seconds for p in ran), 3),
        )


@dataclass(frozen=True, order=True)
class TaskRef:
    """One task an executor sent: the run's ``out_dir``, the probe and its shard id."""

    out_dir: str
    probe: str
    shard: str


def merge_masks(parts: Sequence[ProbeResult]) -> dict[float, torch.Tensor]:
    """The robust masks of ``parts``, in order (a later part's mask for an ε wins)."""
    return {e: m for p in parts for e, m in p.robust_masks.items()}


def _tensor_record(t: torch.Tensor) -> dict[str, Any]:
    """A tensor as JSON: dtype, shape and its values flat (float32 round-trips exactly)."""
    return {
        "dtype": str(t.dtype).removeprefix("torch."),
        "shape": list(t.shape),
        "data": t.flatten().tolist(),
    }


def _tensor(data: dict[str, Any]) -> torch.Tensor:
    dtype = getattr(torch, str(data["dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a tensor dtype: {data['dtype']}")
    return torch.tensor(data["data"], dtype=dtype).reshape(data["shape"])


OnDone = Callable[["Plan", ProbeResult], None]


class Executor(Protocol):
    """Runs the probes each plan has left (``plan.todo``) and hands every result to
    ``plan.record`` and then to the executor's ``on_done(plan, result)`` as it finishes."""

    def run(self, plans: list[Plan]) -> None: ...


def run_shard(
    ctx: ProbeContext,
    name: str,
    shard: Shard,
    upstream: Sequence[ProbeResult] = (),
    on_finding: Callable[[Finding], None] | None = None,
) -> ProbeResult:
    """Run one shard of probe ``name`` on a private copy of ``ctx``; ``upstream``: the
    results whose robust masks and outputs it reads (the shards it needs, or the probe it
    depends on)."""
    start = time.perf_counter()
    given = merge_masks(upstream)
    inputs = {k: t for p in upstream for k, t in p.outputs.items()}
    own = replace(
        ctx,
        done=set(ctx.done),
        warnings=[],
        skipped=[],
        robust_masks=dict(given),
        shard_outputs=dict(inputs),
        clean_retrain=None,
    )
    findings = []
    for finding in shard_findings(make_probe(name), own, shard):
        findings.append(finding)
        own.done.add(finding.key)
        if on_finding is not None:
            on_finding(finding)
    return ProbeResult(
        probe=name,
        shard=shard.id,
        findings=findings,
        warnings=own.warnings,
        skipped=own.skipped,
        robust_masks={e: m for e, m in own.robust_masks.items() if e not in given},
        outputs={k: t for k, t in own.shard_outputs.items() if k not in inputs},
        seconds=round(time.perf_counter() - start, 3),
    )


def shard_inputs(
    plan: Plan, name: str, shard: Shard, refs: dict[tuple[str, str], Any]
) -> list[Any]:
    """What a shard reads, in order: for each shard it needs and, when its probe depends on
    another (:data:`DEPENDS_ON`), each shard of that one (or its finished result), the
    finished result, else the pending task's entry in ``refs`` (a Ray object reference)."""
    wanted = [(name, need) for need in shard.needs]
    dep = DEPENDS_ON.get(name)
    out: list[Any] = []
    if dep in plan.chosen:
        done = plan.checkpoint.finished.get(dep)
        if done is not None:  # finished in an earlier run: its probe record kept the masks
            out.append(done)
        else:
            wanted += [(dep, s.id) for s in plan.shards(dep)]
    for key in wanted:
        part = plan.shard_done(*key)
        if part is None and key not in refs:
            raise AssessmentError(
                f"probe {name}'s shard {shard.id} reads shard {key[1]} of {key[0]}, "
                "which has not run"
            )
        out.append(part if part is not None else refs[key])
    return out


class LocalExecutor:
    """Shards one after another in this process, in each plan's order (the probes in
    registry order, a probe's shards in its order), each finding checkpointed as it comes."""

    def __init__(self, on_done: OnDone | None = None) -> None:
        self.on_done = on_done

    def run(self, plans: list[Plan]) -> None:
        on_done = self.on_done
        for plan in plans:
            for name in plan.todo:
                result = None
                left = plan.shards_left(name)
                shards = track(left, f"{name} shards") if len(left) > 1 else left
                for shard in shards:
                    index = plan.shard_index(name, shard.id)
                    part = run_shard(
                        plan.ctx,
                        name,
                        shard,
                        shard_inputs(plan, name, shard, {}),
                        on_finding=partial(plan.add_finding, shard_index=index),
                    )
                    result = plan.record_shard(part)
                if result is None:  # every shard was checkpointed, the probe record was not
                    result = plan.close(name)
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


def _shard_task(
    ctx_blob: bytes,
    form: str,
    name: str,
    shard: Shard,
    threads: int | None,
    *upstream: ProbeResult,
) -> ProbeResult:
    """The body of one Ray task: one probe shard in a scratch ``out_dir`` whose files travel
    back. The context arrives pickled (``ctx_blob``) so that the worker is prepared before
    the model is unpickled (Ray would unpickle an argument before the task's first line);
    ``upstream`` holds the results it reads (Ray passes finished tasks' results)."""
    from bastion.progress import set_progress

    _prepare_worker(form)
    ctx: ProbeContext = pickle.loads(ctx_blob)
    set_progress(False)
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="bastion-probe-") as tmp:
        root = Path(tmp)
        result = run_shard(replace(ctx, out_dir=root), name, shard, upstream)
        result.files = {
            str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()
        }
    return result


class RayExecutor:
    """One Ray task per probe shard (one CPU each), every plan's tasks submitted at once;
    a task that reads others' masks (a shard's ``needs``, the black-box probe after the
    evasion shards) takes their results as arguments, so Ray starts it when they finish.

    ``address`` names a running cluster (``auto``, ``ray://HOST:10001``, ``HOST:6379``);
    without it a local Ray with ``num_cpus`` CPUs (default: all) starts for the run and stops
    after it. A Ray already initialised in this process is used as it is. ``threads`` sets
    each task's torch threads (default: Ray's, one per CPU the task holds). ``on_done(plan,
    result)`` is called on the driver as each probe's last shard finishes. ``submitted``
    lists a :class:`TaskRef` for every task sent, in order.
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
        self.submitted: list[TaskRef] = []

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
        for plan in plans:  # every shard checkpointed, the probe record not: nothing to send
            for name in plan.todo:
                if not plan.shards_left(name):
                    self._done(plan, plan.close(name))
        if not any(plan.todo for plan in plans):
            return
        started = self._connect(ray)
        try:
            self._run(ray, plans)
        finally:
            if started:
                ray.shutdown()

    def _done(self, plan: Plan, result: ProbeResult) -> None:
        if self.on_done is not None:
            self.on_done(plan, result)

    def _submit(self, ray: Any, plans: list[Plan]) -> dict[Any, tuple[Plan, str, str]]:
        from ray import cloudpickle

        task = ray.remote(num_cpus=1, max_retries=0)(_shard_task)
        pending: dict[Any, tuple[Plan, str, str]] = {}
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
            refs: dict[tuple[str, str], Any] = {}
            form = plan.ctx.model.form
            for name in plan.todo:
                for shard in plan.shards_left(name):
                    upstream = shard_inputs(plan, name, shard, refs)
                    ref = task.remote(ctx_ref, form, name, shard, self.threads, *upstream)
                    refs[(name, shard.id)] = ref
                    pending[ref] = (plan, name, shard.id)
                    self.submitted.append(TaskRef(str(plan.ctx.out_dir), name, shard.id))
        log.info("submitted %d probe task(s) to Ray", len(pending))
        return pending

    def _run(self, ray: Any, plans: list[Plan]) -> None:
        pending = self._submit(ray, plans)
        failures: list[BaseException] = []
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            plan, name, shard = pending.pop(ready)
            try:
                part = ray.get(ready)
            except ray.exceptions.RayError as exc:  # the others still finish and checkpoint
                failures.append(_task_error(exc, name, shard, plan))
                continue
            result = plan.record_shard(part)
            if result is not None:
                self._done(plan, result)
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


def _task_error(exc: Exception, name: str, shard: str, plan: Plan) -> BaseException:
    """A failed task as the error the CLI reports: the probe's own BastionError if it raised
    one, else an AssessmentError naming the probe, its shard and the cause on one line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BastionError):
        return cause
    what = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc).splitlines()[0]
    return AssessmentError(
        f"probe {name} (shard {shard}) failed on Ray for {plan.ctx.out_dir} ({what}); finished "
        "shards are checkpointed: fix the cause and run again with the same --out to resume"
    )
