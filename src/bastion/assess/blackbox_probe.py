"""The black-box evasion probe: what an attacker with query access alone achieves.

Runs on the first ``budgets.n_blackbox`` points of the evaluation set, through a query
target of the threat model's access (``scores`` for white-box and scores access, ``labels``
for labels-only), each point with a budget of ``budgets.queries`` queries:

- Square attack (Andriushchenko et al. 2020) at every threat ε, when scores are visible;
- HopSkipJump (Chen et al. 2020), decision-based, always: one minimum-norm run whose
  distances give robust accuracy at every threat ε and a robustness curve for free.

Only points the model classifies correctly are attacked (a misclassified point is already
an error and costs no query). ``ctx.query_target``, when set, replaces the local model as
the thing attacked (for instance an :class:`~bastion.attacks.http_target.HttpTarget` in
front of a served model); clean accuracy is then measured through it as well. Attacks run
in the context's attack space (ε absolute or relative to each feature's range, frozen
features kept); integer features are made whole afterwards and success is re-checked with
one more query per point.

Severity (0–10), as for white-box evasion (see :mod:`bastion.assess.scoring`).

Sanity check (Carlini et al. 2019, §5): a black-box attack must not beat the white-box
ones. When the evasion probe stored its per-point results in ``ctx.robust_masks``
(ε → bool mask over ``ctx.eval_set()``, True = robust),
any point a black-box attack fooled at ε although the white-box attacks left it robust
raises a ``blackbox-beats-whitebox`` SanityWarning: the white-box evaluation missed
adversarial examples, typically because gradients are masked.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from bastion.assess.checks import chance_rate
from bastion.assess.probe import ProbeContext
from bastion.assess.schema import Finding, SanityWarning, ThreatModel
from bastion.assess.scoring import evasion_severity
from bastion.attacks.hopskipjump import hopskipjump
from bastion.attacks.square import square_attack
from bastion.attacks.targets import (
    CallableTarget,
    QueryBudget,
    QueryTarget,
    as_labels,
    model_target,
)
from bastion.errors import QueryBudgetExceeded
from bastion.progress import task

MIN_QUERIES = 10


def target_kind(threat: ThreatModel, ctx: ProbeContext | None = None) -> str:
    """What the attacker sees: labels for ``labels`` access or a labels-only model, scores
    otherwise."""
    if threat.access == "labels":
        return "labels"
    if ctx is not None and ctx.model.capabilities.output == "labels" and ctx.query_target is None:
        return "labels"
    remote = getattr(ctx.query_target, "kind", None) if ctx is not None else None
    return "labels" if remote == "labels" else "scores"


def make_target(ctx: ProbeContext, kind: str, *, in_space: bool = False) -> QueryTarget:
    """The thing attacked: ``ctx.query_target`` if set, else the local model (of any form).
    With ``in_space`` the target takes queries in the attack space (:attr:`ctx.space`)."""
    given = ctx.query_target
    transform = ctx.space.from_z if in_space and not ctx.space.identity else None
    if given is None:
        return model_target(ctx.model, kind=kind, device=ctx.device, transform=transform)
    if transform is None:
        return given
    return CallableTarget(
        lambda z: given(transform(z)), kind=given.kind, num_classes=given.num_classes
    )


def predict(ctx: ProbeContext, x: torch.Tensor) -> torch.Tensor:
    """Labels from the thing attacked (the remote target when one is set)."""
    if ctx.query_target is not None:
        return as_labels(ctx.query_target(x)).to(x.device)
    return ctx.model.predict(x).to(x.device)


class BlackBoxProbe:
    """Score-based Square and decision-based HopSkipJump under a per-point query budget."""

    name = "blackbox"

    def applicable(self, ctx: ProbeContext) -> str | None:
        threat = ctx.threat
        if threat.budgets.queries < MIN_QUERIES:
            return (
                f"budgets.queries={threat.budgets.queries} is below {MIN_QUERIES} queries per point"
            )
        return None

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        threat = ctx.threat
        x_all, y_all = ctx.eval_set()
        n = min(threat.budgets.n_blackbox, len(y_all))
        x, y = x_all[:n], y_all[:n]
        correct = predict(ctx, x).eq(y)
        z = ctx.space.to_z(x)
        kind = target_kind(threat, ctx)
        if kind == "scores":
            yield from self._square(ctx, z, y, correct)
        yield from self._hsj(ctx, z, y, correct, kind)

    def _base(self, ctx: ProbeContext, n: int) -> dict:
        t = ctx.threat
        return {
            "norm": t.norm,
            "n": n,
            "max_queries": t.budgets.queries,
            "access": target_kind(t, ctx),
            "eps_mode": ctx.space.mode,
        }

    def _recheck(self, ctx, target, z_adv, z, y, success) -> torch.Tensor:
        """Integer features made whole, then success asked of the target again."""
        if ctx.space.integer is None or not bool(success.any()):
            return success
        idx = success.nonzero().flatten()
        fixed = ctx.space.finalize(z_adv[idx], z[idx])
        out = success.clone()
        try:
            out[idx] = as_labels(target(fixed)).to(y.device) != y[idx]
        except QueryBudgetExceeded:
            out[idx] = False  # cannot confirm: not counted as fooled
        return out

    def _square(self, ctx, x, y, correct) -> Iterator[Finding]:
        threat, n = ctx.threat, len(y)
        budget = threat.budgets.queries
        idx = correct.nonzero().squeeze(1)
        for eps in threat.eps:
            finding = Finding(
                probe=self.name,
                attack="square",
                params={**self._base(ctx, n), "eps": eps},
                severity=0,
            )
            if finding.key in ctx.done:
                continue
            start = time.perf_counter()
            target = QueryBudget(make_target(ctx, "scores", in_space=True), (budget + 1) * len(idx))
            with task(f"blackbox: square ε={eps:g}", 1) as advance:
                res = square_attack(
                    target,
                    x[idx],
                    y[idx],
                    eps=eps,
                    norm=threat.norm,
                    max_queries=budget,
                    bounds=ctx.space.box,
                    generator=ctx.generator(31 + int(eps * 1e6)),
                )
                advance()
            ok = self._recheck(ctx, target, res.x_adv, x[idx], y[idx], res.success.to(x.device))
            fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
            fooled[idx] = ok
            self._sanity(ctx, "Square", eps, fooled)
            yield self._finding(
                finding,
                correct,
                fooled,
                target.queries,
                res.queries[res.success],
                start,
                chance_rate(y),
            )

    def _hsj(self, ctx, x, y, correct, kind) -> Iterator[Finding]:
        threat, n = ctx.threat, len(y)
        budget = threat.budgets.queries
        base = self._base(ctx, n)
        findings = {
            eps: Finding(
                probe=self.name, attack="hopskipjump", params={**base, "eps": eps}, severity=0
            )
            for eps in threat.eps
        }
        if all(f.key in ctx.done for f in findings.values()):
            return
        start = time.perf_counter()
        idx = correct.nonzero().squeeze(1)
        target = QueryBudget(make_target(ctx, kind, in_space=True), (budget + 1) * len(idx))
        with task("blackbox: hopskipjump", 1) as advance:
            res = hopskipjump(
                target,
                x[idx],
                y[idx],
                norm=threat.norm,
                max_queries=budget,
                bounds=ctx.space.box,
                generator=ctx.generator(47),
            )
            advance()
        ok = self._recheck(ctx, target, res.x_adv, x[idx], y[idx], res.success.to(x.device))
        adv_final = res.x_adv.to(x.device)
        if ctx.space.integer is not None:
            adv_final = ctx.space.finalize(adv_final, x[idx])
        diff = (adv_final - x[idx]).flatten(1)
        d = diff.abs().amax(1) if threat.norm == "inf" else diff.norm(dim=1)
        dist = torch.full((n,), float("inf"), device=x.device)
        dist[idx] = torch.where(ok, d, torch.full_like(d, float("inf")))
        found = dist[idx][torch.isfinite(dist[idx])]
        median = float(found.median()) if found.numel() else float("inf")
        grid = sorted(
            threat.curve_eps or [round(2 * max(threat.eps) * k / 10, 6) for k in range(1, 11)]
        )
        curve = [float((correct & (dist > e)).float().mean()) for e in grid]
        for eps, finding in findings.items():
            fooled = correct & (dist <= eps)
            self._sanity(ctx, "HopSkipJump", eps, fooled)
            if finding.key in ctx.done:
                continue
            out = self._finding(
                finding, correct, fooled, target.queries, res.queries, start, chance_rate(y)
            )
            out.metrics[f"median_l{threat.norm}"] = median
            out.series.update({"eps": grid, "robust_accuracy": curve})
            yield out

    @staticmethod
    def _finding(
        finding: Finding,
        correct: torch.Tensor,
        fooled: torch.Tensor,
        total_queries: int,
        per_point: torch.Tensor,
        start: float,
        chance: float = 0.0,
    ) -> Finding:
        clean = float(correct.float().mean())
        robust = float((correct & ~fooled).float().mean())
        spent = per_point.float()
        return finding.model_copy(
            update={
                "metrics": {
                    "clean_accuracy": clean,
                    "robust_accuracy": robust,
                    "attack_success_rate": 1 - robust / clean if clean else 1.0,
                    "queries": float(total_queries),
                    "median_queries": float(spent.median()) if spent.numel() else 0.0,
                },
                "severity": evasion_severity(clean, robust, chance),
                "seconds": round(time.perf_counter() - start, 3),
            }
        )

    def _sanity(self, ctx: ProbeContext, attack: str, eps: float, fooled: torch.Tensor) -> None:
        masks = ctx.robust_masks
        mask = next((m for e, m in masks.items() if abs(float(e) - eps) < 1e-9), None)
        if mask is None or len(mask) < len(fooled):
            return
        missed = fooled.cpu() & mask[: len(fooled)].cpu().bool()
        k = int(missed.sum())
        if k:
            ctx.warnings.append(
                SanityWarning(
                    check="blackbox-beats-whitebox",
                    probe=self.name,
                    message=(
                        f"{attack} (black-box) fooled {k} of {len(fooled)} points at ε={eps:g} that the "
                        "white-box attacks left robust: the white-box evaluation is not worst case "
                        "(masked gradients?); trust the lower of the two robust accuracies"
                    ),
                )
            )
