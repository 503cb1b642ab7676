"""Signed release attestations: an in-toto Statement v1 in a DSSE envelope (Ed25519).

Subjects are the files the assessed model was loaded from, whatever its form (the report's
``model.artifacts``: weights, spec, the ONNX / TorchScript / skops / XGBoost / LightGBM file,
the entry point's source file; a model directory's provenance.json), the assessment report,
the dataset manifest, and the register and clean-accuracy evidence when the gate used them,
each with its SHA-256. The predicate holds the report summary, the model record, the policy
and the gate decision. :func:`verify_attestation` checks the signature and re-hashes every
subject on disk, naming each file that is missing or changed.

Which files: by default the report alone says (its artifacts at their recorded paths;
relative paths are read from the current directory, as `bastion assess` ran). Given a
:class:`ModelSource` (the ``--model``/``--entry-point``/``--weights`` options of `bastion
assess`), the model is loaded the way the assessment loaded it and its files are the
subjects. Either way, attesting refuses when a model file does not hash to what the report
recorded: an assessed model and an attested one always match.

References: in-toto Attestation Framework, Statement v1
(https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md); DSSE v1
(https://github.com/secure-systems-lab/dsse/blob/master/protocol.md).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from bastion import __version__
from bastion.assess.schema import Report
from bastion.errors import ConfigError, IntegrityError
from bastion.gate.evaluate import GateDecision
from bastion.gate.keys import SigningKey, key_id
from bastion.gate.policy import Policy
from bastion.models.loaded import Artifact, artifacts_sha256
from bastion.risk.evidence import file_sha256
from bastion.risk.register import RiskRegister

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://bastion.dev/attestation/release-gate/v1"
MODEL_FILES = ("model.safetensors", "model.pt", "model.pth", "spec.json", "provenance.json")
MODEL_PREFIX = "model/"
REPORT_SUBJECT = "report/report.json"
DATASET_SUBJECT = "dataset/manifest.json"
REGISTER_SUBJECT = "risk/register.json"
EVIDENCE_SUBJECTS = {
    "comparison": "evidence/comparison.json",
    "baseline": "evidence/baseline-report.json",
    "provenance": "evidence/provenance.json",
}
# forms whose model is not a file: there is nothing to attest but the report
FILELESS_FORMS = {
    "http": "a remote endpoint",
    "module": "an in-memory module",
    "callable": "a Python function",
}


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: ``DSSEv1 len(type) type len(body) body``."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _model_dir(report: Report, model: ModelFiles | None = None) -> Path | None:
    """The assessed model's directory, when it is one (for its provenance.json)."""
    for cand in (model.directory if model else None, report.model.path):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


def write_dataset_manifest(report: Report, path: Path, model_dir: Path | None = None) -> Path:
    """The dataset manifest the attestation covers: the report's dataset record plus the
    training manifest from the model's provenance when there is one."""
    doc: dict[str, Any] = {"assessed": report.dataset.model_dump(mode="json")}
    prov = model_dir / "provenance.json" if model_dir else None
    if prov and prov.is_file():
        try:
            p = json.loads(prov.read_text())
        except json.JSONDecodeError:
            p = {}
        for key in ("train_manifest", "test_manifest"):
            if isinstance(p.get(key), dict):
                doc[key] = p[key]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def report_summary(report: Report) -> dict[str, Any]:
    """What the predicate keeps of the report: identity, score, findings' numbers, warnings."""
    return {
        "model": report.model.model_dump(mode="json", include={"name", "sha256", "form"}),
        "dataset": report.dataset.model_dump(
            mode="json", include={"name", "sha256", "n", "split", "train_sha256"}
        ),
        "threat_model": report.threat_model.model_dump(mode="json"),
        "score": report.score,
        "created": report.created.isoformat(),
        "findings": [
            f.model_dump(mode="json", include={"probe", "attack", "params", "metrics", "severity"})
            for f in report.findings
        ],
        "warnings": [w.model_dump(mode="json") for w in report.warnings],
        "skipped": [s.model_dump(mode="json") for s in report.skipped],
    }


def _json_safe(obj: Any) -> Any:
    """Replace non-finite floats (not valid JSON) by strings."""
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


