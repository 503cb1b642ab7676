"""The ML parts of the ML-BOM: dataset records read from provenance manifests, and the
``modelCard`` and ``data`` fields of CycloneDX 1.6, which cyclonedx-python-lib (v11) does
not model: :func:`add_ml_fields` adds them to the library's JSON output, as the 1.6 schema
defines them (https://cyclonedx.org/docs/1.6/json/#components_items_modelCard)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.assess.schema import Finding, Report
from bastion.errors import ConfigError

MODEL_REF = "model"
ACCURACY_METRICS = ("clean_accuracy", "robust_accuracy")


@dataclass
class DatasetRecord:
    """A dataset split as a provenance manifest describes it."""

    name: str
    split: str
    sha256: str
    roles: list[str]
    n: int
    shape: list[int] | None = None
    num_classes: int | None = None
    classes: list[str] = field(default_factory=list)
    source: str = ""
    inputs: str = ""
    manifest_file: Path | None = None

    @property
    def ref(self) -> str:
        return f"dataset-{self.sha256[:16]}"


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{what} {path}: not valid JSON ({exc})") from None


def describe_inputs(spec: Any) -> str:
    """``image (1, 8, 8) in [0, 1]`` from an input-spec mapping (without importing torch)."""
    if not isinstance(spec, dict) or "shape" not in spec:
        return ""
    lo, hi = spec.get("lower") or [], spec.get("upper") or []
    if len(lo) == 1 and len(hi) == 1:
        bounds = f"in [{lo[0]:g}, {hi[0]:g}]"
    else:
        bounds = f"in per-feature bounds ({spec.get('bounds_source') or 'given'})"
    return f"{spec.get('modality', 'input')} {tuple(spec['shape'])} {bounds}"


def dataset_record(doc: Any, role: str, manifest_file: Path | None) -> DatasetRecord | None:
    """A dataset record from a manifest mapping (name, split, sha256, …); None if not one."""
    if not isinstance(doc, dict) or not doc.get("name") or not isinstance(doc.get("n"), int):
        return None
    if not is_sha256(str(doc.get("sha256"))):
        return None
    inner = doc.get("manifest") if isinstance(doc.get("manifest"), dict) else {}
    counts = doc.get("class_counts") or inner.get("class_counts")
    counts = counts if isinstance(counts, dict) else {}
    spec = doc.get("input_spec") or inner.get("input_spec")
    return DatasetRecord(
        name=str(doc["name"]),
        split=str(doc.get("split") or ""),
        sha256=doc["sha256"],
        roles=[role],
        n=doc["n"],
        shape=doc.get("shape") if isinstance(doc.get("shape"), list) else None,
        num_classes=doc.get("num_classes") if isinstance(doc.get("num_classes"), int) else None,
        classes=[str(c) for c in counts],
        source=str(doc.get("source") or ""),
        inputs=describe_inputs(spec),
        manifest_file=manifest_file,
    )


def manifest_datasets(path: Path) -> list[DatasetRecord]:
    """The datasets of a manifest file: one dataset manifest (``bastion.data``), or a
    mapping of them (the ``dataset manifest`` `bastion attest` writes: assessed, train_manifest,
    test_manifest)."""
    doc = read_json(path, "dataset manifest")
    if isinstance(doc, dict) and "findings" in doc and "threat_model" in doc:
        raise ConfigError(f"{path} is an assessment report: pass it with --report")
    one = dataset_record(doc, "given", path)
    if one is not None:
        return [one]
    found = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            rec = dataset_record(value, key.removesuffix("_manifest"), path)
            if rec is not None:
                found.append(rec)
    if not found:
        raise ConfigError(
            f"{path}: not a dataset manifest (needs name, sha256 and n, or a mapping of such "
            "manifests as `bastion attest` writes)"
        )
    return found


def merge_datasets(datasets: list[DatasetRecord]) -> list[DatasetRecord]:
    """One record per content hash, with every role it played."""
    out: dict[str, DatasetRecord] = {}
    for d in datasets:
        have = out.get(d.sha256)
        if have is None:
            out[d.sha256] = d
            continue
        have.roles += [r for r in d.roles if r not in have.roles]
        have.manifest_file = have.manifest_file or d.manifest_file
        have.classes = have.classes or d.classes
        have.inputs = have.inputs or d.inputs
    return list(out.values())


def fmt_number(value: float) -> str:
    """A measured number as text, to 6 significant digits (float32 noise dropped)."""
    if math.isfinite(value):
        return f"{value:.6g}"
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def budget_text(finding: Finding) -> str:
    return ", ".join(f"{k}={finding.params[k]}" for k in sorted(finding.params)) or "defaults"


def is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def add_ml_fields(
    doc: dict[str, Any],
    spec: dict[str, Any],
    provenance: dict[str, Any],
    datasets: list[DatasetRecord],
    report: Report | None,
) -> None:
    """Add the model's ``modelCard`` and each dataset's ``data`` (CycloneDX 1.6) to the
    library's JSON output."""
    by_ref = {c["bom-ref"]: c for c in doc.get("components", [])}
    for d in datasets:
        contents = [
            {"name": k, "value": str(v)}
            for k, v in (
                ("n", d.n),
                ("shape", d.shape),
                ("num_classes", d.num_classes),
                ("classes", ", ".join(d.classes) if d.classes else None),
                ("inputs", d.inputs or None),
            )
            if v is not None
        ]
        entry: dict[str, Any] = {"type": "dataset", "name": d.name}
        if d.source:
            entry["description"] = f"{d.split or 'split'} from {d.source}"
        if contents:
            entry["contents"] = {"properties": contents}
        by_ref[d.ref]["data"] = [entry]
    by_ref[MODEL_REF]["modelCard"] = model_card(spec, provenance, datasets, report)


