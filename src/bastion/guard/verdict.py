"""Typed results of the guard: one verdict per inspected sample, and the drift status."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Verdict = Literal["allow", "flag", "hold", "block"]
VERDICT_ORDER: dict[str, int] = {"allow": 0, "flag": 1, "hold": 2, "block": 3}


def worst(*verdicts: Verdict) -> Verdict:
    """The most severe of the given verdicts (``allow`` when none)."""
    return max(verdicts, key=VERDICT_ORDER.__getitem__, default="allow")


class GuardVerdict(BaseModel):
    """What the guard decided about one sample.

    ``scores`` maps a detector name to its raw score (higher = more anomalous), plus
    ``extraction.*`` entries for the client's extraction monitor; ``reasons`` says in words
    why the verdict is not ``allow`` (empty when it is)."""

    model_config = ConfigDict(frozen=True)

    verdict: Verdict
    scores: dict[str, float] = Field(default_factory=dict)
    reasons: list[str] = Field(default_factory=list)


class DriftStatus(BaseModel):
    """Sliding-window drift test against the reference data (see ``bastion.guard.drift``).

    ``p_value`` is the Bonferroni-corrected p-value of the per-component KS tests (1.0 while
    the window holds fewer than ``min_samples``); ``alert`` is ``p_value < alpha``."""

    model_config = ConfigDict(frozen=True)

    p_value: float
    alert: bool
    window_size: int
    window_capacity: int
    alpha: float
    statistic: float = 0.0
    method: str = "ks-pca-bonferroni"