# ------------------------------------------------------------------------- model files
@dataclass(frozen=True)
class ModelSource:
    """Where the model is, given the way `bastion assess` was given it: ``path`` (any form),
    ``entry_point`` with ``weights``, ``onnx_mode`` and the skops types to ``trusted``."""

    path: str | Path | None = None
    entry_point: str | None = None
    weights: str | Path | None = None
    onnx_mode: str = "auto"
    trusted: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelFile:
    """One model file the attestation covers."""

    subject: str
    path: Path
    role: str
    sha256: str
    recorded: str  # the path the report recorded (or the loader returned)


@dataclass
class ModelFiles:
    """The model files of the assessed model and how they were found."""

    files: list[ModelFile]
    how: str  # report | loaded | model-dir
    directory: Path | None = None


def model_files(model_dir: Path) -> list[Path]:
    """The files of a model directory (reports written before artifacts were recorded)."""
    if not model_dir.is_dir():
        raise ConfigError(f"model directory not found: {model_dir}")
    files = [model_dir / n for n in MODEL_FILES if (model_dir / n).is_file()]
    if not any(f.name.startswith("model.") for f in files):
        raise ConfigError(f"{model_dir}: no weight file ({', '.join(MODEL_FILES[:3])})")
    return files


def _subject_names(items: list[tuple[str, str]]) -> list[str]:
    """``model/<file name>``, or ``model/<role>/<file name>`` where two files share a name."""
    names = [Path(p).name for p, _ in items]
    return [
        f"{MODEL_PREFIX}{n}" if names.count(n) == 1 else f"{MODEL_PREFIX}{role}/{n}"
        for n, (_, role) in zip(names, items, strict=True)
    ]


def _recorded_artifacts(report: Report, report_path: Path) -> list[Artifact]:
    try:
        return [Artifact.model_validate(a) for a in report.model.artifacts]
    except ValidationError:
        raise ConfigError(
            f"{report_path}: model.artifacts is malformed (each needs path, sha256 and role)"
        ) from None


def _identity(report: Report, artifacts: list[Artifact]) -> str:
    """The model SHA-256 these artifacts give, computed as the loader computes it."""
    if report.model.form == "model-dir":
        weights = [a for a in artifacts if a.role == "weights"]
        return weights[0].sha256 if len(weights) == 1 else artifacts_sha256(artifacts)
    return artifacts_sha256(artifacts)


def _mismatch(report_path: Path, role: str, path: Path, recorded: str, actual: str) -> ConfigError:
    return ConfigError(
        f"{report_path} assessed the {role} file with sha256 {recorded[:12]}…, but {path} has "
        f"sha256 {actual[:12]}…: attest the model the report is about (or assess this one)"
    )


def _with_provenance(files: list[ModelFile], directory: Path | None) -> list[ModelFile]:
    """The provenance.json of the directory the model was loaded from (a model directory,
    or a hardened entry-point child) joins its files: it names the training data."""
    prov = directory / "provenance.json" if directory else None
    if prov is None or not prov.is_file() or any(f.path == prov.resolve() for f in files):
        return files
    items = [(str(f.path), f.role) for f in files] + [(str(prov), "provenance")]
    names = _subject_names(items)
    out = [
        ModelFile(n, f.path, f.role, f.sha256, f.recorded)
        for n, f in zip(names, files, strict=False)
    ]
    return [*out, ModelFile(names[-1], prov.resolve(), "provenance", file_sha256(prov), str(prov))]


def _from_report(report: Report, report_path: Path) -> ModelFiles:
    """The report's artifacts at their recorded paths, each re-hashed."""
    artifacts = _recorded_artifacts(report, report_path)
    if _identity(report, artifacts) != report.model.sha256:
        raise ConfigError(
            f"{report_path}: model.sha256 {report.model.sha256[:12]}… is not the hash of its "
            "recorded model.artifacts: the report was edited; assess the model again"
        )
    files = []
    names = _subject_names([(a.path, a.role) for a in artifacts])
    for name, a in zip(names, artifacts, strict=True):
        path = Path(a.path)
        where = path if path.is_absolute() else Path.cwd() / path
        if not where.is_file():
            raise ConfigError(
                f"the {a.role} file {a.path} that {report_path} records is not at {where} "
                "(relative paths are read from the current directory, as `bastion assess` "
                "ran): run attest from there, or pass --model (and --entry-point/--weights) "
                "as for assess"
            )
        actual = file_sha256(where)
        if actual != a.sha256:
            raise _mismatch(report_path, a.role, where, a.sha256, actual)
        files.append(ModelFile(name, where.resolve(), a.role, actual, a.path))
    directory = _model_dir(report)
    return ModelFiles(_with_provenance(files, directory), "report", directory)