def model_card(
    spec: dict[str, Any],
    provenance: dict[str, Any],
    datasets: list[DatasetRecord],
    report: Report | None,
) -> dict[str, Any]:
    """The CycloneDX ``modelCard``: what the spec, provenance, datasets and report say."""
    params = spec.get("params") if isinstance(spec.get("params"), dict) else {}
    caps = report.model.capabilities if report is not None else {}
    num_classes = params.get("num_classes") or caps.get("num_classes")
    train = next((d for d in datasets if "train" in d.roles), None)
    classes = (train.classes if train else []) or next((d.classes for d in datasets), [])
    mp: dict[str, Any] = {}
    if train is not None and train.classes:
        mp["approach"] = {"type": "supervised"}
    if num_classes or classes:
        mp["task"] = "classification"
    if spec.get("name"):
        mp["architectureFamily"] = str(spec["name"])
        shown = {k: v for k, v in params.items() if k not in ("num_classes",)}
        mp["modelArchitecture"] = (
            f"{spec['name']}({', '.join(f'{k}={v}' for k, v in shown.items())})"
        )
    elif report is not None:
        mp["architectureFamily"] = report.model.form
    if datasets:
        mp["datasets"] = [{"ref": d.ref} for d in datasets]
    inputs = next((d.inputs for d in datasets if d.inputs), "")
    if not inputs and params.get("input_shape"):
        inputs = f"input {tuple(params['input_shape'])}"
    if inputs:
        mp["inputs"] = [{"format": inputs}]
    if num_classes or classes:
        k = num_classes or len(classes)
        names = f": {', '.join(classes)}" if classes else ""
        what = "one label" if caps.get("output") == "labels" else "scores"
        mp["outputs"] = [{"format": f"{what} over {k} classes{names}"}]
    card: dict[str, Any] = {}
    if mp:
        card["modelParameters"] = mp
    metrics = performance_metrics(provenance, report)
    if metrics:
        card["quantitativeAnalysis"] = {"performanceMetrics": metrics}
    limits = [f"{w.check}: {w.message}" for w in report.warnings] if report else []
    if limits:
        card["considerations"] = {"technicalLimitations": limits}
    return card


def performance_metrics(provenance: dict[str, Any], report: Report | None) -> list[dict[str, str]]:
    """Clean test accuracy from training, clean and robust accuracies from the report's
    findings, each sliced by its probe, attack and budget."""
    out = []
    acc = provenance.get("test_accuracy")
    if isinstance(acc, (int, float)):
        split = provenance.get("test_manifest", {}) or {}
        n = split.get("n") if isinstance(split, dict) else None
        out.append(
            {
                "type": "accuracy",
                "value": fmt_number(float(acc)),
                "slice": f"clean test split (training run{f', n={n}' if n else ''})",
            }
        )
    for f in report.findings if report else []:
        for name in ACCURACY_METRICS:
            if name in f.metrics:
                out.append(
                    {
                        "type": name.replace("_", " "),
                        "value": fmt_number(f.metrics[name]),
                        "slice": f"{f.probe}/{f.attack} ({budget_text(f)})",
                    }
                )
    return out
