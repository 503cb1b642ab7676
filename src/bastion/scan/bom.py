"""A CycloneDX 1.6 ML-BOM for a model, built with cyclonedx-python-lib.

What it records, from files only (the model is never loaded, nothing is unpickled):

- the model as a ``machine-learning-model`` component; each of its files (every file of a
  model directory, or the one model file) as a nested ``file`` component with its SHA-256
  and size; a ``modelCard`` with what is known: the task (classification), the learning
  approach, the architecture (``spec.json``), the input spec, the classes and the datasets,
  and the assessment's clean and robust accuracies as performance metrics (each with its
  attack, norm, ε and n);
- the datasets (the model's ``provenance.json`` training and test manifests, the report's
  assessed split, and any dataset manifest given) as ``data`` components whose hash is the
  manifest's content SHA-256 (over the float32 inputs and int64 labels), with the manifest
  file as an external reference with its own hash;
- the assessment's findings as ``vulnerabilities`` affecting the model, rated from their
  0–10 severity, and the report as an external reference with its hash;
- the release attestation (``bastion attest``) and the model's signature (``bastion attest
  sign``) as external references with their hashes. They are referenced, not verified
  here: run `bastion attest verify` and `bastion attest verify-model` for that.

cyclonedx-python-lib (v11) has no model for ``modelCard`` nor a data component's ``data``:
both are added to the library's JSON output as CycloneDX 1.6 defines them
(:mod:`bastion.scan.bom_card`), and the whole
document is checked against the 1.6 JSON schema by :func:`validate_bom`.
Reference: CycloneDX 1.6, https://cyclonedx.org/docs/1.6/json/ (machine-learning-model,
modelCard, componentData, vulnerabilities).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from bastion import __version__
from bastion.assess.schema import Finding, Report
from bastion.errors import ConfigError
from bastion.models.loaded import file_sha256
from bastion.scan.bom_card import (
    MODEL_REF,
    DatasetRecord,
    add_ml_fields,
    budget_text,
    dataset_record,
    fmt_number,
    manifest_datasets,
    merge_datasets,
    read_json,
)
from bastion.scan.signing import default_signature_path

SKIPPED_DIRS = (".git",)
# Bastion's 0–10 finding severity on the CVSS v3 qualitative bands
SEVERITY_BANDS = ((9.0, "critical"), (7.0, "high"), (4.0, "medium"), (0.1, "low"))
SEVERITY_NOTE = (
    "Bastion finding severity 0-10 (measured by the probe under the report's threat model); "
    "qualitative band as CVSS v3: >=9 critical, >=7 high, >=4 medium, >0 low, 0 none"
)
ROLE_BY_NAME = {
    "model.safetensors": "weights",
    "model.pt": "weights",
    "model.pth": "weights",
    "spec.json": "spec",
    "provenance.json": "provenance",
    "guard.json": "guard",
}


@dataclass(frozen=True)
class ModelFile:
    """One file of the model: its path relative to the model, SHA-256, size and role."""

    name: str
    sha256: str
    size: int
    role: str = ""


@dataclass(frozen=True)
class AttestationInfo:
    """What the BOM records of a release attestation (read, not verified)."""

    key_ids: tuple[str, ...]
    gate_passed: bool | None


@dataclass(frozen=True)
class MlBom:
    """The BOM as JSON text plus what it holds (for the CLI's summary line)."""

    text: str
    files: int
    datasets: int
    vulnerabilities: int
    references: int


def list_model_files(model: Path, *, exclude: tuple[Path, ...] = ()) -> list[ModelFile]:
    """Every regular file of ``model`` (a directory, walked in name order; ``.git`` and the
    paths in ``exclude`` left out), or the model file itself, hashed with SHA-256."""
    if not model.exists():
        raise ConfigError(f"model not found: {model}")
    if model.is_file():
        return [ModelFile(model.name, file_sha256(model), model.stat().st_size)]
    skip = {p.resolve() for p in exclude}
    files = []
    for path in sorted(model.rglob("*")):
        rel = path.relative_to(model)
        if rel.parts[0] in SKIPPED_DIRS or path.resolve() in skip:
            continue
        if path.is_symlink():
            raise ConfigError(
                f"{path} is a symbolic link: replace it by the file it names, so the BOM "
                "hashes what is shipped"
            )
        if path.is_file():
            name = rel.as_posix()
            files.append(
                ModelFile(name, file_sha256(path), path.stat().st_size, ROLE_BY_NAME.get(name, ""))
            )
    if not files:
        raise ConfigError(f"{model}: the directory holds no files")
    return files


def check_report_matches(report: Report, files: list[ModelFile]) -> None:
    """Refuse a report that assessed other model files than these."""
    hashes = {f.sha256 for f in files}
    recorded = [a for a in report.model.artifacts if a.get("role") != "source"]
    if recorded:
        other = [a for a in recorded if a.get("sha256") not in hashes]
        if other:
            name = Path(other[0].get("path", "?")).name
            raise ConfigError(
                f"the report assessed other model files ({name}: sha256 "
                f"{str(other[0].get('sha256'))[:16]}… is not a file of this model): pass the "
                "report of this model"
            )
    elif report.model.sha256 not in hashes:
        raise ConfigError(
            f"the report's model {report.model.name} (sha256 {report.model.sha256[:16]}…) is "
            "not a file of this model: pass the report of this model"
        )


def read_attestation(path: Path, files: list[ModelFile]) -> AttestationInfo:
    """The signer and gate decision of a `bastion attest` envelope (not verified here),
    refused when one of its model subjects (other than an entry point's source file, which
    lives outside the model) is not a file of this model."""
    env = read_json(path, "attestation")
    try:
        statement = json.loads(base64.b64decode(env["payload"], validate=True))
    except (KeyError, TypeError, binascii.Error, ValueError):
        raise ConfigError(f"{path}: not a DSSE attestation (bastion attest writes one)") from None
    if not isinstance(statement, dict):
        raise ConfigError(f"{path}: the attestation's statement is not a JSON object")
    predicate = statement.get("predicate") if isinstance(statement.get("predicate"), dict) else {}
    model = predicate.get("model") if isinstance(predicate.get("model"), dict) else {}
    roles = {
        a.get("subject"): a.get("role") for a in model.get("artifacts") or [] if isinstance(a, dict)
    }
    hashes = {f.sha256 for f in files}
    for subject in statement.get("subject") or []:
        if not isinstance(subject, dict):
            continue
        name = str(subject.get("name", ""))
        digest = (
            subject.get("digest", {}).get("sha256")
            if isinstance(subject.get("digest"), dict)
            else None
        )
        if name.startswith("model/") and roles.get(name) != "source" and digest not in hashes:
            raise ConfigError(
                f"the attestation {path} covers other model files ({name}): pass the "
                "attestation of this model"
            )
    keyids = [str(s.get("keyid", "")) for s in env.get("signatures") or [] if isinstance(s, dict)]
    gate = predicate.get("gate") if isinstance(predicate.get("gate"), dict) else {}
    passed = gate.get("passed")
    return AttestationInfo(tuple(keyids), passed if isinstance(passed, bool) else None)


def severity_band(severity: float) -> str:
    for floor, band in SEVERITY_BANDS:
        if severity >= floor:
            return band
    return "none"


def build_bom(
    model: str | Path,
    *,
    report: Report | None = None,
    report_path: Path | None = None,
    attestation: Path | None = None,
    manifests: tuple[Path, ...] = (),
    signature: Path | None = None,
    output: Path | None = None,
) -> MlBom:
    """Build the ML-BOM of ``model`` (see the module docstring). ``signature`` defaults to
    the model's ``model.sig`` / ``FILE.sig`` when present; paths in external references are
    written relative to ``output``'s folder (or the current directory)."""
    from cyclonedx.model import ExternalReference, ExternalReferenceType, Property, XsUri
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.dependency import Dependency
    from cyclonedx.model.tool import ToolRepository
    from cyclonedx.output.json import JsonV1Dot6

    model = Path(model)
    if signature is None:
        cand = default_signature_path(model)
        signature = cand if cand.is_file() else None
    elif not signature.is_file():
        raise ConfigError(f"signature not found: {signature}")
    exclude = tuple(p for p in (signature, output) if p is not None)
    files = list_model_files(model, exclude=exclude)
    base = (output.parent if output is not None else Path.cwd()).resolve()
    if report is not None:
        check_report_matches(report, files)
        roles = {a.get("sha256"): a.get("role", "") for a in report.model.artifacts}
        files = [
            ModelFile(f.name, f.sha256, f.size, f.role or roles.get(f.sha256, "")) for f in files
        ]

    def ref(kind: ExternalReferenceType, path: Path, comment: str) -> ExternalReference:
        where = os.path.relpath(path.resolve(), base)
        return ExternalReference(type=kind, url=XsUri(where), comment=comment, hashes=[_sha(path)])

    provenance: dict[str, Any] = {}
    spec: dict[str, Any] = {}
    if model.is_dir() and (model / "provenance.json").is_file():
        doc = read_json(model / "provenance.json", "provenance")
        provenance = doc if isinstance(doc, dict) else {}
    if model.is_dir() and (model / "spec.json").is_file():
        doc = read_json(model / "spec.json", "model spec")
        spec = doc if isinstance(doc, dict) else {}
    datasets: list[DatasetRecord] = []
    for key in ("train_manifest", "test_manifest"):
        rec = dataset_record(provenance.get(key), key.removesuffix("_manifest"), None)
        if rec is not None:
            datasets.append(rec)
    if report is not None:
        rec = dataset_record(report.dataset.model_dump(mode="json"), "assessed", None)
        if rec is not None:
            datasets.append(rec)
    for path in manifests:
        datasets.extend(manifest_datasets(path))
    datasets = merge_datasets(datasets)

    model_refs: list[ExternalReference] = []
    if report is not None and report_path is not None:
        model_refs.append(
            ref(
                ExternalReferenceType.DYNAMIC_ANALYSIS_REPORT,
                report_path,
                "Bastion assessment report (report.json): attacks run on the model",
            )
        )
    props = [Property(name="bastion:model.form", value=_form(model, spec, report))]
    if attestation is not None:
        info = read_attestation(attestation, files)
        model_refs.append(
            ref(
                ExternalReferenceType.ATTESTATION,
                attestation,
                "Bastion release attestation (in-toto statement in a DSSE envelope, Ed25519); "
                "verify with `bastion attest verify`",
            )
        )
        if info.gate_passed is not None:
            decision = "PASS" if info.gate_passed else "FAIL"
            props.append(Property(name="bastion:attestation.gate", value=decision))
        for kid in info.key_ids:
            props.append(Property(name="bastion:attestation.keyid", value=kid))
    if signature is not None:
        model_refs.append(
            ref(
                ExternalReferenceType.DIGITAL_SIGNATURE,
                signature,
                "OpenSSF model-signing signature (Sigstore bundle); verify with `bastion "
                "attest verify-model`",
            )
        )
    if report is not None:
        props += [
            Property(name="bastion:assessment.score", value=fmt_number(report.score)),
            Property(name="bastion:assessment.created", value=report.created.isoformat()),
            Property(name="bastion:assessment.access", value=report.threat_model.access),
        ]
        props += [
            Property(name="bastion:assessment.skipped", value=f"{s.probe}: {s.reason}")
            for s in report.skipped
        ]
    file_components = [
        Component(
            type=ComponentType.FILE,
            name=f.name,
            bom_ref=f"file-{i}",
            hashes=[_hash(f.sha256)],
            properties=[Property(name="bastion:file.size", value=str(f.size))]
            + ([Property(name="bastion:file.role", value=f.role)] if f.role else []),
        )
        for i, f in enumerate(files)
    ]
    model_component = Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        name=model.name,
        bom_ref=MODEL_REF,
        hashes=[_hash(files[0].sha256)] if model.is_file() else None,
        components=file_components if model.is_dir() else None,
        external_references=model_refs,
        properties=props,
    )
    data_components = [
        Component(
            type=ComponentType.DATA,
            name=f"{d.name} ({d.split})" if d.split else d.name,
            bom_ref=d.ref,
            hashes=[_hash(d.sha256)],
            external_references=(
                [
                    ref(
                        ExternalReferenceType.EVIDENCE,
                        d.manifest_file,
                        "dataset provenance manifest",
                    )
                ]
                if d.manifest_file is not None
                else None
            ),
            properties=[Property(name="bastion:dataset.role", value=r) for r in d.roles]
            + [
                Property(
                    name="bastion:dataset.sha256-over",
                    value="the float32 inputs and int64 labels, in order",
                )
            ],
        )
        for d in datasets
    ]
    vulns = [_vulnerability(i, f) for i, f in enumerate(report.findings if report else [])]
    tool = Component(type=ComponentType.APPLICATION, name="bastion", version=__version__)
    bom = Bom(components=[model_component, *data_components], vulnerabilities=vulns)
    bom.metadata.tools = ToolRepository(components=[tool])
    bom.dependencies.add(
        Dependency(model_component.bom_ref, [Dependency(c.bom_ref) for c in data_components])
    )
    for c in data_components:
        bom.dependencies.add(Dependency(c.bom_ref))
    doc = json.loads(JsonV1Dot6(bom).output_as_string())
    add_ml_fields(doc, spec, provenance, datasets, report)
    text = json.dumps(doc, indent=2) + "\n"
    return MlBom(text, len(files), len(datasets), len(vulns), len(model_refs))


