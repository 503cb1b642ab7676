"""Signed release attestations: an in-toto Statement v1 in a DSSE envelope (Ed25519).

Subjects are the model files (weights, spec, provenance), the assessment report and the
dataset manifest, each with its SHA-256. The predicate holds the report summary, the
policy and the gate decision. :func:`verify_attestation` checks the signature and
re-hashes every subject on disk, naming each file that is missing or changed.

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
from bastion.risk.evidence import file_sha256
from bastion.risk.register import RiskRegister

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://bastion.dev/attestation/release-gate/v1"
MODEL_FILES = ("model.safetensors", "model.pt", "model.pth", "spec.json", "provenance.json")
REPORT_SUBJECT = "report/report.json"
DATASET_SUBJECT = "dataset/manifest.json"


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
        "model": report.model.model_dump(mode="json", include={"name", "sha256"}),
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


def model_files(model_dir: Path) -> list[Path]:
    if not model_dir.is_dir():
        raise ConfigError(f"model directory not found: {model_dir}")
    files = [model_dir / n for n in MODEL_FILES if (model_dir / n).is_file()]
    if not any(f.name.startswith("model.") for f in files):
        raise ConfigError(f"{model_dir}: no weight file ({', '.join(MODEL_FILES[:3])})")
    return files


def build_statement(
    *,
    model_dir: Path,
    report: Report,
    report_path: Path,
    policy: Policy,
    decision: GateDecision,
    dataset_manifest: Path,
    out_dir: Path,
    register: RiskRegister | None = None,
    register_path: Path | None = None,
) -> dict[str, Any]:
    """The in-toto Statement: subjects with SHA-256 digests and the release-gate predicate."""
    files: dict[str, Path] = {f"model/{p.name}": p for p in model_files(model_dir)}
    weights = next(p for n, p in files.items() if n.startswith("model/model."))
    weights_sha = file_sha256(weights)
    if report.model.sha256 != weights_sha:
        raise ConfigError(
            f"{report_path} assessed a model with sha256 {report.model.sha256[:12]}…, but "
            f"{weights} has sha256 {weights_sha[:12]}…: attest the model the report is about"
        )
    files[REPORT_SUBJECT] = report_path
    files[DATASET_SUBJECT] = dataset_manifest
    if register_path is not None:
        files["risk/register.json"] = register_path
    subjects = [
        {"name": name, "digest": {"sha256": file_sha256(path)}} for name, path in files.items()
    ]
    predicate: dict[str, Any] = {
        "bastion_version": __version__,
        "created": datetime.now(UTC).isoformat(),
        "report": report_summary(report),
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
            "_type": STATEMENT_TYPE, "subject": subjects, "predicateType": PREDICATE_TYPE,
            "predicate": predicate,
        }
    )  # fmt: skip


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

    ``overrides`` maps a subject name or prefix (``model/``, ``report/report.json``,
    ``dataset/manifest.json``) to a path, for artifacts moved since signing."""
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
        return overrides[prefix] / name.split("/", 1)[1]
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
    model_dir: Path | None = None,
    register_path: Path | None = None,
    dataset_manifest: Path | None = None,
) -> Attestation:
    """Evaluate the gate, build the statement, sign it and write the DSSE envelope."""
    from bastion.gate.evaluate import evaluate
    from bastion.risk.evidence import load_report
    from bastion.risk.register import load_register

    report = load_report(report_path)
    if model_dir is None:
        if not report.model.path:
            raise ConfigError(f"{report_path} does not record the model path: pass --model DIR")
        model_dir = Path(report.model.path)
    register = load_register(register_path) if register_path else None
    decision = evaluate(policy, report, register, report_sha256=file_sha256(report_path))
    if dataset_manifest is None:
        dataset_manifest = write_dataset_manifest(
            report, out.parent / f"{out.stem.split('.')[0]}.dataset-manifest.json", model_dir
        )
    elif not dataset_manifest.is_file():
        raise ConfigError(f"dataset manifest not found: {dataset_manifest}")
    statement = build_statement(
        model_dir=model_dir, report=report, report_path=report_path, policy=policy,
        decision=decision, dataset_manifest=dataset_manifest, out_dir=out.parent,
        register=register, register_path=register_path,
    )  # fmt: skip
    write_envelope(sign_statement(statement, key), out)
    return Attestation(out, decision, key.key_id, statement["subject"])
