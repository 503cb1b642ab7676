"""One call to assess a model: load it and its data, run the probes, write the reports.

``bastion.assess(model, data, threat=..., out=...)`` takes what a user has: ``model`` an
``nn.Module``, a path of any form ``load_model`` reads, an ``http(s)://`` URL, or a
:class:`~bastion.models.loaded.LoadedModel`; ``data`` a :class:`DataBundle`, a dataset name
or path, or arrays ``(x, y)`` / ``(x_train, y_train, x_test, y_test)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.assess.executor import Executor
from bastion.assess.probe import Members, ProbeContext, TrainingRecipe
from bastion.assess.runner import finish, run_assessment
from bastion.assess.schema import Report, ThreatModel
from bastion.data import DataBundle, load_dataset
from bastion.data.loaders import DataOptions, bundle_from_arrays
from bastion.errors import ConfigError, DataError
from bastion.models.io import load_model, state_sha256
from bastion.models.loaded import Capabilities, LoadedModel


@dataclass
class AssessmentOutput:
    report: Report
    json_path: Path
    html_path: Path
    run_id: int | None
    sarif_path: Path | None = None


def recipe_from_provenance(model: LoadedModel) -> TrainingRecipe:
    """The training recipe recorded by `bastion train` (so retraining probes repeat it)."""
    rec = model.provenance.get("recipe") or {}
    fields = {k: rec[k] for k in ("epochs", "batch_size", "lr", "seed") if k in rec}
    return TrainingRecipe(**fields)


def as_loaded(model: Any, *, num_classes: int | None = None, **load_kw: Any) -> LoadedModel:
    """A :class:`LoadedModel` from a module, a path, an http(s) URL or a loaded model."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, nn.Module):
        model.eval()
        return LoadedModel(
            name=type(model).__name__,
            sha256=state_sha256(model),
            form="module",
            module=model,
            capabilities=Capabilities(gradients=True, num_classes=num_classes),
        )
    if isinstance(model, str) and model.startswith(("http://", "https://")):
        from bastion.assess.remote import http_model

        return http_model(model, num_classes=num_classes, **load_kw)
    if isinstance(model, (str, Path)):
        return load_model(model, **load_kw)
    raise ConfigError(
        f"cannot assess a {type(model).__name__}: pass an nn.Module, a model path or an http(s) URL"
    )


def as_bundle(data: Any, *, seed: int = 0, options: DataOptions | None = None) -> DataBundle:
    """A :class:`DataBundle` from a bundle, a dataset name/path, or arrays."""
    if isinstance(data, DataBundle):
        return data
    if isinstance(data, (str, Path)):
        return load_dataset(str(data), seed=seed, options=options)
    if isinstance(data, (tuple, list)) and len(data) in (2, 4):
        keys = ("x", "y") if len(data) == 2 else ("x_train", "y_train", "x_test", "y_test")
        arrays = {
            k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
            for k, v in zip(keys, data, strict=True)
        }
        return bundle_from_arrays("arrays", "python arrays", arrays, seed, options)
    raise DataError(
        "data must be a DataBundle, a dataset name or path, (x, y) or (x_train, y_train, x_test, y_test)"
    )


