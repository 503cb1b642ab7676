"""The probe contract: a probe turns an attack into evidence (Findings).

A probe is any object with a ``name``, ``applicable(threat) -> str | None`` (a reason to
skip, or None) and ``run(ctx) -> list[Finding]``. Long probes yield findings one by one so
the runner can checkpoint after each; ``done`` holds finding keys already finished (resume).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from bastion.assess.schema import Finding, SanityWarning, ThreatModel
from bastion.data.dataset import DataBundle
from bastion.models.io import LoadedModel


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
    cache: dict[str, Any] = field(default_factory=dict)

    def generator(self, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + salt)

    def eval_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``budgets.n_eval`` test points, on the context's device."""
        n = min(self.threat.budgets.n_eval, len(self.data.test))
        return self.data.test.x[:n].to(self.device), self.data.test.y[:n].to(self.device)


class Probe(Protocol):
    name: str

    def applicable(self, threat: ThreatModel) -> str | None: ...

    def run(self, ctx: ProbeContext) -> Iterable[Finding]: ...


ProbeFactory = Callable[[], Probe]
