"""``bastion harden`` as a library call: apply a recipe to a parent model of any form, save
the child with its provenance, assess parent and child the same way and write the comparison.

What applies follows the model (:func:`bastion.defenses.estimators.check_applicable`):
differentiable torch models (zoo model directories, entry points, TorchScript, converted
ONNX graphs) take every recipe, adversarial training running in the assessment's attack
space (relative ε, per-feature bounds, frozen features); scikit-learn estimators (skops) and
XGBoost boosters take sanitization and refitting from their own parameters; adversarial
training and DP-SGD are not applicable to them, with the reason.

Layout of ``out``::

    out/spec.json, <model file>, provenance.json      the hardened model (a model directory;
                                                       see bastion.defenses.rebuild)
    out/comparison/comparison.json, comparison.html   the before/after comparison
    out/comparison/parent/, out/comparison/child/     the two assessments (report.json/html)
    out/.harden/<fingerprint>/                        training checkpoints (resume)

The comparison's clean-accuracy guard (:class:`~bastion.defenses.compare.AccuracyGuard`)
reports a child that lost more clean accuracy than allowed, or fell to chance, as a
regression; ``bastion harden`` then exits 1 unless ``--allow-accuracy-drop`` allows it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bastion.assess.api import assess, recipe_from_provenance
from bastion.assess.checks import check_clean_accuracy, check_compatible
from bastion.assess.schema import Report, ThreatModel
from bastion.assess.space import AttackSpace
from bastion.data.dataset import DataBundle
from bastion.defenses.compare import (
    AccuracyGuard,
    BackdoorCheck,
    Comparison,
    MetricRow,
    ModelSummary,
    SkippedCheck,
    curves,
    decide,
    report_rows,
    write_comparison,
)
from bastion.defenses.estimators import (
    EstimatorResult,
    NotApplicable,
    Refit,
    apply_estimator_recipe,
    check_applicable,
    refit_for,
)
from bastion.defenses.rebuild import load_hardened, save_estimator_child, save_module_child
from bastion.defenses.recipes import Recipe, StandardConfig
from bastion.defenses.runner import HardenResult, apply_recipe, fresh_copy
from bastion.errors import AssessmentError, AttackError, ModelError
from bastion.models.io import LoadedModel, file_sha256
from bastion.models.train import accuracy

log = logging.getLogger(__name__)


@dataclass
class HardenOutcome:
    """``result`` is the torch recipe's result (None for a refit estimator, whose run is
    ``estimator``)."""

    model_dir: Path
    result: HardenResult | None
    comparison: Comparison
    json_path: Path
    html_path: Path
    child: LoadedModel | None = None
    estimator: EstimatorResult | None = None

    @property
    def blocked(self) -> bool:
        """The child collapsed clean accuracy and the user did not allow it."""
        guard = self.comparison.accuracy
        return guard is not None and guard.blocks


def fingerprint(
    parent: LoadedModel,
    data: DataBundle,
    recipe: Recipe,
    seed: int,
    threat: ThreatModel,
    eps_mode: str | None = None,
) -> str:
    """What a checkpoint must match to be resumed: parent, data, recipe, seed, ε and its mode."""
    h = hashlib.sha256()
    parts = (
        parent.sha256,
        data.train.sha256(),
        json.dumps(recipe.describe(), sort_keys=True),
        str(seed),
        json.dumps(threat.eps),
        str(threat.poison_rate),
        str(eps_mode or threat.eps_mode),
    )
    for part in parts:
        h.update(part.encode())
    return h.hexdigest()[:16]


def _trigger(data: DataBundle, patch_size: int) -> dict:
    """The BadNets trigger that fits the modality (the poisoning probe's)."""
    from bastion.attacks.poisoning import trigger_for

    return trigger_for(data.test, patch_size)


def backdoor_check(
    parent: LoadedModel,
    data: DataBundle,
    recipe: Recipe,
    *,
    rate: float,
    target: int = 0,
    patch_size: int = 3,
    eps: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    space: AttackSpace | None = None,
    refit: Refit | None = None,
) -> BackdoorCheck:
    """BadNets (Gu et al. 2017) on the training set at ``rate``, with the trigger that fits
    the modality (an image patch, or on tabular rows the widest-range features at their
    upper bounds): train the parent's architecture naturally (its recorded recipe; for a
    gradient-free model, ``refit``) and with ``recipe`` (whose sanitize step reads the
    backdoored model), and measure both backdoors."""
    from bastion.attacks.poisoning import backdoor_success_rate, poison_dataset

    trig = _trigger(data, patch_size)
    gen = torch.Generator().manual_seed(seed + 31)
    poisoned = poison_dataset(data.train, rate=rate, target=target, generator=gen, **trig)
    quality = None
    if refit is None:
        rec = recipe_from_provenance(parent)
        natural = Recipe(
            steps=[StandardConfig(epochs=rec.epochs, batch_size=rec.batch_size, lr=rec.lr)]
        )
        module = parent.require_module("the backdoor check")
        clean = apply_recipe(natural, module, data.train, seed=seed, device=device).module
        bad = apply_recipe(natural, module, poisoned.dataset, seed=seed, device=device).module
        steps = [
            s.model_copy(update={"init": "scratch"}) if s.kind == "train" else s
            for s in recipe.steps
        ]
        run = apply_recipe(
            Recipe(steps=steps),
            bad,
            poisoned.dataset,
            eps=eps,
            poison_rate=rate,
            feature_model=bad,
            poisoned=poisoned.indices,
            seed=seed,
            device=device,
            space=space,
        )
        hardened = run.module
        quality = run.sanitize.quality if run.sanitize else None
    else:
        clean = refit.module(refit.fit(data.train))
        bad = refit.module(refit.fit(poisoned.dataset))
        est = apply_estimator_recipe(
            recipe, refit, poisoned.dataset, poison_rate=rate, poisoned=poisoned.indices, seed=seed
        )
        hardened = refit.module(est.estimator)
        quality = est.sanitize.quality if est.sanitize else None
    x, y = data.test.x.to(device), data.test.y.to(device)
    if refit is not None:
        x, y = x.cpu(), y.cpu()
    kw = {"target": target, "bounds": data.test.bounds, **trig}
    return BackdoorCheck(
        rate=rate,
        target=target,
        patch_size=int(trig.get("patch_size", 0)),
        trigger=trig["trigger"],
        features=[int(i) for i in trig["features"]] if "features" in trig else None,
        n_poisoned=len(poisoned.indices),
        parent_attack_success=backdoor_success_rate(bad, x, y, **kw),
        child_attack_success=backdoor_success_rate(hardened, x, y, **kw),
        clean_model_attack_success=backdoor_success_rate(clean, x, y, **kw),
        parent_accuracy=accuracy(bad, x, y),
        child_accuracy=accuracy(hardened, x, y),
        precision=quality.precision if quality else None,
        recall=quality.recall if quality else None,
        n_flagged=quality.n_flagged if quality else None,
    )


def _backdoor_blocker(parent: LoadedModel, data: DataBundle, refit: Refit | None) -> str | None:
    """Why the backdoor check cannot run here, or None."""
    if data.test.y.eq(0).all():
        return "every test label is the target class 0: nothing to trigger"
    if refit is None:
        try:
            fresh_copy(parent.require_module("the backdoor check"), 0)
        except ModelError as exc:
            return f"it retrains the architecture from scratch, and {exc}"
    try:
        _trigger(data, 3)
    except AttackError as exc:
        return f"no trigger fits the data: {exc}"
    return None


def _existing_report(path: Path, sha: str, threat: ThreatModel) -> Report | None:
    """A finished assessment of the same model under the same threat model, if there."""
    if not path.exists():
        return None
    try:
        report = Report.model_validate_json(path.read_text())
    except ValueError:
        return None
    if report.model.sha256 == sha and report.threat_model == threat:
        return report
    return None


def full_test_accuracy(model: LoadedModel, data: DataBundle) -> float:
    """Clean accuracy of ``model`` on the full test split."""
    x, y = data.test.x, data.test.y
    if model.module is not None:
        param = next(model.module.parameters(), None)
        if param is not None:
            x = x.to(param.device)
    return float((model.predict(x).cpu() == y.cpu()).float().mean())


def _parent_record(parent: LoadedModel) -> dict[str, Any]:
    return {
        "path": str(parent.path) if parent.path else None,
        "name": parent.name,
        "sha256": parent.sha256,
        "form": parent.form,
        "entry_point": parent.entry_point,
        "spec": parent.spec.model_dump() if parent.spec is not None else None,
        "artifacts": [a.model_dump() for a in parent.artifacts],
    }


def harden_model(
    parent: LoadedModel,
    data: DataBundle,
    recipe: Recipe,
    out: str | Path,
    *,
    threat: ThreatModel | None = None,
    data_spec: str | None = None,
    data_root: str | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    run_assessment: bool = True,
    backdoor: bool | None = None,
    record: bool = True,
    allow_accuracy_drop: float | None = None,
    trusted: list[str] | None = None,
) -> HardenOutcome:
    """Harden ``parent`` with ``recipe`` and prove it: see the module docstring for the files.
    ``backdoor`` (default: when the recipe sanitizes or the threat model can poison) runs
    :func:`backdoor_check` where it applies (a skip is recorded with its reason otherwise).
    ``allow_accuracy_drop`` (default :data:`~bastion.defenses.compare.DEFAULT_ALLOWED_DROP`)
    is the clean-accuracy drop the guard accepts; ``trusted``: skops types to trust when the
    child is loaded back. A rerun with the same ``out`` resumes training from the last
    checkpoint and reuses a finished parent assessment."""
    threat = threat or ThreatModel()
    check_applicable(parent, recipe)
    num_classes = check_compatible(parent, data)
    parent_acc = full_test_accuracy(parent, data)
    if run_assessment:  # the assessment would refuse the parent after the training anyway
        check_clean_accuracy(parent_acc, data.test.y, threat.min_clean_accuracy, parent.name)
    out = Path(out)
    space = AttackSpace.build(data.test.input_spec, threat.eps_mode)
    fp = fingerprint(parent, data, recipe, seed, threat, space.mode)
    workdir = out / ".harden" / fp
    workdir.mkdir(parents=True, exist_ok=True)
    refit = None if parent.differentiable else refit_for(parent, recipe)
    result = est_result = None
    if refit is None:
        result = apply_recipe(
            recipe,
            parent.require_module("bastion harden"),
            data.train,
            eps=max(threat.eps),
            poison_rate=threat.poison_rate,
            seed=seed,
            workdir=workdir,
            device=device,
            space=space,
        )
        run_recipe, notes, seconds = result.recipe, result.notes, result.seconds
        child_module = result.module.cpu()
        if (
            result.dp is not None
            and result.dp.module_fixes
            and (parent.spec is not None or parent.entry_point is not None)
        ):
            arch = f"the zoo spec {parent.spec.name!r}" if parent.spec else parent.entry_point
            raise ModelError(
                "DP-SGD replaced layers of the model (" + "; ".join(result.dp.module_fixes) + "), "
                f"which {arch} cannot express: use an architecture without BatchNorm "
                "(e.g. GroupNorm) for DP-SGD"
            )
        child_acc = accuracy(child_module, data.test.x, data.test.y)
    else:
        est_result = apply_estimator_recipe(
            recipe, refit, data.train, poison_rate=threat.poison_rate, seed=seed
        )
        run_recipe, notes, seconds = est_result.recipe, est_result.notes, est_result.seconds
        child_pred = refit.module(est_result.estimator)
        child_acc = accuracy(child_pred, data.test.x, data.test.y)
    guard = AccuracyGuard.measure(
        parent_acc,
        child_acc,
        data.test.y,
        allowed=allow_accuracy_drop,
        min_clean_accuracy=threat.min_clean_accuracy,
    )
    train = result.train if result is not None else None
    dp = _dp_dict(result) if result is not None and result.dp is not None else None
    sanitize_res = (result or est_result).sanitize
    provenance = {
        "data": data_spec or data.name,
        "data_root": data_root,
        "train_manifest": data.train.manifest().model_dump(),
        "test_manifest": data.test.manifest().model_dump(),
        "recipe": {
            "name": run_recipe.name,
            "steps": run_recipe.describe(),
            "epochs": run_recipe.training.epochs,
            "batch_size": run_recipe.training.batch_size,
            "lr": run_recipe.training.lr,
            "seed": seed,
            "eps_mode": space.mode,
            **({"estimator": {"form": refit.form, "params": refit.params}} if refit else {}),
        },
        "parent": _parent_record(parent),
        "test_accuracy": child_acc,
        "parent_test_accuracy": parent_acc,
        "clean_accuracy_drop": guard.clean_accuracy_drop,
        "train_seconds": seconds,
        "fingerprint": fp,
        "threat_eps": threat.eps,
        "training": None
        if train is None
        else {
            "epochs_run": train.epochs_run,
            "best_epoch": train.best_epoch,
            "stopped_early": train.stopped_early,
            "resumed_from": train.resumed_from,
            "val_score": train.val_score,
        },
        "dp": dp,
        "sanitize": None if sanitize_res is None else _sanitize_dict(result or est_result),
        "notes": notes,
    }
    if refit is None:
        save_module_child(
            parent, child_module, out, provenance, example=data.test.x[:64], num_classes=num_classes
        )
    else:
        save_estimator_child(
            refit.form,
            lambda path: refit.save(est_result.estimator, path),
            out,
            provenance,
            input_shape=list(data.test.shape),
            num_classes=num_classes,
        )
    child = load_hardened(out, trusted=trusted)
    loaded_acc = full_test_accuracy(child, data)
    if abs(loaded_acc - child_acc) > 1e-6:
        raise ModelError(
            f"{out}: the saved child answers differently from the trained model (test accuracy "
            f"{loaded_acc:.4f} vs {child_acc:.4f}): not writing a comparison for it"
        )
    comp_dir = out / "comparison"
    rows = [
        MetricRow(
            group="accuracy",
            metric="test accuracy (full test set)",
            parent=parent_acc,
            child=child_acc,
        )
    ]
    skipped: list[SkippedCheck] = []
    reports: dict[str, str] = {}
    parent_report = child_report = None
    if run_assessment:
        recipe_ = recipe_from_provenance(parent)
        parent_report = _existing_report(comp_dir / "parent" / "report.json", parent.sha256, threat)
        if parent_report is None:
            parent_report = assess(
                parent,
                data,
                threat,
                comp_dir / "parent",
                device=device,
                seed=seed,
                recipe=recipe_,
                record=record,
            ).report
        reports["parent"] = "parent/report.html"
        if guard.child_at_chance:
            skipped.append(
                SkippedCheck(
                    check="child assessment",
                    reason=(
                        f"the child's clean accuracy {child_acc:.3f} is below the chance guard "
                        f"{guard.floor:.3f}: robustness figures would be meaningless"
                    ),
                )
            )
        else:
            try:
                child_report = assess(
                    child,
                    data,
                    threat,
                    comp_dir / "child",
                    device=device,
                    seed=seed,
                    recipe=recipe_,
                    record=record,
                ).report
            except AssessmentError as exc:
                skipped.append(SkippedCheck(check="child assessment", reason=str(exc)))
        if child_report is not None:
            rows += report_rows(parent_report, child_report)
            reports["child"] = "child/report.html"
    do_backdoor = (
        backdoor if backdoor is not None else (bool(recipe.data_steps) or threat.can_poison)
    )
    check = None
    if do_backdoor:
        blocker = _backdoor_blocker(parent, data, refit)
        if blocker is not None and backdoor:
            raise NotApplicable(f"--backdoor-check does not apply to {parent.name}: {blocker}")
        if blocker is not None:
            skipped.append(SkippedCheck(check="backdoor check (BadNets)", reason=blocker))
        else:
            check = backdoor_check(
                parent,
                data,
                recipe,
                rate=threat.poison_rate,
                eps=max(threat.eps),
                seed=seed,
                device=device,
                space=space,
                refit=refit,
            )
            rows.append(
                MetricRow(
                    group="poisoning",
                    metric="BadNets attack success (retrained on poisoned data)",
                    parent=check.parent_attack_success,
                    child=check.child_attack_success,
                    better="lower",
                )
            )
    rows.append(
        MetricRow(
            group="cost",
            metric="training time (s)",
            better="none",
            parent=parent.provenance.get("train_seconds"),
            child=seconds,
        )
    )
    verdict, why = decide(
        guard,
        parent_report.score if parent_report else None,
        child_report.score if child_report else None,
        check,
    )
    training: dict[str, Any] = {"seconds": round(seconds, 2), **(provenance["training"] or {})}
    if result is not None:
        training["resumed_from"] = (result.train or result.dp).resumed_from
    comparison = Comparison(
        parent=ModelSummary(
            name=parent.name,
            sha256=parent.sha256,
            path=str(parent.path) if parent.path else None,
            score=parent_report.score if parent_report else None,
        ),
        child=ModelSummary(
            name=child.name,
            sha256=child.sha256,
            path=str(out),
            score=child_report.score if child_report else None,
        ),
        recipe=run_recipe.name,
        recipe_steps=run_recipe.describe(),
        threat_model=threat if run_assessment else None,
        rows=rows,
        curves={
            k: v
            for k, v in (
                ("parent", curves(parent_report) if parent_report else {}),
                ("child", curves(child_report) if child_report else {}),
            )
            if v
        },
        training=training,
        privacy=dp,
        sanitize=provenance["sanitize"],
        backdoor=check,
        reports=reports,
        notes=notes,
        clean_accuracy_drop=guard.clean_accuracy_drop,
        accuracy=guard,
        verdict=verdict,
        verdict_reason=why,
        skipped=skipped,
    )
    json_path, html_path = write_comparison(comparison, comp_dir)
    return HardenOutcome(out, result, comparison, json_path, html_path, child, est_result)


def _dp_dict(result: HardenResult) -> dict:
    dp = result.dp
    return {
        "epsilon_spent": dp.epsilon,
        "delta": dp.delta,
        "target_epsilon": dp.target_epsilon,
        "noise_multiplier": dp.noise_multiplier,
        "max_grad_norm": dp.max_grad_norm,
        "sample_rate": dp.sample_rate,
        "steps": dp.steps,
        "accountant": dp.accountant,
        "poisson_sampling": True,
        "module_fixes": dp.module_fixes,
    }


def _sanitize_dict(result: HardenResult | EstimatorResult) -> dict:
    s = result.sanitize
    out = {
        "method": s.method,
        "n_flagged": s.n_flagged,
        "per_class": s.per_class,
        "poisoned_classes": s.poisoned_classes,
        "reclassification": s.reclassification,
        "features": s.features,
        "seconds": round(result.sanitize_seconds, 2),
    }
    if s.quality is not None:
        out.update(precision=s.quality.precision, recall=s.quality.recall)
    return out


__all__ = [
    "HardenOutcome",
    "backdoor_check",
    "file_sha256",
    "fingerprint",
    "full_test_accuracy",
    "harden_model",
]
