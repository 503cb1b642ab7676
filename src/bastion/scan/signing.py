"""Signed models in the OpenSSF model-signing format (the ``model-signing`` package, v1).

A model (one file, or a directory with every file in it) is hashed file by file with
SHA-256; the manifest of ``name → digest`` is wrapped in an in-toto statement (predicate
``https://model_signing/signature/v1.0``), signed in a DSSE envelope and written as a
Sigstore bundle (``application/vnd.dev.sigstore.bundle.v0.3+json``). Signing here is
key-based and offline: an ECDSA private key in PEM (P-256, P-384 or P-521: the curves
model-signing accepts; it has no Ed25519 key signer, so the attestation key of `bastion
keys signing-init` cannot sign models). Anyone with the model-signing CLI can verify the
same signature: ``model_signing verify key MODEL --signature SIG --public_key PUB``.

Where the signature lives: ``DIR/model.sig`` inside a model directory, ``FILE.sig`` beside
a single model file (``--signature`` elsewhere). A signature inside the directory is left
out of the hashed files (its path is recorded, signed, in the manifest's ``ignore_paths``,
with model-signing's default git paths); every other file in the directory is covered, so
a file added after signing (e.g. a guard fitted later) fails verification as an extra file.

Verification is fail-closed: a missing or unreadable signature, a key that does not match,
an altered signature and any changed, missing or extra file all fail, with a one-line
reason. References: OpenSSF Model Signing (https://github.com/sigstore/model-transparency);
in-toto Statement v1; DSSE v1.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from bastion.errors import ConfigError, IntegrityError
from bastion.gate.keys import (
    check_permissions,
    config_dir,
    parse_private_pem,
    parse_public_pem,
    public_pem,
    write_private_key,
)
from bastion.models.loaded import file_sha256

SIGNATURE_NAME = "model.sig"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
ENV_MODEL_KEY = "BASTION_MODEL_SIGNING_KEY"
ENV_MODEL_PUBLIC = "BASTION_MODEL_SIGNING_PUBLIC_KEY"
_KEYGEN_HINT = "create one with `bastion keys model-signing-init`"


class ModelKeyError(ConfigError):
    """A model-signing key is missing, malformed, of an unsupported type or too readable."""


@dataclass(frozen=True)
class ModelKeyFiles:
    """A generated model-signing key pair."""

    private: Path
    public: Path
    key_id: str


@dataclass(frozen=True)
class SignedModel:
    """What :func:`sign_model` wrote: the signature, the files it covers, the key and the
    model digest (SHA-256 over the files' digests in name order, the statement's subject)."""

    model: Path
    signature: Path
    files: tuple[str, ...]
    key_id: str
    digest: str


@dataclass(frozen=True)
class ModelVerification:
    """The outcome of :func:`verify_model`: ``ok`` with the files covered, or the reason."""

    model: Path
    signature: Path
    ok: bool
    reason: str = ""
    files: tuple[str, ...] = ()
    key_id: str = ""
    digest: str = ""

    def line(self) -> str:
        """One line: ``OK …`` or ``FAIL …``."""
        if self.ok:
            return (
                f"OK {self.model}: {len(self.files)} file(s) match the signature "
                f"{self.signature} (key {self.key_id[:16]}…)"
            )
        return f"FAIL {self.model}: {self.reason}"


# ------------------------------------------------------------------------------ keys
def default_model_key_path() -> Path:
    return config_dir() / "model-signing.key"


def model_key_id(public: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 (hex) of the public key's PEM: the key hint model-signing records."""
    return hashlib.sha256(public_pem(public)).hexdigest()


