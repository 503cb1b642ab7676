"""The white-box evasion probe: robust accuracy per (attack, ε), a robustness curve and the
gradient-masking sanity checks of Carlini et al. 2019 ("On Evaluating Adversarial
Robustness", §5).

Severity (0–10) of an evasion finding is ``10 × (1 − robust_accuracy / clean_accuracy)``:
the share of correctly classified points the attack fools. The curve finding (attack
``threat.curve_attack``, APGD-CE by default) takes the mean robust accuracy over its ε grid.

The curve shares work across ε: a point fooled at ε stays fooled at every larger ε (the
larger ball contains the smaller one), so each ε only attacks the survivors of the previous
one, and points misclassified when clean are never attacked.

The strongest attack's finding at the largest ε also keeps a few of the adversarial examples
it made (:mod:`bastion.assess.examples`, ``artifacts["examples"]``) for the report's gallery.

The work splits into shards (:class:`~bastion.assess.probe.ShardedProbe`), each one Ray
task: one per (attack, ε) job (``pgd@0.1``), the curve (``curve``), and the sanity checks
(``sanity-checks``), which need the strongest attack's mask at the largest ε and so run
after that job's shard. Every shard draws from ``ctx.generator`` with its own salt (the
job's ε, the curve step, the check), so a shard gives the same result wherever it runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from bastion.assess.checks import chance_rate
from bastion.assess.examples import ARTIFACT as EXAMPLES
from bastion.assess.examples import keep_examples, save_examples
from bastion.assess.probe import ProbeContext, Shard
from bastion.assess.schema import Finding, SanityWarning, ThreatModel
from bastion.assess.scoring import evasion_severity
from bastion.attacks.evasion import ATTACKS, project, random_start, robust_mask, span
from bastion.errors import AssessmentError
from bastion.models.predict import predict_labels
from bastion.progress import track

# Tolerances for the sanity checks, in accuracy points (fractions).
SINGLE_STEP_TOLERANCE = 0.01
CHANCE_MARGIN = 0.10
CONVERGENCE_TOLERANCE = 0.02
SANITY_POINTS = 200


def _attack_kwargs(threat: ThreatModel, attack: str) -> dict:
    budgets = threat.budgets
    steps = {"fgsm": 1, "pgd": budgets.pgd_steps}.get(attack, budgets.apgd_steps)
    return {"steps": steps, "restarts": budgets.restarts}


def fit_attacks(attacks: list[str], num_classes: int) -> tuple[list[str], list[str]]:
    """The threat model's attacks as they apply to a model with ``num_classes`` outputs,
    and notes on what changed. APGD-T attacks the 2nd … ``min(9, K − 1) + 1``-th classes,
    and its targeted DLR loss needs 4 classes: below that it does not apply, and the
    ensemble (APGD-CE → APGD-T) runs as APGD-CE, then APGD with the untargeted DLR loss
    where that is defined (3 classes)."""
    if num_classes >= 4:
        return list(attacks), []
    out, notes = [], []
    for a in attacks:
        if a == "apgd-t":
            notes.append(
                f"apgd-t not run: its targeted DLR loss needs >= 4 classes, the model has {num_classes}"
            )
        elif a == "ensemble":
            sub = "apgd-ce+dlr" if num_classes == 3 else "apgd-ce"
            notes.append(
                f"ensemble run as {sub}: APGD-T needs >= 4 classes, the model has {num_classes}"
            )
            out.append(sub)
        else:
            out.append(a)
    return list(dict.fromkeys(out)), notes


CURVE = "curve"
SANITY = "sanity-checks"


def job_shard(attack: str, eps: float) -> Shard:
    """The shard of one (attack, ε) job."""
    return Shard(f"{attack}@{eps!r}")


@dataclass(frozen=True)
class _Setup:
    """What every shard computes first: the model in the attack space, the evaluation set
    (raw and in attack space), which points are clean-correct, the attacks that apply."""

    model: torch.nn.Module
    x_raw: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    clean: torch.Tensor
    attacks: list[str]
    notes: list[str]


def default_curve(threat: ThreatModel) -> list[float]:
    """Ten ε values evenly spaced up to twice the largest threat ε."""
    top = 2 * max(threat.eps) if max(threat.eps) > 0 else 0.1
    return [round(top * k / 10, 6) for k in range(1, 11)]


class EvasionProbe:
    """White-box evasion: needs gradients, so only for ``access: white_box``."""

    name = "evasion"

    def applicable(self, ctx: ProbeContext) -> str | None:
        threat = ctx.threat
        if threat.access != "white_box":
            return f"needs white-box access (threat model gives {threat.access}); see the blackbox probe"
        if not ctx.model.differentiable:
            return (
                f"needs gradients, and the {ctx.model.form} model {ctx.model.name} offers none: "
                "the blackbox probe (Square, HopSkipJump) and the extraction probe's transfer "
                "attack assess it instead"
            )
        unknown = [a for a in [*threat.attacks, threat.curve_attack] if a not in ATTACKS]
        if unknown:
            return f"unknown attack(s) {unknown}: choose from {sorted(ATTACKS)}"
        return None

    def _mask(self, ctx: ProbeContext, model, x, y, attack: str, eps: float, **kw) -> torch.Tensor:
        """Per-point robustness in the attack space, integer features made whole again."""
        space = ctx.space
        opts = dict(eps=eps, norm=ctx.threat.norm, bounds=space.box, post=space.finalize, **kw)
        if attack == "apgd-t" or attack == "ensemble":
            opts["n_target_classes"] = min(9, ctx.num_classes - 1)
        if attack == "apgd-ce+dlr":
            alive = robust_mask(model, x, y, attack="apgd-ce", **opts)
            idx = alive.nonzero().flatten()
            if idx.numel():
                alive[idx] = robust_mask(
                    model, x[idx], y[idx], attack="apgd-ce", loss="dlr", **opts
                )
            return alive
        return robust_mask(model, x, y, attack=attack, **opts)

    def shards(self, ctx: ProbeContext) -> list[Shard]:
        """One shard per (attack, ε) job, then the robustness curve, then the sanity checks,
        which read the strongest attack's mask at the largest ε."""
        attacks, _ = fit_attacks(ctx.threat.attacks, ctx.num_classes)
        jobs = [
            job_shard(a, e)
            for a, e in dict.fromkeys((a, e) for a in attacks for e in ctx.threat.eps)
        ]
        needs = (job_shard(attacks[-1], max(ctx.threat.eps)).id,)
        return [*jobs, Shard(CURVE), Shard(SANITY, needs=needs)]

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        """Every shard in order on ``ctx``: the job shards leave the strongest attack's
        masks in ``ctx.robust_masks`` for the sanity checks (and the black-box probe)."""
        ctx.robust_masks = {}
        setup = self._setup(ctx)
        for shard in self.shards(ctx):
            yield from self._run_shard(ctx, setup, shard)

    def run_shard(self, ctx: ProbeContext, shard: Shard) -> Iterator[Finding]:
        return self._run_shard(ctx, self._setup(ctx), shard)

    def _setup(self, ctx: ProbeContext) -> _Setup:
        x_raw, y = ctx.eval_set()
        clean = ctx.model.predict(x_raw).to(y.device).eq(y)
        attacks, notes = fit_attacks(ctx.threat.attacks, ctx.num_classes)
        return _Setup(
            model=ctx.space.model(ctx.model.require_module("white-box evasion").to(ctx.device)),
            x_raw=x_raw,
            x=ctx.space.to_z(x_raw),
            y=y,
            clean=clean,
            attacks=attacks,
            notes=notes,
        )

    def _run_shard(self, ctx: ProbeContext, s: _Setup, shard: Shard) -> Iterator[Finding]:
        if shard.id == CURVE:
            curve_attack = fit_attacks([ctx.threat.curve_attack], ctx.num_classes)[0][0]
            return self._curve(ctx, s.model, s.x, s.y, s.clean, curve_attack)
        if shard.id == SANITY:
            return self._sanity(ctx, s.model, s.x, s.y, s.clean, ctx.robust_masks, s.attacks[-1])
        job = next(
            ((a, e) for a in s.attacks for e in ctx.threat.eps if job_shard(a, e).id == shard.id),
            None,
        )
        if job is None:
            raise AssessmentError(
                f"the evasion probe has no shard {shard.id!r} for this threat model"
            )
        return self._job(ctx, s, *job)

    def _job(self, ctx: ProbeContext, s: _Setup, attack: str, eps: float) -> Iterator[Finding]:
        """Robust accuracy of one attack at one ε; the strongest attack's mask goes to
        ``ctx.robust_masks[eps]``, even when its finding is already done (resume)."""
        threat = ctx.threat
        strongest = s.attacks[-1]
        y, clean = s.y, s.clean
        clean_acc = float(clean.float().mean())
        base = {"norm": threat.norm, "n": len(y), "eps_mode": ctx.space.mode}
        kw = _attack_kwargs(threat, attack)
        finding = Finding(
            probe=self.name, attack=attack, params={**base, "eps": eps, **kw}, severity=0
        )
        if finding.key in ctx.done and attack != strongest:
            return
        start = time.perf_counter()
        kw_attack = kw if attack != "apgd-ce+dlr" else _attack_kwargs(threat, "apgd-ce")
        mask = self._mask(
            ctx, s.model, s.x, y, attack, eps, generator=ctx.generator(int(eps * 1e6)), **kw_attack
        )
        seconds = time.perf_counter() - start
        if attack == strongest:
            ctx.robust_masks[eps] = mask.cpu()
        if finding.key in ctx.done:
            return
        robust_acc = float(mask.float().mean())
        kept = {}
        if attack == strongest and eps == max(threat.eps):
            kept = self._examples(
                ctx, s.model, s.x_raw, y, clean & ~mask.to(clean.device), attack, eps, kw_attack
            )
        yield finding.model_copy(
            update={
                "artifacts": kept,
                "metrics": {
                    "clean_accuracy": clean_acc,
                    "robust_accuracy": robust_acc,
                    "attack_success_rate": 1 - robust_acc / clean_acc if clean_acc else 1.0,
                },
                "severity": evasion_severity(clean_acc, robust_acc, chance_rate(y)),
                "seconds": round(seconds, 3),
                "notes": [ctx.space.describe(eps), *s.notes],
            }
        )

    def _examples(self, ctx, model, x_raw, y, fooled, attack, eps, kw) -> dict[str, str]:
        """A few adversarial examples for the report's gallery (see assess.examples)."""
        found = keep_examples(ctx, model, x_raw, y, fooled, attack, eps, kw)
        return {EXAMPLES: save_examples(found, ctx.out_dir)} if found else {}

    def _curve(self, ctx, model, x, y, clean, attack) -> Iterator[Finding]:
        threat = ctx.threat
        grid = sorted(threat.curve_eps or default_curve(threat))
        kw = _attack_kwargs(threat, attack)
        finding = Finding(
            probe=self.name,
            attack=f"{attack}-curve",
            params={"norm": threat.norm, "n": len(y), "points": len(grid), **kw},
            severity=0,
        )
        if finding.key in ctx.done:
            return
        start = time.perf_counter()
        alive = clean.clone()
        accs = []
        for i, eps in enumerate(track(grid, f"robustness curve ({attack})")):
            idx = alive.nonzero().flatten()
            if idx.numel():
                survived = self._mask(
                    ctx,
                    model,
                    x[idx],
                    y[idx],
                    attack,
                    eps,
                    generator=ctx.generator(1000 + i),
                    **kw,
                )
                alive[idx] = survived.to(alive.device)
            accs.append(float(alive.float().mean()))
        clean_acc = float(clean.float().mean())
        mean_acc = sum(accs) / len(accs)
        below = [e for e, a in zip(grid, accs, strict=True) if a < 0.5 * clean_acc]
        yield finding.model_copy(
            update={
                "metrics": {
                    "clean_accuracy": clean_acc,
                    "mean_robust_accuracy": mean_acc,
                    "eps_half_accuracy": below[0] if below else float("inf"),
                },
                "series": {"eps": grid, "robust_accuracy": accs},
                "severity": evasion_severity(clean_acc, mean_acc, chance_rate(y)),
                "seconds": round(time.perf_counter() - start, 3),
            }
        )

    def _sanity(self, ctx, model, x, y, clean, masks, strongest) -> Iterator[Finding]:
        """Gradient-masking checks; each failure becomes a SanityWarning."""
        threat = ctx.threat
        eps = max(threat.eps)
        finding = Finding(
            probe=self.name,
            attack="sanity-checks",
            params={"norm": threat.norm, "eps": eps},
            severity=0,
        )
        start = time.perf_counter()
        n = min(SANITY_POINTS, len(y))
        xs, ys, cs = x[:n], y[:n], clean[:n]
        bounds = ctx.space.box
        warn = ctx.warnings.append
        metrics: dict[str, float] = {}
        strong = masks.get(eps)
        strong_acc = float(strong[:n].float().mean()) if strong is not None else None
        if strong_acc is not None:
            metrics["attack_accuracy"] = strong_acc
        # 1. iterative beats single-step
        if "fgsm" in threat.attacks and strongest != "fgsm" and strong_acc is not None:
            fgsm_acc = (
                float(self._mask(ctx, model, xs, ys, "fgsm", eps).float().mean())
                if threat.norm == "inf"
                else None
            )
            if fgsm_acc is not None:
                metrics["single_step_accuracy"] = fgsm_acc
                if strong_acc > fgsm_acc + SINGLE_STEP_TOLERANCE:
                    warn(
                        SanityWarning(
                            check="iterative-beats-single-step",
                            message=(
                                f"{strongest} leaves {strong_acc:.1%} accuracy at ε={eps} but one-step FGSM only "
                                f"{fgsm_acc:.1%}: iterative attacks should be stronger (gradient masking?)"
                            ),
                        )
                    )
        # 2. accuracy falls to chance at a large ε
        width = span(bounds)
        big = width * (0.5 if threat.norm == "inf" else 0.5 * float(xs[0].numel()) ** 0.5)
        big_mask = self._mask(ctx, model, xs, ys, "pgd", big, steps=50, generator=ctx.generator(7))
        big_acc = float(big_mask.float().mean())
        chance = max(1.0 / ctx.num_classes, chance_rate(ys))
        metrics["large_eps_accuracy"] = big_acc
        if big_acc > chance + CHANCE_MARGIN:
            warn(
                SanityWarning(
                    check="large-eps-reaches-chance",
                    message=(
                        f"PGD at a very large ε={big:.3g} still leaves {big_acc:.1%} accuracy (chance {chance:.1%}): "
                        "the attack is not working properly or gradients are masked"
                    ),
                )
            )
        # 3. convergence: a run twice as long, on the survivors only, fools few more points
        if strong is not None:
            survivors = strong[:n].to(xs.device).nonzero().flatten()
            kw = _attack_kwargs(threat, strongest)
            attack = "apgd-ce" if strongest in {"ensemble", "apgd-t", "apgd-ce+dlr"} else strongest
            kw = {
                "steps": max(kw["steps"], threat.budgets.pgd_steps) * 2,
                "restarts": kw["restarts"],
            }
            still = survivors.numel()
            if still:
                still_mask = self._mask(
                    ctx,
                    model,
                    xs[survivors],
                    ys[survivors],
                    attack,
                    eps,
                    generator=ctx.generator(11),
                    **kw,
                )
                still = int(still_mask.sum())
            more = still / n
            metrics["more_steps_accuracy"] = more
            if strong_acc - more > CONVERGENCE_TOLERANCE:
                warn(
                    SanityWarning(
                        check="convergence",
                        message=(
                            f"a {attack} run with twice the steps lowers robust accuracy from "
                            f"{strong_acc:.1%} to {more:.1%} at ε={eps}: the evaluation has not converged; "
                            "raise the budgets"
                        ),
                    )
                )
        # 4. random noise of the same norm is weaker than the attack
        with torch.no_grad():
            delta = random_start(xs, eps, threat.norm, ctx.generator(13))
            if threat.norm == "inf":
                delta = delta.sign() * eps
            else:
                norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
                delta = project(delta / norms.view(-1, *([1] * (delta.ndim - 1))) * eps, eps, "2")
            noisy = ctx.space.finalize(bounds.clip(xs + delta, xs), xs)
            noise_acc = float((predict_labels(model, noisy).eq(ys) & cs).float().mean())
        metrics["noise_accuracy"] = noise_acc
        if strong_acc is not None and noise_acc < strong_acc - SINGLE_STEP_TOLERANCE:
            warn(
                SanityWarning(
                    check="noise-weaker-than-attack",
                    message=(
                        f"random noise of norm ε={eps} leaves {noise_acc:.1%} accuracy, below the attack's "
                        f"{strong_acc:.1%}: the attack is weaker than noise"
                    ),
                )
            )
        metrics["warnings"] = float(len(ctx.warnings))
        if finding.key not in ctx.done:
            yield finding.model_copy(
                update={"metrics": metrics, "seconds": round(time.perf_counter() - start, 3)}
            )