def _from_loaded(report: Report, report_path: Path, source: ModelSource) -> ModelFiles:
    """Load the model as `bastion assess` did and compare its files with the report's."""
    from bastion.models.io import load_model

    loaded = load_model(
        source.path,
        entry_point=source.entry_point,
        weights=source.weights,
        onnx_mode=source.onnx_mode,  # type: ignore[arg-type]
        trusted=list(source.trusted) or None,
    )
    recorded = {(a.role, Path(a.path).name): a for a in _recorded_artifacts(report, report_path)}
    for a in loaded.artifacts:
        want = recorded.get((a.role, Path(a.path).name))
        if want is not None and want.sha256 != a.sha256:
            raise _mismatch(report_path, a.role, Path(a.path), want.sha256, a.sha256)
    if loaded.sha256 != report.model.sha256:
        files = ", ".join(f"{a.path} ({a.role})" for a in loaded.artifacts) or "no files"
        raise ConfigError(
            f"{report_path} assessed a model with sha256 {report.model.sha256[:12]}…, but the "
            f"{loaded.form} model loaded from {files} has sha256 {loaded.sha256[:12]}…: attest "
            "the model the report is about"
        )
    if not loaded.artifacts:
        raise ConfigError(f"the {loaded.form} model was not loaded from files: nothing to attest")
    names = _subject_names([(a.path, a.role) for a in loaded.artifacts])
    files = [
        ModelFile(n, Path(a.path).resolve(), a.role, a.sha256, a.path)
        for n, a in zip(names, loaded.artifacts, strict=True)
    ]
    directory = loaded.path if loaded.path is not None and loaded.path.is_dir() else None
    return ModelFiles(_with_provenance(files, directory), "loaded", directory)


def _from_model_dir(report: Report, report_path: Path, model_dir: Path) -> ModelFiles:
    """A report without recorded artifacts (older Bastion): the model directory's files."""
    paths = model_files(model_dir)
    weights = next(p for p in paths if p.name.startswith("model."))
    weights_sha = file_sha256(weights)
    if report.model.sha256 != weights_sha:
        raise ConfigError(
            f"{report_path} assessed a model with sha256 {report.model.sha256[:12]}…, but "
            f"{weights} has sha256 {weights_sha[:12]}…: attest the model the report is about"
        )
    role = {"spec.json": "spec", "provenance.json": "provenance"}
    files = [
        ModelFile(
            f"{MODEL_PREFIX}{p.name}",
            p.resolve(),
            role.get(p.name, "weights"),
            file_sha256(p),
            str(p),
        )
        for p in paths
    ]
    return ModelFiles(files, "model-dir", model_dir)


def resolve_model_files(
    report: Report, report_path: Path, source: ModelSource | None = None
) -> ModelFiles:
    """The files of the model ``report`` is about, checked against what it recorded; raises
    ConfigError (one line, naming the file) when one is missing or differs."""
    form = report.model.form
    if source is not None and (source.path is not None or source.entry_point is not None):
        if form in FILELESS_FORMS:
            raise ConfigError(
                f"{report_path} is about {FILELESS_FORMS[form]} ({form}), not model files: "
                "there is no model to attest"
            )
        return _from_loaded(report, report_path, source)
    if report.model.artifacts:
        return _from_report(report, report_path)
    if form in FILELESS_FORMS:
        raise ConfigError(
            f"{report_path} is about {FILELESS_FORMS[form]} ({form}), not model files: there is "
            "no model to attest; save the model to a file (a model directory, ONNX, skops, …) "
            "and assess that"
        )
    if form != "model-dir":
        raise ConfigError(
            f"{report_path} records no model artifacts for its {form} model: pass --model "
            "(and --entry-point/--weights) as for `bastion assess`"
        )
    if not report.model.path:
        raise ConfigError(f"{report_path} does not record the model path: pass --model DIR")
    return _from_model_dir(report, report_path, Path(report.model.path))


