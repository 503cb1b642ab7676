"""Signed tree heads (Ed25519) and the audit signing key.

A signed tree head (STH, RFC 6962 §3.5) commits the log to its first ``tree_size`` entries:
the key signs ``b"bastion-audit-sth/v1\\n" ‖ u64 timestamp_ms ‖ u64 tree_size ‖ root``.
Anyone holding the public key can check a head, and a later log that is not an extension of
the signed one (an entry edited, removed, reordered, or the log cut short) no longer matches.

The private key comes from a PEM file that only its owner may read (mode 0600 enforced),
or from ``$BASTION_AUDIT_KEY`` (the PEM text, or the 32-byte seed in hex or base64); it is
generated on first use only when asked to, and never printed or logged.

Verification takes the *public* key from whoever verifies: ``--key``, or the deployment's
``$BASTION_AUDIT_PUBKEY`` (a PEM file path, PEM text, or the 32 raw bytes in hex/base64).
The public key recorded beside each head in the database is never trusted: whoever can write
the database can re-sign it with a key of their own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion.errors import ConfigError

KEY_ENV = "BASTION_AUDIT_KEY"
PUBKEY_ENV = "BASTION_AUDIT_PUBKEY"
_DOMAIN = b"bastion-audit-sth/v1\n"


def sth_message(tree_size: int, timestamp_ms: int, root: bytes) -> bytes:
    """The exact bytes a tree head signature covers."""
    return _DOMAIN + struct.pack(">QQ", timestamp_ms, tree_size) + root


def public_bytes(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey | bytes) -> str:
    """Short fingerprint of a public key: first 16 hex digits of SHA-256(raw key)."""
    raw = key if isinstance(key, bytes) else public_bytes(key)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class SignedTreeHead:
    """A log size and root hash, timestamped and signed with the audit key."""

    tree_size: int
    timestamp_ms: int
    root: bytes
    signature: bytes
    key_id: str
    id: int | None = None  # row id in the log database, when stored

    def message(self) -> bytes:
        return sth_message(self.tree_size, self.timestamp_ms, self.root)

    def verify(self, public_key: Ed25519PublicKey) -> bool:
        """True when the signature is the key's over (size, timestamp, root)."""
        try:
            public_key.verify(self.signature, self.message())
        except InvalidSignature:
            return False
        return True

    def to_dict(self) -> dict:
        return {
            "tree_size": self.tree_size,
            "timestamp_ms": self.timestamp_ms,
            "root_hash": self.root.hex(),
            "signature": base64.b64encode(self.signature).decode(),
            "key_id": self.key_id,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> SignedTreeHead:
        try:
            return cls(
                tree_size=int(data["tree_size"]),
                timestamp_ms=int(data["timestamp_ms"]),
                root=bytes.fromhex(data["root_hash"]),
                signature=base64.b64decode(data["signature"], validate=True),
                key_id=str(data["key_id"]),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise ConfigError(
                f"not a signed tree head ({type(exc).__name__}: {exc}): expected the JSON "
                "written by `bastion audit sign` (tree_size, timestamp_ms, root_hash, "
                "signature, key_id)"
            ) from None

    @classmethod
    def from_json(cls, text: str) -> SignedTreeHead:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"signed tree head is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError("signed tree head must be a JSON object")
        return cls.from_dict(data)


def sign_head(
    key: Ed25519PrivateKey, tree_size: int, root: bytes, timestamp_ms: int
) -> SignedTreeHead:
    sig = key.sign(sth_message(tree_size, timestamp_ms, root))
    return SignedTreeHead(tree_size, timestamp_ms, root, sig, key_id(key))


# ---------------------------------------------------------------------------- keys


def generate_key_file(path: Path) -> Ed25519PrivateKey:
    """Create a new private key at ``path`` with mode 0600 (refuses to overwrite)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"audit key file {path} already exists: remove it or use it") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    return key


def _parse_private(data: bytes, source: str) -> Ed25519PrivateKey:
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: not a usable PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{source}: the audit key must be Ed25519, got {type(key).__name__}")
        return key
    seed = None
    for decode in (bytes.fromhex, lambda s: base64.b64decode(s, validate=True)):
        try:
            seed = decode(text.decode("ascii"))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            continue
        if len(seed) == 32:
            break
        seed = None
    if seed is None:
        raise ConfigError(
            f"{source}: expected an Ed25519 private key as PEM or a 32-byte seed in hex or base64"
        )
    return Ed25519PrivateKey.from_private_bytes(seed)


def load_key_file(path: Path) -> Ed25519PrivateKey:
    """Read a private key file, refusing one that others can read or write."""
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(
            f"audit key file {path} does not exist: create it with `bastion audit keygen "
            f"--key-file {path}`"
        ) from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"audit key file {path} is not a regular file")
    if mode & 0o077:
        raise ConfigError(
            f"audit key file {path} is accessible by other users (mode {stat.S_IMODE(mode):04o}): "
            f"run `chmod 600 {path}`"
        )
    return _parse_private(path.read_bytes(), f"audit key file {path}")


def resolve_signing_key(
    key_file: Path | str | None = None, *, create: bool = False
) -> Ed25519PrivateKey | None:
    """The audit signing key: from ``key_file`` when given (generated there when missing and
    ``create``), else from ``$BASTION_AUDIT_KEY``, else None."""
    if key_file is not None:
        path = Path(key_file).expanduser()
        if create and not path.exists():
            return generate_key_file(path)
        return load_key_file(path)
    env = os.environ.get(KEY_ENV)
    if env:
        return _parse_private(env.encode(), f"${KEY_ENV}")
    return None


def load_public_key(source: Path | str | bytes) -> Ed25519PublicKey:
    """A public key from a PEM file, a PEM/hex/base64 string, or 32 raw bytes. A private key
    file is accepted too (its public half is used)."""
    if isinstance(source, bytes) and len(source) == 32:
        return Ed25519PublicKey.from_public_bytes(source)
    text: bytes
    label = "public key"
    path: Path | None = None
    if isinstance(source, Path) or (
        isinstance(source, str) and "\n" not in source and Path(source).expanduser().is_file()
    ):
        path = Path(source).expanduser()
        label = f"public key file {path}"
        try:
            text = path.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read {label}: {exc.strerror}") from None
    elif isinstance(source, str) and source.strip().endswith((".pem", ".pub", ".key")):
        raise ConfigError(f"public key file {source} does not exist")
    else:
        text = source.encode() if isinstance(source, str) else source
        text = text.strip()
    if text.startswith(b"-----BEGIN PRIVATE KEY"):
        if path is None:
            return _parse_private(text, label).public_key()
        return load_key_file(path).public_key()  # a private key file must still be 0600
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text)
        except ValueError as exc:
            raise ConfigError(f"{label}: not a PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{label}: the audit key must be Ed25519, got {type(key).__name__}")
        return key
    for decode in (bytes.fromhex, lambda s: base64.b64decode(s, validate=True)):
        try:
            raw = decode(text.decode("ascii"))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            continue
        if len(raw) == 32:
            return Ed25519PublicKey.from_public_bytes(raw)
    raise ConfigError(
        f"{label}: expected an Ed25519 public key as PEM, or 32 bytes in hex or base64 "
        "(`bastion audit pubkey` prints it)"
    )


def resolve_public_key(source: str | Path | None = None) -> Ed25519PublicKey | None:
    """The trusted public key that verifies the log: ``source`` (``--key``) when given, else
    ``$BASTION_AUDIT_PUBKEY``, else None. Never the key stored in the log."""
    if source is not None and str(source) != "":
        return load_public_key(source)
    env = os.environ.get(PUBKEY_ENV, "").strip()
    if not env:
        return None
    try:
        return load_public_key(env)
    except ConfigError as exc:
        raise ConfigError(f"${PUBKEY_ENV}: {exc}") from None


def public_pem(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def require_key(key: Ed25519PrivateKey | None) -> Ed25519PrivateKey:
    if key is None:
        raise ConfigError(
            "no audit signing key: pass --key-file PATH (add --create-key to generate one) or "
            f"set ${KEY_ENV}"
        )
    return key


__all__ = [
    "KEY_ENV",
    "PUBKEY_ENV",
    "SignedTreeHead",
    "generate_key_file",
    "key_id",
    "load_key_file",
    "load_public_key",
    "public_pem",
    "resolve_public_key",
    "resolve_signing_key",
    "sign_head",
    "sth_message",
]
