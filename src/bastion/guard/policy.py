"""The verdict policy: detector scores (and the client's extraction status) → a verdict.

See :mod:`bastion.guard.config` for the rules and docs/guard.md for the rationale."""

from __future__ import annotations

from dataclasses import dataclass

from bastion.guard.config import PolicyConfig
from bastion.guard.verdict import GuardVerdict, Verdict, worst


@dataclass(frozen=True)
class ClientSignal:
    """What the extraction monitor says about the client that sent a sample."""

    extraction_alert: bool = False
    volume_alert: bool = False
    scores: tuple[tuple[str, float], ...] = ()
    reasons: tuple[str, ...] = ()


def decide(
    scores: dict[str, float],
    thresholds: dict[str, float],
    policy: PolicyConfig,
    client: ClientSignal | None = None,
) -> GuardVerdict:
    """Apply the policy to one sample's scores."""
    fired, extreme, reasons = [], [], []
    for name, value in scores.items():
        threshold = thresholds.get(name)
        if threshold is None or not value > threshold:
            continue
        fired.append(name)
        if threshold > 0 and value > policy.extreme_factor * threshold:
            extreme.append(name)
            reasons.append(
                f"{name} {value:.4g} is extreme (> {policy.extreme_factor:g} × {threshold:.4g})"
            )
        else:
            reasons.append(f"{name} {value:.4g} > threshold {threshold:.4g}")
    verdict: Verdict = "allow"
    if len(fired) >= policy.flag_at:
        verdict = "flag"
    if len(fired) >= policy.hold_at or extreme:
        verdict = "hold"
    if policy.block_at is not None and len(extreme) >= policy.block_at:
        verdict = "block"
    all_scores = dict(scores)
    if client is not None:
        all_scores.update(client.scores)
        reasons.extend(client.reasons)
        if client.extraction_alert:
            verdict = worst(verdict, policy.extraction_action)
        if client.volume_alert:
            verdict = worst(verdict, policy.volume_action)
    return GuardVerdict(verdict=verdict, scores=all_scores, reasons=reasons)
