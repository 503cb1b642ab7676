"""The model-extraction probe: how well a copy can be stolen through queries alone.

The test split is shuffled (seeded) and halved: the attacker's *pool* (held-out
in-distribution data it is assumed to own) and the *evaluation* half on which fidelity is
measured. For each query source (``pool``, ``transformed`` — another distribution made
from the pool — and ``jacobian`` augmentation; see :mod:`bastion.attacks.extraction`) a
surrogate of the victim's own zoo architecture is trained on the victim's answers
(probabilities, or labels only under ``access: labels``) at every budget of
``budgets.extraction_queries`` on one growing query set. One finding per source holds the
curve (``series``: budget, fidelity, surrogate_accuracy) and the transfer attack: PGD (the
threat norm and ε, ``budgets.pgd_steps`` steps) crafted on the final surrogate and replayed
on the victim, over evaluation points the victim classifies correctly.

Severity (0–10): ``10 × (fidelity − 1/K) / (1 − 1/K)`` at the largest budget, K classes:
0 when the copy agrees with the victim no more than chance, 10 for a perfect copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from bastion.assess.blackbox_probe import make_target, predict, target_kind
from bastion.assess.probe import ProbeContext
from bastion.assess.schema import Finding
from bastion.assess.scoring import rate_severity
from bastion.attacks.extraction import extraction_curve, transfer_attack
from bastion.attacks.targets import QueryBudget
from bastion.models.zoo import build_model, zoo_spec
from bastion.progress import task

SOURCES = ("pool", "transformed", "jacobian")
ATTACK_NAMES = {"pool": "knockoff", "transformed": "knockoff", "jacobian": "jacobian-augmentation"}
# Surrogate training per budget (optimizer steps), kept small so a digits assessment is quick.
MIN_STEPS, MAX_STEPS = 100, 400
TRANSFER_POINTS = 200


def surrogate_builder(ctx: ProbeContext) -> tuple[Callable[[], nn.Module], str]:
    """Same zoo architecture as the victim when it has a spec, else the zoo model that fits
    the modality: a CNN for images, an MLP for tabular rows."""
    spec = ctx.model.spec
    if spec is None:
        test = ctx.data.test
        arch = "cnn" if test.modality == "image" else "mlp"
        spec = zoo_spec(arch, test.shape, ctx.num_classes)
    device = ctx.device
    return (lambda: build_model(spec).to(device)), spec.name


class ExtractionProbe:
    """Knockoff / Copycat extraction and Jacobian augmentation against the query budget."""

    name = "extraction"

    def applicable(self, ctx: ProbeContext) -> str | None:
        threat = ctx.threat
        if not threat.budgets.extraction_queries:
            return "budgets.extraction_queries is empty: give the query budgets to try"
        if min(threat.budgets.extraction_queries) < 1:
            return "budgets.extraction_queries must all be >= 1"
        return None

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        threat = ctx.threat
        budgets = sorted(set(threat.budgets.extraction_queries))
        kind = target_kind(threat, ctx)
        test = ctx.data.test
        perm = torch.randperm(len(test), generator=ctx.generator(61))
        half = len(test) // 2
        pool = test.x[perm[:half]].to(ctx.device)
        x_eval, y_eval = test.x[perm[half:]].to(ctx.device), test.y[perm[half:]].to(ctx.device)
        victim_eval = predict(ctx, x_eval)
        build, arch = surrogate_builder(ctx)
        for source in SOURCES:
            params = {"source": source, "answers": kind, "budgets": budgets, "surrogate": arch}
            finding = Finding(
                probe=self.name, attack=ATTACK_NAMES[source], params=params, severity=0
            )
            if finding.key in ctx.done:
                continue
            start = time.perf_counter()
            target = QueryBudget(make_target(ctx, kind), budgets[-1])
            with task(f"extraction: {source}", len(budgets)) as advance:
                curve = extraction_curve(
                    target,
                    build,
                    pool,
                    x_eval,
                    y_eval,
                    victim_eval,
                    source=source,
                    budgets=budgets,
                    progress=advance,
                    bounds=test.bounds,
                    seed=ctx.seed,
                    min_steps=MIN_STEPS,
                    max_steps=MAX_STEPS,
                )
            transfer = self._transfer(ctx, curve.surrogate, x_eval, y_eval, victim_eval)
            chance = 1.0 / ctx.num_classes
            fidelity = curve.fidelity[-1]
            metrics = {
                "fidelity": fidelity,
                "surrogate_accuracy": curve.accuracy[-1],
                "victim_accuracy": float((victim_eval == y_eval).float().mean()),
                "queries": float(curve.queries),
                "transfer_success_rate": transfer[-1] if transfer else 0.0,
            }
            for b, f in zip(budgets, curve.fidelity, strict=True):
                metrics[f"fidelity_at_{b}"] = f
            yield finding.model_copy(
                update={
                    "metrics": metrics,
                    "series": {
                        "budget": [float(b) for b in budgets],
                        "fidelity": curve.fidelity,
                        "surrogate_accuracy": curve.accuracy,
                        "transfer_eps": [float(e) for e in threat.eps],
                        "transfer_success_rate": transfer,
                    },
                    "severity": rate_severity(fidelity, chance),
                    "seconds": round(time.perf_counter() - start, 3),
                    "notes": [
                        f"pool: {half} held-out test samples; fidelity on the other {len(y_eval)}",
                        f"transfer: PGD on the {budgets[-1]}-query surrogate, replayed on the victim",
                    ],
                }
            )

    def _transfer(self, ctx, surrogate, x_eval, y_eval, victim_eval) -> list[float]:
        """Transfer success rate per threat ε (in the attack space): the share of
        victim-correct points that PGD on the surrogate fools on the victim."""
        threat = ctx.threat
        ok = (victim_eval == y_eval).nonzero().squeeze(1)[:TRANSFER_POINTS]
        if ok.numel() == 0 or surrogate is None:
            return [0.0 for _ in threat.eps]
        space = ctx.space
        zs, ys = space.to_z(x_eval[ok]), y_eval[ok]
        victim = make_target(ctx, "labels", in_space=True)
        out = []
        for i, eps in enumerate(threat.eps):
            fooled = transfer_attack(
                space.model(surrogate),
                victim,
                zs,
                ys,
                eps=eps,
                norm=threat.norm,
                steps=threat.budgets.pgd_steps,
                bounds=space.box,
                generator=ctx.generator(71 + i),
            )
            out.append(float(fooled.float().mean()))
        return out
