"""``bastion harden`` as a library call: apply a recipe to a parent model, save the child with
its provenance, assess parent and child the same way and write the comparison.

Layout of ``out``::

    out/spec.json, model.safetensors, provenance.json   the hardened model (a model directory)
    out/comparison/comparison.json, comparison.html      the before/after comparison
    out/comparison/parent/, out/comparison/child/       the two assessments (report.json/html)
    out/.harden/<fingerprint>/                           training checkpoints (resume)
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from bastion.assess.api import assess, recipe_from_provenance
from bastion.assess.schema import Report, ThreatModel
from bastion.data.dataset import DataBundle
from bastion.defenses.compare import (
    BackdoorCheck,
    Comparison,
    MetricRow,
    ModelSummary,
    curves,
    report_rows,
    write_comparison,
)
from bastion.defenses.recipes import Recipe, StandardConfig
from bastion.defenses.runner import HardenResult, apply_recipe
from bastion.errors import ModelError
from bastion.models.io import LoadedModel, file_sha256, load_model, save_model
from bastion.models.train import accuracy

log = logging.getLogger(__name__)


@dataclass
class HardenOutcome:
    model_dir: Path
    result: HardenResult
    comparison: Comparison
    json_path: Path
    html_path: Path


def fingerprint(
    parent: LoadedModel, data: DataBundle, recipe: Recipe, seed: int, threat: ThreatModel
) -> str:
    """What a checkpoint must match to be resumed: parent, data, recipe, seed, ε."""
    h = hashlib.sha256()
    for part in (parent.sha256, data.train.sha256(), json.dumps(recipe.describe(), sort_keys=True),
                 str(seed), json.dumps(threat.eps), str(threat.poison_rate)):  # fmt: skip
        h.update(part.encode())
    return h.hexdigest()[:16]


def backdoor_check(
    parent: LoadedModel, data: DataBundle, recipe: Recipe, *, rate: float, target: int = 0,
    patch_size: int = 3, eps: float = 0.1, seed: int = 0, device: str | torch.device = "cpu",
) -> BackdoorCheck:  # fmt: skip
    """BadNets (Gu et al. 2017) on the training set at ``rate``: train with the parent's
    recorded recipe (natural training) and with ``recipe`` (whose sanitize step reads the
    backdoored model's activations), and measure both backdoors."""
    from bastion.attacks.poisoning import backdoor_success_rate, poison_dataset

    patch = min(patch_size, min(data.train.shape[-2:]) // 2)
    poisoned = poison_dataset(data.train, rate=rate, target=target, patch_size=patch,
                              generator=torch.Generator().manual_seed(seed + 31))  # fmt: skip
    rec = recipe_from_provenance(parent)
    natural = Recipe(
        steps=[StandardConfig(epochs=rec.epochs, batch_size=rec.batch_size, lr=rec.lr)]
    )
    clean = apply_recipe(natural, parent.module, data.train, seed=seed, device=device).module
    bad = apply_recipe(natural, parent.module, poisoned.dataset, seed=seed, device=device).module
    steps = [
        s.model_copy(update={"init": "scratch"}) if s.kind == "train" else s for s in recipe.steps
    ]
    hardened = apply_recipe(Recipe(steps=steps), bad, poisoned.dataset, eps=eps, poison_rate=rate,
                            feature_model=bad, poisoned=poisoned.indices, seed=seed, device=device)  # fmt: skip
    x, y = data.test.x.to(device), data.test.y.to(device)
    trig = {
        "target": target,
        "patch_size": patch,
        "bounds": data.test.bounds,
        "value": data.test.bounds[1],
    }
    q = hardened.sanitize.quality if hardened.sanitize else None
    return BackdoorCheck(
        rate=rate, target=target, patch_size=patch, n_poisoned=len(poisoned.indices),
        parent_attack_success=backdoor_success_rate(bad, x, y, **trig),
        child_attack_success=backdoor_success_rate(hardened.module, x, y, **trig),
        clean_model_attack_success=backdoor_success_rate(clean, x, y, **trig),
        parent_accuracy=accuracy(bad, x, y), child_accuracy=accuracy(hardened.module, x, y),
        precision=q.precision if q else None, recall=q.recall if q else None,
        n_flagged=q.n_flagged if q else None,
    )  # fmt: skip


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
) -> HardenOutcome:
    """Harden ``parent`` with ``recipe`` and prove it: see the module docstring for the files.
    ``backdoor`` (default: when the recipe sanitizes or the threat model can poison) runs
    :func:`backdoor_check`. A rerun with the same ``out`` resumes training from the last
    checkpoint and reuses a finished parent assessment."""
    if parent.spec is None:
        raise ModelError(
            "bastion harden needs a zoo model directory (spec.json) to save the hardened copy; "
            "entry-point models cannot be rebuilt from a spec"
        )
    threat = threat or ThreatModel()
    out = Path(out)
    fp = fingerprint(parent, data, recipe, seed, threat)
    workdir = out / ".harden" / fp
    workdir.mkdir(parents=True, exist_ok=True)
    result = apply_recipe(recipe, parent.module, data.train, eps=max(threat.eps),
                          poison_rate=threat.poison_rate, seed=seed, workdir=workdir, device=device)  # fmt: skip
    child_module = result.module.cpu()
    if result.dp is not None and result.dp.module_fixes:
        raise ModelError(
            "DP-SGD replaced layers of the model (" + "; ".join(result.dp.module_fixes) + "), "
            f"which the zoo spec {parent.spec.name!r} cannot express: use an architecture without "
            "BatchNorm (e.g. GroupNorm) for DP-SGD"
        )
    test_acc = accuracy(child_module, data.test.x, data.test.y)
    train = result.train
    provenance = {
        "data": data_spec or data.name, "data_root": data_root,
        "train_manifest": data.train.manifest().model_dump(),
        "test_manifest": data.test.manifest().model_dump(),
        "recipe": {
            "name": result.recipe.name, "steps": result.recipe.describe(),
            "epochs": result.recipe.training.epochs, "batch_size": result.recipe.training.batch_size,
            "lr": result.recipe.training.lr, "seed": seed,
        },
        "parent": {"path": str(parent.path) if parent.path else None, "name": parent.name,
                   "sha256": parent.sha256, "spec": parent.spec.model_dump()},
        "test_accuracy": test_acc, "train_seconds": result.seconds, "fingerprint": fp,
        "threat_eps": threat.eps,
        "training": None if train is None else {
            "epochs_run": train.epochs_run, "best_epoch": train.best_epoch,
            "stopped_early": train.stopped_early, "resumed_from": train.resumed_from,
            "val_score": train.val_score,
        },
        "dp": None if result.dp is None else _dp_dict(result),
        "sanitize": None if result.sanitize is None else _sanitize_dict(result),
        "notes": result.notes,
    }  # fmt: skip
    save_model(child_module, parent.spec, out, provenance=provenance)
    child = load_model(out)
    comp_dir = out / "comparison"
    parent_acc = accuracy(parent.module, data.test.x, data.test.y)
    rows = [
        MetricRow(
            group="accuracy",
            metric="test accuracy (full test set)",
            parent=parent_acc,
            child=test_acc,
        )
    ]
    reports: dict[str, str] = {}
    parent_report = child_report = None
    if run_assessment:
        parent_report = _existing_report(comp_dir / "parent" / "report.json", parent.sha256, threat)
        if parent_report is None:
            parent_report = assess(parent, data, threat, comp_dir / "parent", device=device, seed=seed,
                                   recipe=recipe_from_provenance(parent), record=record).report  # fmt: skip
        child_report = assess(child, data, threat, comp_dir / "child", device=device, seed=seed,
                              recipe=recipe_from_provenance(parent), record=record).report  # fmt: skip
        rows += report_rows(parent_report, child_report)
        reports = {"parent": "parent/report.html", "child": "child/report.html"}
    do_backdoor = (
        backdoor if backdoor is not None else (bool(recipe.data_steps) or threat.can_poison)
    )
    check = None
    if do_backdoor:
        check = backdoor_check(parent, data, recipe, rate=threat.poison_rate, eps=max(threat.eps),
                               seed=seed, device=device)  # fmt: skip
        rows.append(MetricRow(group="poisoning", metric="BadNets attack success (retrained on poisoned data)",
                              parent=check.parent_attack_success, child=check.child_attack_success,
                              better="lower"))  # fmt: skip
    rows.append(MetricRow(group="cost", metric="training time (s)", better="none",
                          parent=parent.provenance.get("train_seconds"), child=result.seconds))  # fmt: skip
    comparison = Comparison(
        parent=ModelSummary(name=parent.name, sha256=parent.sha256, path=str(parent.path) if parent.path else None,
                            score=parent_report.score if parent_report else None),
        child=ModelSummary(name=child.name, sha256=child.sha256, path=str(out),
                           score=child_report.score if child_report else None),
        recipe=result.recipe.name, recipe_steps=result.recipe.describe(),
        threat_model=threat if run_assessment else None, rows=rows,
        curves={k: v for k, v in (("parent", curves(parent_report) if parent_report else {}),
                                  ("child", curves(child_report) if child_report else {})) if v},
        training={"seconds": round(result.seconds, 2), **(provenance["training"] or {}),
                  "resumed_from": (train or result.dp).resumed_from},
        privacy=provenance["dp"], sanitize=provenance["sanitize"], backdoor=check,
        reports=reports, notes=result.notes,
    )  # fmt: skip
    json_path, html_path = write_comparison(comparison, comp_dir)
    return HardenOutcome(out, result, comparison, json_path, html_path)


def _dp_dict(result: HardenResult) -> dict:
    dp = result.dp
    return {
        "epsilon_spent": dp.epsilon, "delta": dp.delta, "target_epsilon": dp.target_epsilon,
        "noise_multiplier": dp.noise_multiplier, "max_grad_norm": dp.max_grad_norm,
        "sample_rate": dp.sample_rate, "steps": dp.steps, "accountant": dp.accountant,
        "poisson_sampling": True, "module_fixes": dp.module_fixes,
    }  # fmt: skip


def _sanitize_dict(result: HardenResult) -> dict:
    s = result.sanitize
    out = {
        "method": s.method, "n_flagged": s.n_flagged, "per_class": s.per_class,
        "poisoned_classes": s.poisoned_classes, "reclassification": s.reclassification,
        "seconds": round(result.sanitize_seconds, 2),
    }  # fmt: skip
    if s.quality is not None:
        out.update(precision=s.quality.precision, recall=s.quality.recall)
    return out


__all__ = ["HardenOutcome", "backdoor_check", "file_sha256", "fingerprint", "harden_model"]
