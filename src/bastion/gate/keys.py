"""Ed25519 signing keys for attestations: create, load, check permissions; never print.

``bastion keys signing-init`` writes ``signing.key`` (PKCS#8 PEM, mode 0600) and
``signing.pub`` beside it. The key is found, in order, at an explicit path, in
``$BASTION_SIGNING_KEY`` (the PEM text itself or a file path) or at
``$XDG_CONFIG_HOME/bastion/signing.key`` (default ``~/.config/bastion/signing.key``).
A key file that group or others can read is refused. Error messages never contain key
material.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from bastion.errors import ConfigError

ENV_KEY = "BASTION_SIGNING_KEY"
ENV_PUBLIC = "BASTION_SIGNING_PUBLIC_KEY"


class SigningKeyError(ConfigError):
    """A signing key is missing, malformed, of the wrong type or too widely readable."""


@dataclass(frozen=True)
class KeyFiles:
    private: Path
    public: Path
    key_id: str


@dataclass(frozen=True)
class SigningKey:
    """A loaded private key and where it came from (a path or the environment)."""

    private: Ed25519PrivateKey
    source: str

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def __repr__(self) -> str:  # never show key material
        return f"SigningKey(key_id={self.key_id[:16]}…, source={self.source!r})"


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/bastion`` (default ``~/.config/bastion``): where keys live."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "bastion"


def default_key_path() -> Path:
    return config_dir() / "signing.key"


def public_path_for(private: Path) -> Path:
    return private.with_suffix(".pub")


def key_id(public: Ed25519PublicKey) -> str:
    """SHA-256 (hex) of the raw 32-byte public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_pem(public: PublicKeyTypes) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_signing_key(path: str | Path | None = None, *, force: bool = False) -> KeyFiles:
    """Create an Ed25519 key pair: private key at ``path`` (0600), public key beside it."""
    path = Path(path) if path else default_key_path()
    pub = public_path_for(path)
    if path.exists() and not force:
        raise SigningKeyError(
            f"{path} already exists: keep it, or pass --force to replace it (attestations "
            "signed with the old key will no longer verify with the new public key)"
        )
    key = Ed25519PrivateKey.generate()
    write_private_key(path, key)
    pub.write_bytes(public_pem(key.public_key()))
    return KeyFiles(path, pub, key_id(key.public_key()))


def write_private_key(path: Path, key: PrivateKeyTypes) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM to ``path``, mode 0600 from the start (a
    temporary file made with ``O_EXCL``, then renamed); the folder is made 0700 if missing."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_permissions(path: Path, error: type[ConfigError] = SigningKeyError) -> None:
    """Refuse a private key file that group or others may read or write (POSIX)."""
    if os.name != "posix":
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise error(
            f"{path} is accessible by group or others (mode {mode:04o}): a private key must "
            f"be private; run `chmod 600 {path}`"
        )


def parse_private_pem(
    data: bytes, source: str, error: type[ConfigError] = SigningKeyError, hint: str = ""
) -> PrivateKeyTypes:
    """A PEM private key of any type from ``data``; an encrypted or unreadable one is
    ``error`` with one line (never the key material). ``hint`` ends the not-a-key message."""
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise error(
            f"{source}: the key is encrypted with a passphrase; Bastion needs an unencrypted "
            "PKCS#8 key protected by file permissions (mode 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        public = " (that is a public key: sign with the private key)" if b"PUBLIC" in data else ""
        raise error(f"{source}: not a PEM private key{public} ({hint})") from None


def parse_public_pem(
    data: bytes, source: str, error: type[ConfigError] = SigningKeyError
) -> PublicKeyTypes:
    """A PEM public key of any type from ``data``; a private key or garbage is ``error``."""
    try:
        return serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        if b"PRIVATE KEY" in data:
            raise error(
                f"{source} holds a private key: verify with the public key (.pub) instead"
            ) from None
        raise error(f"{source}: not a PEM public key") from None


def _parse_private(data: bytes, source: str) -> Ed25519PrivateKey:
    key = parse_private_pem(data, source, hint="create one with `bastion keys signing-init`")
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{source}: the key is {type(key).__name__}, not Ed25519")
    return key


def load_signing_key(path: str | Path | None = None) -> SigningKey:
    """Load the private key from ``path``, ``$BASTION_SIGNING_KEY`` or the default file."""
    if path is None:
        env = os.environ.get(ENV_KEY, "").strip()
        if env.startswith("-----BEGIN"):
            return SigningKey(_parse_private(env.encode(), f"${ENV_KEY}"), f"${ENV_KEY}")
        if env:
            path = Path(env).expanduser()
            if not path.exists():
                raise SigningKeyError(
                    f"${ENV_KEY} names {path}, which does not exist (set it to a key file "
                    "path or to the PEM text)"
                )
        else:
            path = default_key_path()
            if not path.exists():
                raise SigningKeyError(
                    f"no signing key: run `bastion keys signing-init` (writes {path}), pass "
                    f"--key FILE or set ${ENV_KEY}"
                )
    path = Path(path)
    if not path.is_file():
        raise SigningKeyError(f"signing key not found: {path}")
    check_permissions(path)
    return SigningKey(_parse_private(path.read_bytes(), str(path)), str(path))


def load_public_key(path: str | Path | None = None) -> Ed25519PublicKey:
    """Load a PEM public key from ``path`` or ``$BASTION_SIGNING_PUBLIC_KEY`` (text or path).

    Without either, the public key beside the default private key is used."""
    source: str
    if path is None:
        env = os.environ.get(ENV_PUBLIC, "").strip()
        if env.startswith("-----BEGIN"):
            data, source = env.encode(), f"${ENV_PUBLIC}"
            return _parse_public(data, source)
        path = Path(env).expanduser() if env else public_path_for(default_key_path())
    path = Path(path)
    if not path.is_file():
        raise SigningKeyError(
            f"public key not found: {path}: pass --public-key FILE (the .pub written by "
            "`bastion keys signing-init`)"
        )
    return _parse_public(path.read_bytes(), str(path))


def _parse_public(data: bytes, source: str) -> Ed25519PublicKey:
    key = parse_public_pem(data, source)
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{source}: the key is {type(key).__name__}, not Ed25519")
    return key
