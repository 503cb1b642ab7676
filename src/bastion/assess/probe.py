"""The probe contract: a probe turns an attack into evidence (Findings).

A probe is any object with a ``name``, ``applicable(ctx) -> str | Skipped | None`` (why it
does not apply to this model, data and threat model — a string means "not applicable" — or
None) and ``run(ctx) -> Iterable[Finding]``. Long probes yield findings one by one so the
runner can checkpoint after each; ``done`` holds finding keys already finished (resume).

What probes share is typed: ``robust_masks`` (the white-box per-point results the black-box
sanity check reads), ``query_target`` (a remote target that replaces the local model as the
thing attacked), ``space`` (where ε means what the threat model says) and ``members`` (the
model's known training rows, for membership inference).

A probe may split its work into **shards** (:class:`ShardedProbe`): ``shards(ctx)`` lists
them in the order a sequential run takes, and ``run_shard(ctx, shard)`` runs one. Each
shard is one Ray task; the local executor runs the very same shards one after another in
this process, so both produce the same findings by construction. A shard reads nothing a
sibling left in the context except what the shards it ``needs`` (earlier ones) left in
``ctx.robust_masks`` and ``ctx.shard_outputs`` (tensors by name, e.g. a LiRA shadow
model's confidences), and draws its randomness from ``ctx.generator(salt)`` or a seed of
its own. A probe without ``shards`` is one shard,
:data:`WHOLE`, that runs ``run(ctx)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from bastion.assess.schema import Finding, SanityWarning, Skipped, ThreatModel
from bastion.assess.space import AttackSpace
from bastion.data.dataset import DataBundle, Dataset
from bastion.errors import AssessmentError
from bastion.models.loaded import LoadedModel


@dataclass(frozen=True)
class Members:
    """The model's real training rows among the assessment data: ``train`` and ``test``
    are boolean masks over ``data.train`` / ``data.test`` (True = trained on), ``source``
    says how they are known (``bastion train`` provenance, ``--members FILE``, or the user
    declaring the train split to be the training set)."""

    train: torch.Tensor
    test: torch.Tensor
    source: str

    @classmethod
    def train_split(cls, data: DataBundle, source: str) -> Members:
        return cls(
            torch.ones(len(data.train), dtype=torch.bool),
            torch.zeros(len(data.test), dtype=torch.bool),
            source,
        )

    def split(self, data: DataBundle) -> tuple[Dataset, Dataset]:
        """(members, non-members) drawn from both splits."""
        from bastion.assess.membership_probe import concat

        mem, non = [], []
        for d, m in ((data.train, self.train), (data.test, self.test)):
            if m.any():
                mem.append(d.subset(m.nonzero().flatten()))
            if (~m).any():
                non.append(d.subset((~m).nonzero().flatten()))
        return concat(mem, "members"), concat(non, "nonmembers")


@dataclass
class TrainingRecipe:
    """How the target was trained, so probes that retrain (poisoning, LiRA shadows) can
    repeat the recipe on another training set."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0


@dataclass
class ProbeContext:
    """Everything a probe may read; probes must not mutate the model or the data."""

    model: LoadedModel
    data: DataBundle
    threat: ThreatModel
    out_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    recipe: TrainingRecipe = field(default_factory=TrainingRecipe)
    done: set[str] = field(default_factory=set)
    warnings: list[SanityWarning] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)  # parts of a probe that did not run
    members: Members | None = None
    query_target: Any = None  # a bastion.attacks.targets.QueryTarget replacing the local model
    robust_masks: dict[float, torch.Tensor] = field(default_factory=dict)
    shard_outputs: dict[str, torch.Tensor] = field(default_factory=dict)  # see Shard
    clean_retrain: Any = None  # the poisoning probe's clean baseline (an nn.Module)
    _space: list[AttackSpace] = field(default_factory=list, repr=False)

    def generator(self, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + salt)

    @property
    def space(self) -> AttackSpace:
        """The attack space of the test data's input spec and the threat's ε mode."""
        if not self._space:
            self._space.append(AttackSpace.build(self.data.test.input_spec, self.threat.eps_mode))
        return self._space[0]

    @property
    def num_classes(self) -> int:
        return self.model.capabilities.num_classes or self.data.test.num_classes

    def eval_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``budgets.n_eval`` test points, on the context's device."""
        n = min(self.threat.budgets.n_eval, len(self.data.test))
        return self.data.test.x[:n].to(self.device), self.data.test.y[:n].to(self.device)


class Probe(Protocol):
    name: str

    def applicable(self, ctx: ProbeContext) -> str | Skipped | None: ...

    def run(self, ctx: ProbeContext) -> Iterable[Finding]: ...


@dataclass(frozen=True)
class Shard:
    """One part of a probe's work that runs on its own (one Ray task): ``id`` is unique
    within the probe and stable for a given context (the checkpoint records shards by it);
    ``needs`` names earlier shards of the same probe whose robust masks (``ctx.robust_masks``)
    and outputs (``ctx.shard_outputs``) it reads."""

    id: str
    needs: tuple[str, ...] = ()


WHOLE = Shard("all")
"""The one shard of a probe that does not split its work."""


@runtime_checkable
class ShardedProbe(Probe, Protocol):
    """A probe whose work splits into shards; ``run(ctx)`` must equal running every shard
    of ``shards(ctx)`` in order on the same context."""

    def shards(self, ctx: ProbeContext) -> list[Shard]: ...

    def run_shard(self, ctx: ProbeContext, shard: Shard) -> Iterable[Finding]: ...


def probe_shards(probe: Probe, ctx: ProbeContext) -> list[Shard]:
    """The probe's shards in run order (``[WHOLE]`` if it does not shard), checked: ids are
    unique and every shard needs only earlier ones."""
    if not isinstance(probe, ShardedProbe):
        return [WHOLE]
    shards = probe.shards(ctx)
    seen: set[str] = set()
    for shard in shards:
        if shard.id in seen:
            raise AssessmentError(f"probe {probe.name} lists shard {shard.id!r} twice")
        late = [n for n in shard.needs if n not in seen]
        if late:
            raise AssessmentError(
                f"probe {probe.name}'s shard {shard.id!r} needs {', '.join(late)}, "
                "which is not an earlier shard"
            )
        seen.add(shard.id)
    return shards


def shard_findings(probe: Probe, ctx: ProbeContext, shard: Shard) -> Iterable[Finding]:
    """Run one shard of ``probe`` (``WHOLE``: the probe's ``run``)."""
    if isinstance(probe, ShardedProbe):
        return probe.run_shard(ctx, shard)
    if shard != WHOLE:
        raise AssessmentError(f"probe {probe.name} has no shard {shard.id!r}: it does not shard")
    return probe.run(ctx)


ProbeFactory = Callable[[], Probe]