def generate_model_key(
    path: str | Path | None = None, *, curve: str = "P-256", force: bool = False
) -> ModelKeyFiles:
    """Create an ECDSA key pair for model signing: the private key (PKCS#8 PEM, mode 0600)
    at ``path`` (default ``~/.config/bastion/model-signing.key``), the public key beside it
    with the suffix ``.pub``."""
    curves = {v: k for k, v in CURVES.items()}
    if curve not in curves:
        raise ModelKeyError(f"curve {curve!r}: choose one of {', '.join(curves)}")
    path = Path(path) if path else default_model_key_path()
    pub = path.with_suffix(".pub")
    if path == pub:
        raise ModelKeyError(f"{path}: name the private key file with another suffix (.key, .pem)")
    if path.exists() and not force:
        raise ModelKeyError(
            f"{path} already exists: keep it, or pass --force to replace it (models signed "
            "with the old key will no longer verify with the new public key)"
        )
    key = ec.generate_private_key(getattr(ec, curves[curve].upper())())
    write_private_key(path, key)
    pub.write_bytes(public_pem(key.public_key()))
    return ModelKeyFiles(path, pub, model_key_id(key.public_key()))


def _check_curve(key: object, source: str, use: str = "sign models") -> None:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if key.curve.name in CURVES:
            return
        raise ModelKeyError(
            f"{source}: curve {key.curve.name} is not supported by model signing (use "
            f"{', '.join(CURVES.values())}; {_KEYGEN_HINT})"
        )
    kind = type(key).__name__.lstrip("_").replace("PrivateKey", "").replace("PublicKey", "")
    raise ModelKeyError(
        f"{source}: {kind} keys cannot {use}; OpenSSF model signing with keys needs an "
        f"ECDSA key ({', '.join(CURVES.values())}): {_KEYGEN_HINT}"
    )


def _key_path(path: str | Path | None, env: str, default: Path, what: str) -> Path:
    if path is None:
        given = os.environ.get(env, "").strip()
        path = Path(given).expanduser() if given else default
        if not path.is_file():
            where = f"${env} names {path}" if given else f"no {what} at {path}"
            raise ModelKeyError(f"{where}: pass --key FILE ({_KEYGEN_HINT})")
    path = Path(path)
    if not path.is_file():
        raise ModelKeyError(f"{what} not found: {path} ({_KEYGEN_HINT})")
    return path


def load_model_private_key(path: str | Path | None = None) -> Path:
    """Check the private key at ``path`` (or ``$BASTION_MODEL_SIGNING_KEY``, or the default
    file): an unencrypted ECDSA PEM on a supported curve, readable by its owner only.
    Returns its path (model-signing reads the key from the file)."""
    path = _key_path(path, ENV_MODEL_KEY, default_model_key_path(), "model-signing key")
    key = parse_private_pem(path.read_bytes(), str(path), ModelKeyError, _KEYGEN_HINT)
    _check_curve(key, str(path))
    check_permissions(path, ModelKeyError)
    return path


def load_model_public_key(path: str | Path | None = None) -> tuple[Path, str]:
    """Check the public key at ``path`` (or ``$BASTION_MODEL_SIGNING_PUBLIC_KEY``, or the
    ``.pub`` beside the default private key); returns its path and key id."""
    default = default_model_key_path().with_suffix(".pub")
    path = _key_path(path, ENV_MODEL_PUBLIC, default, "model-signing public key")
    key = parse_public_pem(path.read_bytes(), str(path), ModelKeyError)
    _check_curve(key, str(path), "verify model signatures")
    return path, model_key_id(cast(ec.EllipticCurvePublicKey, key))


# -------------------------------------------------------------------------- signatures
def default_signature_path(model: str | Path) -> Path:
    """``DIR/model.sig`` for a model directory, ``FILE.sig`` beside a model file."""
    model = Path(model)
    return model / SIGNATURE_NAME if model.is_dir() else model.with_name(model.name + ".sig")


def _model_path(model: str | Path) -> Path:
    model = Path(model)
    if not model.exists():
        raise ConfigError(f"model not found: {model}")
    if model.is_symlink():
        raise ConfigError(f"{model} is a symbolic link: sign the file or directory it names")
    if not (model.is_dir() or model.is_file()):
        raise ConfigError(f"{model}: not a file or a directory")
    return model