def build_statement(
    *,
    report: Report,
    report_path: Path,
    policy: Policy,
    decision: GateDecision,
    dataset_manifest: Path,
    out_dir: Path,
    model: ModelFiles,
    register: RiskRegister | None = None,
    register_path: Path | None = None,
) -> dict[str, Any]:
    """The in-toto Statement: subjects with SHA-256 digests and the release-gate predicate."""
    files: dict[str, Path] = {f.subject: f.path for f in model.files}
    files[REPORT_SUBJECT] = report_path
    files[DATASET_SUBJECT] = dataset_manifest
    if register_path is not None:
        files[REGISTER_SUBJECT] = register_path
    drop = decision.clean_accuracy_drop
    if drop is not None and drop.path is not None:
        where = Path(drop.path).resolve()
        if where not in {p.resolve() for p in files.values()}:
            files[EVIDENCE_SUBJECTS[drop.kind]] = where
    subjects = [
        {"name": name, "digest": {"sha256": file_sha256(path)}} for name, path in files.items()
    ]
    predicate: dict[str, Any] = {
        "bastion_version": __version__,
        "created": datetime.now(UTC).isoformat(),
        "report": report_summary(report),
        "model": {
            "name": report.model.name,
            "form": report.model.form,
            "sha256": report.model.sha256,
            "found_by": model.how,
            "artifacts": [
                {"subject": f.subject, "role": f.role, "sha256": f.sha256, "path": f.recorded}
                for f in model.files
            ],
            "notes": report.model.notes,
        },
        "policy": {
            "name": policy.name,
            "source": policy.source,
            "sha256": policy.sha256,
            "rules": policy.config.model_dump(mode="json")["rules"],
        },
        "gate": decision.model_dump(mode="json"),
        "files": {n: os.path.relpath(p.resolve(), out_dir.resolve()) for n, p in files.items()},
    }
    if register is not None:
        predicate["register"] = {
            "system": register.system.name,
            "risks": [{"id": r.id, "status": r.status, **r.derived()} for r in register.risks],
        }
    return _json_safe(
        {
            "_type": STATEMENT_TYPE,
            "subject": subjects,
            "predicateType": PREDICATE_TYPE,
            "predicate": predicate,
        }
    )


def sign_statement(statement: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """Wrap the statement in a DSSE envelope signed with ``key``."""
    payload = canonical_json(statement)
    sig = key.private.sign(pae(PAYLOAD_TYPE, payload))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": _b64(payload),
        "signatures": [{"keyid": key.key_id, "sig": _b64(sig)}],
    }


def write_envelope(envelope: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(envelope, indent=2) + "\n")
    return path


SubjectState = Literal["ok", "changed", "missing"]


@dataclass
class SubjectCheck:
    name: str
    path: str
    state: SubjectState
    expected: str
    actual: str | None = None


