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

from bastion import __version__
from bastion.assess.schema import Report
from bastion.errors import ConfigError, IntegrityError
from bastion.gate.evaluate import GateDecision
from bastion.gate.keys import SigningKey, key_id
from bastion.gate.policy import Policy
from bastion.gate.subjects import (
    ModelFiles,
    ModelSource,
    model_dir_of,
    profile_file,
    resolve_model_files,
)
from bastion.risk.evidence import file_sha256
from bastion.risk.register import RiskRegister

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://bastion.dev/attestation/release-gate/v1"
REPORT_SUBJECT = "report/report.json"
DATASET_SUBJECT = "dataset/manifest.json"
REGISTER_SUBJECT = "risk/register.json"
EVIDENCE_SUBJECTS = {
    "comparison": "evidence/comparison.json",
    "baseline": "evidence/baseline-report.json",
    "provenance": "evidence/provenance.json",
}
# forms whose model is not a file: there is nothing to attest but the report


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: ``DSSEv1 len(type) type len(body) body``."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


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


def llm_summary(report: Report, profile_subject: str) -> dict[str, Any]:
    """An LLM application's identity: the profile replayed and the model that answered
    (the name asked for and the name the endpoint reported in its answers)."""
    caps = report.model.capabilities
    return {
        "profile": {
            "name": report.dataset.manifest.get("name"),
            "sha256": report.dataset.sha256,
            "subject": profile_subject,
        },
        "model": {
            "form": report.model.form,
            "requested": report.model.name,
            "reported": caps.get("reported_model"),
            "reported_all": caps.get("reported_models", []),
            "system_fingerprints": caps.get("system_fingerprints", []),
            "endpoint": report.model.path,
            "requests": caps.get("requests"),
        },
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
    profile = profile_file(report, report_path)
    if profile is not None:
        files[profile[0]] = profile[1]
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
    if profile is not None:
        predicate["llm_application"] = llm_summary(report, profile[0])
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
            model_dir_of(report, files),
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