def _inside(model: Path, signature: Path) -> Path | None:
    """The signature's path relative to the model directory, when it lies inside it."""
    if not model.is_dir():
        return None
    try:
        return signature.resolve().relative_to(model.resolve())
    except ValueError:
        return None


def sign_model(
    model: str | Path, key: str | Path | None = None, *, signature: str | Path | None = None
) -> SignedModel:
    """Sign ``model`` (a file or a directory) with the ECDSA private key ``key`` and write
    the model-signing bundle to ``signature`` (default :func:`default_signature_path`)."""
    from model_signing import hashing, signing

    model = _model_path(model)
    key_path = load_model_private_key(key)
    sig = Path(signature) if signature is not None else default_signature_path(model)
    if sig.is_dir():
        raise ConfigError(f"--signature {sig}: is a folder, not a file")
    if model.is_file() and sig.resolve() == model.resolve():
        raise ConfigError(f"--signature {sig}: that is the model file itself")
    sig.parent.mkdir(parents=True, exist_ok=True)
    ignored = [p for p in [_inside(model, sig)] if p is not None]
    config = hashing.Config().set_ignored_paths(paths=ignored, ignore_git_paths=True)
    try:
        signing.Config().use_elliptic_key_signer(private_key=key_path).set_hashing_config(
            config
        ).sign(model, sig)
    except ValueError as exc:  # a symbolic link inside the model, an unsupported key
        raise ConfigError(f"cannot sign {model}: {_first_line(exc)}") from None
    statement = _statement(sig)
    if statement is None:
        raise IntegrityError(f"{sig}: model-signing wrote an unreadable signature")
    return SignedModel(
        model=model,
        signature=sig,
        files=_resource_names(statement, model),
        key_id=_bundle_key_hint(sig),
        digest=_subject_digest(statement),
    )


def verify_model(
    model: str | Path, public_key: str | Path | None = None, *, signature: str | Path | None = None
) -> ModelVerification:
    """Verify ``model`` against its model-signing signature with ``public_key``.

    Never raises for a verification failure: ``ok`` is False with the reason. Raises
    ConfigError only for a usage error (no such model, an unusable public key)."""
    from model_signing import verifying

    model = _model_path(model)
    key_path, key_id = load_model_public_key(public_key)
    sig = Path(signature) if signature is not None else default_signature_path(model)

    def fail(reason: str) -> ModelVerification:
        return ModelVerification(model, sig, ok=False, reason=reason, key_id=key_id)

    if not sig.is_file():
        return fail(f"no signature at {sig}: sign it with `bastion attest sign {model}`")
    statement = _statement(sig)
    if statement is None:
        return fail(f"{sig} is not a model-signing signature bundle (unreadable or altered)")
    hint = _bundle_key_hint(sig)
    if hint and hint != key_id:
        return fail(
            f"signed by another key (key {hint[:16]}…), not by the given public key "
            f"(key {key_id[:16]}…)"
        )
    try:
        verifying.Config().use_elliptic_key_verifier(public_key=key_path).verify(model, sig)
    except InvalidSignature:
        return fail(
            f"the signature in {sig} does not verify with the given public key (signed by "
            "another key, or the signature was altered)"
        )
    except ValueError as exc:
        text = _first_line(exc)
        if text.startswith("Signature mismatch"):
            return fail(_describe_mismatch(model, statement) or text)
        return fail(f"{sig}: {text}")
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        return fail(f"{sig} is not a valid model-signing bundle ({type(exc).__name__}: {exc})")
    return ModelVerification(
        model,
        sig,
        ok=True,
        files=_resource_names(statement, model),
        key_id=key_id,
        digest=_subject_digest(statement),
    )


