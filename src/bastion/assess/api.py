"""One call to assess a model: load it and its data, run the probes, write the reports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bastion.assess.probe import ProbeContext, TrainingRecipe
from bastion.assess.runner import finish, run_assessment
from bastion.assess.schema import Report, ThreatModel
from bastion.data import DataBundle, load_dataset
from bastion.models.io import LoadedModel, load_model


@dataclass
class AssessmentOutput:
    report: Report
    json_path: Path
    html_path: Path
    run_id: int | None


def recipe_from_provenance(model: LoadedModel) -> TrainingRecipe:
    """The training recipe recorded by `bastion train` (so retraining probes repeat it)."""
    rec = model.provenance.get("recipe") or {}
    fields = {k: rec[k] for k in ("epochs", "batch_size", "lr", "seed") if k in rec}
    return TrainingRecipe(**fields)


def assess(
    model: LoadedModel,
    data: DataBundle,
    threat: ThreatModel,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    recipe: TrainingRecipe | None = None,
    record: bool = True,
) -> AssessmentOutput:
    """Run every applicable probe, write ``report.json`` + ``report.html`` under ``out_dir``
    (resuming from a checkpoint there) and record the run in the store."""
    from bastion.report.html import write_report_html
    from bastion.store.runs import record_run

    out = Path(out_dir)
    ctx = ProbeContext(
        model=model, data=data, threat=threat, out_dir=out, device=torch.device(device), seed=seed,
        recipe=recipe or recipe_from_provenance(model),
    )  # fmt: skip
    report = run_assessment(ctx)
    json_path = finish(report, out)
    html_path = write_report_html(report, out)
    run_id = record_run(report, str(out.resolve())) if record else None
    return AssessmentOutput(report, json_path, html_path, run_id)


def assess_model_dir(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    data: str | None = None,
    data_root: str | None = None,
    threat: ThreatModel | None = None,
    device: str = "cpu",
    seed: int = 0,
    record: bool = True,
) -> AssessmentOutput:
    """Assess a model directory; the dataset defaults to the one in its provenance."""
    model = load_model(model_dir)
    name = data or model.provenance.get("data") or "digits"
    bundle = load_dataset(name, root=data_root or model.provenance.get("data_root"), seed=seed)
    return assess(
        model, bundle, threat or ThreatModel(), out_dir, device=device, seed=seed, record=record
    )
