"""The black-box evasion probe: what an attacker with query access alone achieves.

Runs on the first ``budgets.n_blackbox`` points of the evaluation set, through a query
target of the threat model's access (``scores`` for white-box and scores access, ``labels``
for labels-only), each point with a budget of ``budgets.queries`` queries:

- Square attack (Andriushchenko et al. 2020) at every threat ε, when scores are visible;
- HopSkipJump (Chen et al. 2020), decision-based, always: one minimum-norm run whose
  distances give robust accuracy at every threat ε and a robustness curve for free.

Only points the model classifies correctly are attacked (a misclassified point is already
an error and costs no query). ``ctx.cache["query_target"]``, when set, replaces the local
model as the thing attacked (for instance an :class:`~bastion.attacks.http_target.HttpTarget`
in front of a served model); clean accuracy is still measured on the local model.

Severity (0–10), as for white-box evasion: ``10 × (1 − robust_accuracy / clean_accuracy)``,
the share of correctly classified points the attack fools within ε and the query budget.
So 0 means no query-only attack broke anything, 10 that every correct point was broken.

Sanity check (Carlini et al. 2019, §5): a black-box attack must not beat the white-box
ones. When the evasion probe stored its per-point results in
``ctx.cache["evasion_robust_mask"]`` (ε → bool mask over ``ctx.eval_set()``, True = robust),
any point a black-box attack fooled at ε although the white-box attacks left it robust
raises a ``blackbox-beats-whitebox`` SanityWarning: the white-box evaluation missed
adversarial examples, typically because gradients are masked.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from bastion.assess.probe import ProbeContext
from bastion.assess.schema import Finding, SanityWarning, ThreatModel
from bastion.assess.scoring import evasion_severity
from bastion.attacks.evasion import eval_mode
from bastion.attacks.hopskipjump import hopskipjump
from bastion.attacks.square import square_attack
from bastion.attacks.targets import ModuleTarget, QueryBudget, QueryTarget
from bastion.progress import task

ROBUST_MASK_KEY = "evasion_robust_mask"
QUERY_TARGET_KEY = "query_target"
MIN_QUERIES = 10


def target_kind(threat: ThreatModel) -> str:
    """What the attacker sees: labels for ``labels`` access, scores otherwise."""
    return "labels" if threat.access == "labels" else "scores"


def make_target(ctx: ProbeContext, kind: str) -> QueryTarget:
    """The thing attacked: ``ctx.cache["query_target"]`` if set, else the local model."""
    given = ctx.cache.get(QUERY_TARGET_KEY)
    if given is not None:
        return given
    return ModuleTarget(ctx.model.module, kind=kind, device=ctx.device)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    with eval_mode(model):
        return torch.cat(
            [model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
        )


class BlackBoxProbe:
    """Score-based Square and decision-based HopSkipJump under a per-point query budget."""

    name = "blackbox"

    def applicable(self, threat: ThreatModel) -> str | None:
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
        module = ctx.model.module.to(ctx.device)
        correct = predict(module, x).eq(y)
        kind = target_kind(threat)
        if kind == "scores":
            yield from self._square(ctx, x, y, correct)
        yield from self._hsj(ctx, x, y, correct, kind)

    def _base(self, ctx: ProbeContext, n: int) -> dict:
        t = ctx.threat
        return {"norm": t.norm, "n": n, "max_queries": t.budgets.queries, "access": target_kind(t)}

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
            target = QueryBudget(make_target(ctx, "scores"), budget * len(idx))
            with task(f"blackbox: square ε={eps:g}", 1) as advance:
                res = square_attack(
                    target, x[idx], y[idx], eps=eps, norm=threat.norm, max_queries=budget,
                    bounds=ctx.data.test.bounds, generator=ctx.generator(31 + int(eps * 1e6)),
                )  # fmt: skip
                advance()
            fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
            fooled[idx] = res.success.to(x.device)
            self._sanity(ctx, "Square", eps, fooled)
            yield self._finding(
                finding, correct, fooled, target.queries, res.queries[res.success], start
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
        target = QueryBudget(make_target(ctx, kind), budget * len(idx))
        with task("blackbox: hopskipjump", 1) as advance:
            res = hopskipjump(
                target, x[idx], y[idx], norm=threat.norm, max_queries=budget,
                bounds=ctx.data.test.bounds, generator=ctx.generator(47),
            )  # fmt: skip
            advance()
        dist = torch.full((n,), float("inf"), device=x.device)
        dist[idx] = torch.where(
            res.success.to(x.device), res.distance(x[idx], threat.norm).to(x.device), float("inf")
        )
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
            out = self._finding(finding, correct, fooled, target.queries, res.queries, start)
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
                "severity": evasion_severity(clean, robust),
                "seconds": round(time.perf_counter() - start, 3),
            }
        )

    def _sanity(self, ctx: ProbeContext, attack: str, eps: float, fooled: torch.Tensor) -> None:
        masks = ctx.cache.get(ROBUST_MASK_KEY) or {}
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