def resolve_members(
    members: str | Path | list[int] | None, model: LoadedModel, data: DataBundle
) -> Members | None:
    """The model's training rows: ``train-split``, a file of row numbers of the data file
    (a JSON list, or one integer per line), a list of such numbers, or — for a model
    ``bastion train`` wrote on this very training split — its provenance."""
    if members is None:
        manifest = model.provenance.get("train_manifest") or {}
        if manifest.get("sha256") == data.train.sha256():
            return Members.train_split(data, "bastion train provenance (same training split)")
        return None
    if members == "train-split":
        return Members.train_split(data, "declared: the data's train split is the training set")
    if isinstance(members, (str, Path)):
        path = Path(members)
        try:
            text = path.read_text()
        except OSError as exc:
            raise DataError(f"members file {path}: {exc.strerror or exc}") from None
        try:
            raw = json.loads(text) if text.lstrip().startswith("[") else text.split()
            idx = [int(v) for v in raw]
        except (ValueError, TypeError):
            raise DataError(
                f"members file {path}: expected row indices (a JSON list or one integer per line)"
            ) from None
        source = f"--members {path}"
    else:
        idx, source = [int(v) for v in members], "given row indices"
    wanted = torch.tensor(sorted(set(idx)), dtype=torch.long)
    rows_train, rows_test = data.train.rows, data.test.rows
    known = torch.cat([rows_train, rows_test])
    missing = wanted[~torch.isin(wanted, known)]
    if missing.numel():
        raise DataError(
            f"member row {int(missing[0])} is not in the data (rows 0..{int(known.max())}): "
            "member indices are row numbers of the data file (for files with separate "
            "train and test arrays: the train rows, then the test rows)"
        )
    return Members(torch.isin(rows_train, wanted), torch.isin(rows_test, wanted), source)


def assess(
    model: Any,
    data: Any,
    threat: ThreatModel | dict | None = None,
    out_dir: str | Path = "bastion-assess",
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    recipe: TrainingRecipe | None = None,
    record: bool = True,
    members: str | Path | list[int] | None = None,
    query_target: Any = None,
    executor: Executor | None = None,
) -> AssessmentOutput:
    """Run every applicable probe, write ``report.json``, ``report.html`` and
    ``findings.sarif`` under ``out_dir`` (resuming from a checkpoint there) and record the
    run in the store (the HTML then compares it with the model's previous recorded run).
    ``executor`` runs the probes elsewhere, e.g.
    :class:`~bastion.assess.executor.RayExecutor` (default: in this process).

    Example::

        import bastion
        out = bastion.assess(my_module, (x_train, y_train, x_test, y_test),
                             threat={"eps": [0.05]}, out_dir="out/assess")
        print(out.report.score, [f.attack for f in out.report.findings])
    """
    ctx = assessment_context(
        model,
        data,
        threat,
        out_dir,
        device=device,
        seed=seed,
        recipe=recipe,
        members=members,
        query_target=query_target,
    )
    return write_outputs(run_assessment(ctx, executor), ctx.out_dir, record=record)


def assessment_context(
    model: Any,
    data: Any,
    threat: ThreatModel | dict | None,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    recipe: TrainingRecipe | None = None,
    members: str | Path | list[int] | None = None,
    query_target: Any = None,
) -> ProbeContext:
    """The probe context :func:`assess` runs on (its arguments, resolved)."""
    bundle = as_bundle(data, seed=seed)
    loaded = as_loaded(model, num_classes=bundle.test.num_classes)
    if threat is None:
        threat = ThreatModel()
    elif isinstance(threat, dict):
        from bastion.config import validate

        threat = validate(ThreatModel, threat, "threat")
    return ProbeContext(
        model=loaded,
        data=bundle,
        threat=threat,
        out_dir=Path(out_dir),
        device=torch.device(device),
        seed=seed,
        recipe=recipe or recipe_from_provenance(loaded),
        members=resolve_members(members, loaded, bundle),
        query_target=query_target,
    )


def write_outputs(report: Report, out: Path, *, record: bool = True) -> AssessmentOutput:
    """Write ``report.json`` (dropping the checkpoint), ``report.html`` and
    ``findings.sarif`` under ``out`` and record the run in the store."""
    from bastion.report.html import write_report_html
    from bastion.report.previous import since_previous
    from bastion.report.sarif import write_sarif
    from bastion.store.runs import record_run

    json_path = finish(report, out)
    html_path = write_report_html(
        report, out, comparison=since_previous(report) if record else None
    )
    sarif_path = write_sarif(report, out)
    run_id = record_run(report, str(out.resolve())) if record else None
    return AssessmentOutput(report, json_path, html_path, run_id, sarif_path)


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