def _sha(path: Path) -> Any:
    return _hash(file_sha256(path))


def _hash(hexdigest: str) -> Any:
    from cyclonedx.model import HashAlgorithm, HashType

    return HashType(alg=HashAlgorithm.SHA_256, content=hexdigest)


def _form(model: Path, spec: dict[str, Any], report: Report | None) -> str:
    if report is not None:
        return report.model.form
    if spec:
        return "model-dir"
    return model.suffix.lstrip(".") or "file"


def _vulnerability(i: int, finding: Finding) -> Any:
    from cyclonedx.model import Property
    from cyclonedx.model.vulnerability import (
        BomTarget,
        Vulnerability,
        VulnerabilityRating,
        VulnerabilityScoreSource,
        VulnerabilitySeverity,
        VulnerabilitySource,
    )

    source = VulnerabilitySource(name="Bastion assessment")
    score = round(finding.severity, 2)
    metrics = ", ".join(f"{k}={fmt_number(v)}" for k, v in sorted(finding.metrics.items()))
    return Vulnerability(
        bom_ref=f"finding-{i}",
        id=f"BASTION-{finding.probe.upper()}-{i + 1}",
        source=source,
        description=f"{finding.probe} probe, {finding.attack} attack ({budget_text(finding)}): "
        f"{metrics or 'no metrics'}",
        detail="; ".join(finding.notes) or None,
        ratings=[
            VulnerabilityRating(
                source=source,
                score=Decimal(str(score)),
                severity=VulnerabilitySeverity(severity_band(score)),
                method=VulnerabilityScoreSource.OTHER,
                justification=SEVERITY_NOTE,
            )
        ],
        affects=[BomTarget(ref=MODEL_REF)],
        properties=[
            Property(name=f"bastion:metric:{k}", value=fmt_number(v))
            for k, v in sorted(finding.metrics.items())
        ]
        + [
            Property(name=f"bastion:param:{k}", value=str(finding.params[k]))
            for k in sorted(finding.params)
        ],
    )


def validate_bom(text: str) -> list[str]:
    """Schema errors of ``text`` against CycloneDX 1.6 JSON (empty when valid), with the
    library's strict JSON validator. Raises ConfigError when its optional dependency
    (``cyclonedx-python-lib[json-validation]``) is missing."""
    from cyclonedx.exception import MissingOptionalDependencyException
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    try:
        errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text, all_errors=True)
    except MissingOptionalDependencyException:
        raise ConfigError(
            "validating a BOM needs `pip install 'cyclonedx-python-lib[json-validation]'`"
        ) from None
    return [str(getattr(e, "data", e)).splitlines()[0] for e in errors or []]