@dataclass
class Verification:
    """The outcome of :func:`verify_attestation`; ``ok`` when no problem was found."""

    path: Path
    signature_ok: bool = False
    key_id: str | None = None
    subjects: list[SubjectCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    statement: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def gate_passed(self) -> bool | None:
        if not self.statement:
            return None
        return self.statement.get("predicate", {}).get("gate", {}).get("passed")


def read_envelope(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        env = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"attestation not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path}: not a DSSE envelope (invalid JSON: {exc})") from None
    if not isinstance(env, dict) or not {"payloadType", "payload", "signatures"} <= set(env):
        raise IntegrityError(
            f"{path}: not a DSSE envelope (needs payloadType, payload and signatures)"
        )
    return env


def _check_signature(
    env: dict[str, Any], public: Ed25519PublicKey, result: Verification
) -> bytes | None:
    """Verify the DSSE signature; returns the payload bytes (even when the signature fails)."""
    want = key_id(public)
    result.key_id = want
    if env["payloadType"] != PAYLOAD_TYPE:
        result.problems.append(
            f"payloadType is {env['payloadType']!r}, expected {PAYLOAD_TYPE!r}: the envelope was altered"
        )
    try:
        payload = base64.b64decode(env["payload"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        result.problems.append("the statement (payload) is not valid base64: it was altered")
        return None
    sigs = env["signatures"] if isinstance(env["signatures"], list) else []
    ours = [s for s in sigs if isinstance(s, dict) and s.get("keyid") == want]
    if not ours:
        ids = ", ".join(str(s.get("keyid", "?"))[:16] for s in sigs if isinstance(s, dict))
        result.problems.append(
            f"signature: no signature by the given key {want[:16]}… (signed by: {ids or 'nobody'})"
        )
        return payload
    for s in ours:
        try:
            raw = base64.b64decode(s.get("sig", ""), validate=True)
        except (binascii.Error, TypeError, ValueError):
            result.problems.append("signature: the signature is not valid base64: it was altered")
            return payload
        try:
            public.verify(raw, pae(env["payloadType"], payload))
        except InvalidSignature:
            continue
        result.signature_ok = True
        return payload
    result.problems.append(
        "signature: the signature does not match the statement: the statement (payload) or "
        "the signature was altered after signing"
    )
    return payload


def verify_attestation(
    path: str | Path,
    public: Ed25519PublicKey,
    *,
    overrides: dict[str, Path] | None = None,
    require_pass: bool = False,
) -> Verification:
    """Check the signature and re-hash every subject; collect every problem found.

    ``overrides`` maps a subject name (``model/bc.pt``, ``report/report.json``,
    ``dataset/manifest.json``) to a file, or ``model/`` to the directory now holding the
    model files (found there by file name), for artifacts moved since signing."""
    path = Path(path)
    result = Verification(path=path)
    env = read_envelope(path)
    payload = _check_signature(env, public, result)
    if payload is None:
        return result
    try:
        statement = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError):
        result.problems.append("the statement (payload) is not JSON: it was altered")
        return result
    result.statement = statement
    if statement.get("_type") != STATEMENT_TYPE:
        result.problems.append(
            f"statement _type is {statement.get('_type')!r}, not {STATEMENT_TYPE}"
        )
    if statement.get("predicateType") != PREDICATE_TYPE:
        result.problems.append(
            f"predicateType is {statement.get('predicateType')!r}, not {PREDICATE_TYPE}"
        )
    files = statement.get("predicate", {}).get("files", {})
    for subj in statement.get("subject", []):
        name = subj.get("name", "?")
        expected = subj.get("digest", {}).get("sha256", "")
        where = _locate(name, files, path.parent, overrides or {})
        if where is None or not where.is_file():
            result.subjects.append(SubjectCheck(name, str(where), "missing", expected))
            result.problems.append(f"{name}: file missing ({where})")
            continue
        actual = file_sha256(where)
        state: SubjectState = "ok" if actual == expected else "changed"
        result.subjects.append(SubjectCheck(name, str(where), state, expected, actual))
        if state == "changed":
            result.problems.append(
                f"{name} changed since signing: sha256 {expected[:12]}… signed, {actual[:12]}… "
                f"on disk ({where})"
            )
    if require_pass and result.gate_passed is False:
        result.problems.append("the recorded gate decision is FAIL (--require-pass)")
    return result


def _locate(
    name: str, files: dict[str, str], base: Path, overrides: dict[str, Path]
) -> Path | None:
    if name in overrides:
        return overrides[name]
    prefix = name.split("/", 1)[0] + "/"
    if prefix in overrides:
        return overrides[prefix] / Path(name).name
    rel = files.get(name)
    return (base / rel).resolve() if rel else None


@dataclass
class Attestation:
    path: Path
    decision: GateDecision
    key_id: str
    subjects: list[dict[str, Any]]


def create_attestation(
    *,
    report_path: Path,
    policy: Policy,
    key: SigningKey,
    out: Path,
    model: ModelSource | None = None,
    model_dir: Path | None = None,
    register_path: Path | None = None,
    dataset_manifest: Path | None = None,
    comparison: Path | None = None,
    baseline: Path | None = None,
) -> Attestation:
    """Check the model files against the report, evaluate the gate, build the statement,
    sign it and write the DSSE envelope. ``model`` (or ``model_dir``, a model directory)
    says where the model is, as for `bastion assess`; without it the report's recorded
    artifacts are the model files."""
    from bastion.gate.evaluate import evaluate
    from bastion.risk.evidence import load_report
    from bastion.risk.register import load_register

    report = load_report(report_path)
    if model is None and model_dir is not None:
        model = ModelSource(path=model_dir)
    files = resolve_model_files(report, report_path, model)
    register = load_register(register_path) if register_path else None
    decision = evaluate(
        policy,
        report,
        register,
        report_sha256=file_sha256(report_path),
        comparison=comparison,
        baseline=baseline,
    )
    if dataset_manifest is None:
        dataset_manifest = write_dataset_manifest(
            report,
            out.parent / f"{out.stem.split('.')[0]}.dataset-manifest.json",
            _model_dir(report, files),
        )
    elif not dataset_manifest.is_file():
        raise ConfigError(f"dataset manifest not found: {dataset_manifest}")
    statement = build_statement(
        report=report,
        report_path=report_path,
        policy=policy,
        decision=decision,
        dataset_manifest=dataset_manifest,
        out_dir=out.parent,
        model=files,
        register=register,
        register_path=register_path,
    )
    write_envelope(sign_statement(statement, key), out)
    return Attestation(out, decision, key.key_id, statement["subject"])
