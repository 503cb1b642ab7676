"""The membership-inference probe: can an attacker tell training members from non-members?

Protocol (Carlini et al. 2022, "Membership Inference Attacks From First Principles", §V):

- Candidates: a balanced set of ``n`` target-training rows (``ctx.data.train``, members)
  and ``n`` test rows (``ctx.data.test``, non-members), ``n = min(|train|, |test|,
  max_candidates)``, drawn with the context's seed.
- Population: the candidates plus further training and test rows up to ``max_population``
  (all of train ∪ test on digits). LiRA's shadow models each train on a random half of it
  with the target's recipe (``ctx.recipe``), so each candidate is IN half of the shadows.
- Attacks: the loss threshold (Yeom et al. 2018) as the baseline; LiRA online and offline
  with ``threat.budgets.shadow_models`` shadows, with the fixed-variance option when there
  are fewer than 64 shadows (the paper's advice); offline RMIA (Zarifzadeh et al. 2024,
  :mod:`bastion.attacks.rmia`) with ``threat.budgets.reference_models`` reference models
  (2 by default) trained with the same recipe on balanced random halves of the same
  population: each candidate's Pr(x) comes from the reference models that did not train
  on it, with the linear correction a estimated from the reference models, and the whole
  population serves as the samples z. With ``access: labels`` only the label-only gap
  attack (member iff correctly classified) runs. Models that cannot be rebuilt untrained
  get no shadow or reference models: LiRA and RMIA are then skipped (``ctx.skipped``).

The work splits into shards (:class:`~bastion.assess.probe.ShardedProbe`), each one Ray
task: the loss threshold, one per LiRA shadow model (``lira-shadow-K``: it trains shadow K
and leaves its confidences on the population), LiRA's scoring (``lira``, after every
shadow) and RMIA. LiRA seeds each shadow on its own (``seed × 7919 + K``) and draws which
rows it trains on from the seed for all shadows at once, so a shadow trained in any process
is the one :meth:`LiRA.fit <bastion.attacks.lira.LiRA.fit>` trains.

Every finding reports ``auc``, ``tpr_at_0.1%_fpr``, ``tpr_at_1%_fpr`` (``tpr_at_fpr`` is
the one at 0.1 %), ``balanced_accuracy`` and the ROC curve as ``series`` ``fpr``/``tpr``.

Severity (0–10): the larger of

- ``10 × (AUC − 0.5) / 0.5``: average-case leakage, 0 at chance, 10 at perfect separation;
- ``10 × log(TPR / FPR) / log(1 / FPR)`` at a low FPR (0.1 % when there are at least 1 000
  non-members, else 1 %): 0 when the attack finds members no more often than it raises
  false alarms, 10 when it finds all of them at that FPR. Confidently identifying even a
  few members is a privacy breach, hence the log scale (TPR 5 % at 0.1 % FPR gives 5.7).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator

import torch

from bastion.assess.probe import ProbeContext, Shard
from bastion.assess.schema import Finding, Skipped
from bastion.assess.scoring import clamp_severity
from bastion.attacks.inference import (
    MembershipMetrics,
    correctness_scores,
    loss_threshold_scores,
    membership_metrics,
)
from bastion.attacks.lira import LiRA
from bastion.attacks.rmia import RMIA
from bastion.data.dataset import Dataset
from bastion.errors import AssessmentError
from bastion.models.train import accuracy

log = logging.getLogger(__name__)
FIXED_VARIANCE_BELOW = 64
LOSS, LIRA, RMIA_SHARD, GAP = "loss-threshold", "lira", "rmia", "gap"


def shadow_shard(k: int) -> str:
    """The shard (and its output's name) that trains LiRA shadow model ``k``."""
    return f"lira-shadow-{k}"


def membership_severity(m: MembershipMetrics) -> float:
    """Severity from AUC and TPR at low FPR (see the module docstring)."""
    auc_part = 10.0 * (m.auc - 0.5) / 0.5
    fpr = 0.001 if m.n_nonmembers >= 1000 else 0.01
    tpr = float(m.tpr_at_fpr.get(fpr, 0.0))
    low_part = 10.0 * math.log(tpr / fpr) / math.log(1.0 / fpr) if tpr > fpr else 0.0
    return clamp_severity(max(auc_part, low_part))


def _metrics(m: MembershipMetrics) -> dict[str, float]:
    out = m.as_metrics()
    out["tpr_at_fpr"] = m.tpr_at_fpr.get(0.001, float("nan"))
    out["members"] = float(m.n_members)
    out["nonmembers"] = float(m.n_nonmembers)
    return out


def concat(parts: list[Dataset], split: str) -> Dataset:
    """One dataset of the rows of ``parts`` (same spec and classes), in order."""
    first = parts[0]
    return Dataset(
        name=first.name,
        x=torch.cat([p.x for p in parts]),
        y=torch.cat([p.y for p in parts]),
        class_names=first.class_names,
        source=first.source,
        split=split,
        spec=first.spec,
    )


class MembershipProbe:
    """Loss threshold, LiRA (online, offline) and offline RMIA; label-only gap attack for
    ``labels``."""

    name = "membership"

    def __init__(self, *, max_candidates: int = 1000, max_population: int = 4000) -> None:
        self.max_candidates = max_candidates
        self.max_population = max_population

    def applicable(self, ctx: ProbeContext) -> str | Skipped | None:
        if ctx.members is None:
            return Skipped(
                probe=self.name,
                status="not_measured",
                reason="the model's training rows are unknown: pass --members FILE (row "
                "indices of the rows it was trained on) or --members train-split when the "
                "data's train split is its training set; without them membership inference "
                "measures nothing",
            )
        if ctx.model.module is None:
            return (
                f"the loss-threshold and LiRA attacks need a torch model's scores; the "
                f"{ctx.model.form} model has none here"
            )
        if ctx.members.train.sum() + ctx.members.test.sum() < 2:
            return Skipped(probe=self.name, status="not_measured", reason="fewer than 2 members")
        return None  # every access level has an attack (label-only: the gap attack)

    def sets(self, ctx: ProbeContext) -> tuple[Dataset, torch.Tensor, Dataset]:
        """(candidates, is_member, population) drawn with the context's seed, members and
        non-members from ``ctx.members``."""
        if ctx.members is None:
            raise AssessmentError("membership inference needs the model's members")
        train, test = ctx.members.split(ctx.data)
        gen = ctx.generator(41)
        n = min(len(train), len(test), self.max_candidates)
        p_train = torch.randperm(len(train), generator=gen)
        p_test = torch.randperm(len(test), generator=gen)
        members, nonmembers = train.subset(p_train[:n]), test.subset(p_test[:n])
        candidates = concat([members, nonmembers], "candidates")
        is_member = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
        rest = [d.subset(p[n:]) for d, p in ((train, p_train), (test, p_test)) if len(d) > n]
        parts = [candidates]
        extra = max(0, self.max_population - 2 * n)
        if rest and extra > 0:
            pool = concat(rest, "rest")
            parts.append(pool.subset(torch.randperm(len(pool), generator=gen)[:extra]))
        return candidates, is_member, concat(parts, "population")

    def shards(self, ctx: ProbeContext) -> list[Shard]:
        """The gap attack alone for ``labels``; else the loss threshold, one shard per LiRA
        shadow model (when LiRA can train them), LiRA's scoring after them, RMIA."""
        if ctx.threat.access == "labels":
            return [Shard(GAP)]
        n_shadow = ctx.threat.budgets.shadow_models
        trains = ctx.model.rebuild is not None and n_shadow >= 2
        shadows = tuple(shadow_shard(k) for k in range(n_shadow)) if trains else ()
        return [Shard(LOSS), *(Shard(s) for s in shadows), Shard(LIRA, shadows), Shard(RMIA_SHARD)]

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        """Every shard in order on ``ctx`` (the shadows leave their confidences in
        ``ctx.shard_outputs`` for LiRA's scoring)."""
        for shard in self.shards(ctx):
            yield from self.run_shard(ctx, shard)

    def run_shard(self, ctx: ProbeContext, shard: Shard) -> Iterator[Finding]:
        model = ctx.model.require_module("membership inference").to(ctx.device)
        cand, is_member, population = self.sets(ctx)
        x, y = cand.x.to(ctx.device), cand.y.to(ctx.device)
        n = int(is_member.sum())
        base = {"n_members": n}
        if shard.id == GAP:
            finding = Finding(probe=self.name, attack="gap", params=base, severity=0)
            if finding.key not in ctx.done:
                start = time.perf_counter()
                m = membership_metrics(correctness_scores(model, x, y), is_member)
                yield self._finding(
                    finding,
                    m,
                    start,
                    ["label-only access: LiRA, RMIA and the loss threshold need scores"],
                )
        elif shard.id == LOSS:
            finding = Finding(probe=self.name, attack="loss-threshold", params=base, severity=0)
            if finding.key not in ctx.done:
                start = time.perf_counter()
                m = membership_metrics(loss_threshold_scores(model, x, y), is_member)
                out = self._finding(finding, m, start, [])
                out.metrics["train_accuracy"] = accuracy(model, x[is_member], y[is_member])
                out.metrics["test_accuracy"] = accuracy(model, x[~is_member], y[~is_member])
                yield out
        elif shard.id == LIRA:
            yield from self._lira(ctx, model, cand, is_member, population)
        elif shard.id == RMIA_SHARD:
            yield from self._rmia(ctx, model, cand, is_member, population)
        elif shard.id.startswith("lira-shadow-") and shard.id in {s.id for s in self.shards(ctx)}:
            if self._lira_todo(ctx, is_member):  # else both LiRA findings are done: no need
                start = time.perf_counter()
                k = int(shard.id.removeprefix("lira-shadow-"))
                lira = self._lira_attack(ctx)
                shadow = lira.train_shadow(population, ctx.model.rebuild, k)
                ctx.shard_outputs[shard.id] = lira.confidences(shadow, population)
                seconds = torch.tensor(time.perf_counter() - start, dtype=torch.float64)
                ctx.shard_outputs[f"{shard.id}.seconds"] = seconds
        else:
            raise AssessmentError(f"the membership probe has no shard {shard.id!r} here")

    def _lira_params(self, ctx: ProbeContext, is_member: torch.Tensor) -> dict:
        n_shadow = ctx.threat.budgets.shadow_models
        return {
            "n_members": int(is_member.sum()),
            "n_shadow": n_shadow,
            "epochs": ctx.recipe.epochs,
            "fixed_variance": n_shadow < FIXED_VARIANCE_BELOW,
        }

    def _lira_todo(self, ctx: ProbeContext, is_member: torch.Tensor) -> list[Finding]:
        """LiRA's findings (online, offline) not done yet."""
        params = self._lira_params(ctx, is_member)
        todo = [
            Finding(probe=self.name, attack=f"lira-{v}", params=params, severity=0)
            for v in ("online", "offline")
        ]
        return [f for f in todo if f.key not in ctx.done]

    def _lira_attack(self, ctx: ProbeContext) -> LiRA:
        recipe, n_shadow = ctx.recipe, ctx.threat.budgets.shadow_models
        return LiRA(
            n_shadow=n_shadow,
            online=True,
            fixed_variance=n_shadow < FIXED_VARIANCE_BELOW,
            epochs=recipe.epochs,
            lr=recipe.lr,
            batch_size=recipe.batch_size,
            seed=ctx.seed,
            device=ctx.device,
        )

    def _lira(self, ctx, model, cand, is_member, population) -> Iterator[Finding]:
        """LiRA online and offline from the shadow shards' confidences."""
        n_shadow = ctx.threat.budgets.shadow_models
        todo = self._lira_todo(ctx, is_member)
        if not todo:
            return
        if ctx.model.rebuild is None:
            ctx.skipped.append(
                Skipped(
                    probe=f"{self.name}/lira",
                    reason=f"LiRA trains shadow copies of the architecture, and a {ctx.model.form} "
                    "model cannot be rebuilt untrained (give --entry-point): only the loss threshold ran",
                )
            )
            return
        if n_shadow < 2:
            ctx.skipped.append(
                Skipped(
                    probe=f"{self.name}/lira",
                    status="excluded",
                    reason=f"LiRA needs budgets.shadow_models >= 2, got {n_shadow}",
                )
            )
            return
        start = time.perf_counter()
        names = [shadow_shard(k) for k in range(n_shadow)]
        missing = [k for k in names if k not in ctx.shard_outputs]
        if missing:
            raise AssessmentError(
                f"LiRA's scoring ran before its shadow model(s) {', '.join(missing)}"
            )
        phis = [ctx.shard_outputs[k] for k in names]
        lira = self._lira_attack(ctx).from_shadows(population, phis)
        fit_seconds = sum(float(ctx.shard_outputs[f"{k}.seconds"]) for k in names)
        fit_seconds += time.perf_counter() - start
        note = (
            f"{n_shadow} shadow models on random halves of {len(population)} rows "
            f"(train ∪ test), {fit_seconds:.1f} s to train"
        )
        for finding in todo:
            start = time.perf_counter() - fit_seconds
            fit_seconds = 0.0  # the first finding carries the shadow training time
            scorer = lira.variant(online=finding.attack == "lira-online")
            m = membership_metrics(scorer.score(model, cand.x, cand.y), is_member)
            yield self._finding(finding, m, start, [note])

    def _rmia(self, ctx, model, cand, is_member, population) -> Iterator[Finding]:
        recipe = ctx.recipe
        n_reference = ctx.threat.budgets.reference_models
        params = {
            "n_members": int(is_member.sum()),
            "n_reference": n_reference,
            "epochs": recipe.epochs,
            "online": False,
            "gamma": 1.0,
        }
        finding = Finding(probe=self.name, attack="rmia", params=params, severity=0)
        if finding.key in ctx.done:
            return
        if ctx.model.rebuild is None:
            ctx.skipped.append(
                Skipped(
                    probe=f"{self.name}/rmia",
                    reason=f"RMIA trains reference copies of the architecture, and a "
                    f"{ctx.model.form} model cannot be rebuilt untrained (give --entry-point)",
                )
            )
            return
        start = time.perf_counter()
        rmia = RMIA(
            n_reference=n_reference,
            online=False,
            gamma=1.0,
            epochs=recipe.epochs,
            lr=recipe.lr,
            batch_size=recipe.batch_size,
            seed=ctx.seed,
            device=ctx.device,
        ).fit(population, ctx.model.rebuild)
        fit_seconds = time.perf_counter() - start
        m = membership_metrics(rmia.score(model, cand.x, cand.y), is_member)
        if n_reference > 1:
            source = f"the {n_reference - n_reference // 2} that did not train on it"
        else:
            source = "the one model (inverted through the linear model on its own rows)"
        note = (
            f"offline RMIA: {n_reference} reference model(s) on random halves of "
            f"{len(population)} rows (train ∪ test), {fit_seconds:.1f} s to train; each "
            f"candidate's Pr(x) from {source}, a = {rmia.a_:.3f} ({rmia.a_source_}); "
            f"compared with {len(rmia.z_index_)} population samples z"
        )
        out = self._finding(finding, m, start, [note])
        out.metrics["offline_a"] = rmia.a_
        yield out

    @staticmethod
    def _finding(finding: Finding, m: MembershipMetrics, start: float, notes: list[str]) -> Finding:
        return finding.model_copy(
            update={
                "metrics": _metrics(m),
                "severity": membership_severity(m),
                "series": {"fpr": m.fpr, "tpr": m.tpr},
                "seconds": round(time.perf_counter() - start, 3),
                "notes": notes,
            }
        )