def require_signature(
    model: str | Path | None,
    public_key: str | Path,
    *,
    signature: str | Path | None = None,
    entry_point: str | None = None,
    weights: str | Path | None = None,
) -> ModelVerification:
    """Refuse (IntegrityError, one line) to use a model whose signature does not verify.

    For `bastion serve --require-signature`: ``model`` is the model file or directory; an
    ``entry_point`` (code the signature does not cover) or ``weights`` outside the signed
    directory are refused too, since the signature would not cover what is loaded."""
    if entry_point:
        raise ConfigError(
            "--require-signature covers a model directory or a model file; an --entry-point "
            "runs code the signature does not cover: serve a signed model directory or file"
        )
    if model is None:
        raise ConfigError("--require-signature needs --model (the signed file or directory)")
    model = Path(model)
    if weights is not None and _inside(model, Path(weights)) is None:
        raise ConfigError(
            f"--require-signature: the weights {weights} are not inside the signed model "
            f"{model}: put them there and sign the directory"
        )
    result = verify_model(model, public_key, signature=signature)
    if not result.ok:
        raise IntegrityError(
            f"refusing to load {model}: its signature does not verify: {result.reason}"
        )
    return result


# ----------------------------------------------------------------------------- helpers
def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:400] if text else type(exc).__name__


def _read_bundle(sig: Path) -> dict[str, Any] | None:
    try:
        bundle = json.loads(sig.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return bundle if isinstance(bundle, dict) else None


def _statement(sig: Path) -> dict[str, Any] | None:
    """The in-toto statement inside the bundle (not yet trusted: verify decides)."""
    bundle = _read_bundle(sig)
    env = bundle.get("dsseEnvelope") if bundle else None
    if not isinstance(env, dict) or not isinstance(env.get("payload"), str):
        return None
    try:
        statement = json.loads(base64.b64decode(env["payload"], validate=True))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(statement, dict) or statement.get("predicateType") != PREDICATE_TYPE:
        return None
    return statement


def _bundle_key_hint(sig: Path) -> str:
    bundle = _read_bundle(sig) or {}
    material = bundle.get("verificationMaterial")
    public = material.get("publicKey") if isinstance(material, dict) else None
    hint = public.get("hint") if isinstance(public, dict) else None
    return hint if isinstance(hint, str) else ""


def _resources(statement: dict[str, Any]) -> dict[str, str]:
    predicate = statement.get("predicate")
    items = predicate.get("resources", []) if isinstance(predicate, dict) else []
    return {
        str(r["name"]): str(r.get("digest", ""))
        for r in items
        if isinstance(r, dict) and "name" in r
    }


def _resource_names(statement: dict[str, Any], model: Path) -> tuple[str, ...]:
    """The signed files' names (a single-file model's one resource, ".", by its name)."""
    return tuple(sorted(model.name if n == "." else n for n in _resources(statement)))


def _subject_digest(statement: dict[str, Any]) -> str:
    subjects = statement.get("subject") or [{}]
    digest = subjects[0].get("digest", {}) if isinstance(subjects[0], dict) else {}
    return str(digest.get("sha256", ""))


def _describe_mismatch(model: Path, statement: dict[str, Any]) -> str:
    """Which files changed, are missing or were added, from the signed resources (read only
    after model-signing has found a mismatch: the wording, not the verdict)."""
    signed = _resources(statement)
    if model.is_file():
        return f"{model.name} changed since it was signed"
    serialization_args = statement.get("predicate", {}).get("serialization", {})
    ignored = [Path(p) for p in serialization_args.get("ignore_paths", [])]
    present: dict[str, Path] = {}
    for path in sorted(model.rglob("*")):
        rel = path.relative_to(model)
        if any(rel == p or p in rel.parents for p in ignored) or not path.is_file():
            continue
        present[rel.as_posix()] = path
    changed = [n for n in sorted(signed) if n in present and file_sha256(present[n]) != signed[n]]
    missing = [n for n in sorted(signed) if n not in present]
    extra = [n for n in present if n not in signed]
    parts = []
    for label, names in (("changed", changed), ("missing", missing), ("not signed", extra)):
        if names:
            shown = ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
            parts.append(f"{label}: {shown}")
    if not parts:
        return ""
    return "the files differ from the signed ones: " + "; ".join(parts)
