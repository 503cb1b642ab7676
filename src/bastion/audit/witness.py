"""Witness cosigning of signed tree heads (``bastion audit witness``).

A witness is a second party with its own Ed25519 key. Before it cosigns the log's latest
signed tree head it checks that the head carries a valid signature by the log's key (pinned
in the witness's state file on first use), that the log's entries hash to the signed root,
and that the head is consistent (RFC 6962 §2.1.2 consistency proof, checked with
:func:`bastion.audit.merkle.verify_consistency`) with the last head it cosigned. A log that
was rolled back, forked or rewritten below the last cosigned size is refused.

The cosignature covers ``b"bastion-audit-witness/v1\\n" ‖ log public key (32 bytes) ‖
u64 tree_size ‖ u64 head timestamp_ms ‖ root ‖ u64 cosigned_ms``. It is stored twice:

* in the log database (``audit_log_cosignatures``, beside the heads), where
  ``bastion audit verify --witness-key PUB`` finds it;
* in the witness's state file (the last cosigned head and its cosignature), which the
  witness keeps outside the database: ``verify --cosignature STATE`` also catches a log
  rolled back together with its heads and cosignatures.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion.audit.merkle import verify_consistency
from bastion.audit.sth import SignedTreeHead, key_id, public_bytes
from bastion.errors import ConfigError, IntegrityError

if TYPE_CHECKING:
    from bastion.audit.log import AuditLog

WITNESS_DOMAIN = b"bastion-audit-witness/v1\n"
STATE_FORMAT = "bastion-audit-witness-state/v1"


class WitnessRefused(IntegrityError):
    """The witness will not cosign: the log's head is not a consistent extension of the last
    one it cosigned (or is not validly signed, or does not match the log's entries)."""


def cosign_message(
    log_public_key: bytes, tree_size: int, head_timestamp_ms: int, root: bytes, cosigned_ms: int
) -> bytes:
    """The exact bytes a witness cosignature covers."""
    return (
        WITNESS_DOMAIN
        + log_public_key
        + struct.pack(">QQ", tree_size, head_timestamp_ms)
        + root
        + struct.pack(">Q", cosigned_ms)
    )


@dataclass(frozen=True)
class Cosignature:
    """A witness's signature over one signed tree head of one log."""

    tree_size: int
    head_timestamp_ms: int
    root: bytes
    cosigned_ms: int
    witness_key_id: str
    signature: bytes
    id: int | None = None  # row id in the log database, when stored

    def message(self, log_public_key: bytes) -> bytes:
        return cosign_message(
            log_public_key, self.tree_size, self.head_timestamp_ms, self.root, self.cosigned_ms
        )

    def verify(self, witness_key: Ed25519PublicKey, log_key: Ed25519PublicKey) -> bool:
        """True when ``witness_key`` signed this head of the log whose key is ``log_key``."""
        try:
            witness_key.verify(self.signature, self.message(public_bytes(log_key)))
        except InvalidSignature:
            return False
        return True

    def covers(self, head: SignedTreeHead) -> bool:
        return (self.tree_size, self.head_timestamp_ms, self.root) == (
            head.tree_size,
            head.timestamp_ms,
            head.root,
        )

    def to_dict(self) -> dict:
        return {
            "tree_size": self.tree_size,
            "head_timestamp_ms": self.head_timestamp_ms,
            "root_hash": self.root.hex(),
            "cosigned_ms": self.cosigned_ms,
            "witness_key_id": self.witness_key_id,
            "signature": base64.b64encode(self.signature).decode(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Cosignature:
        try:
            return cls(
                tree_size=int(data["tree_size"]),
                head_timestamp_ms=int(data["head_timestamp_ms"]),
                root=bytes.fromhex(data["root_hash"]),
                cosigned_ms=int(data["cosigned_ms"]),
                witness_key_id=str(data["witness_key_id"]),
                signature=base64.b64decode(data["signature"], validate=True),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise ConfigError(f"not a witness cosignature ({type(exc).__name__}: {exc})") from None


def cosign(
    witness_key: Ed25519PrivateKey,
    log_key: Ed25519PublicKey,
    head: SignedTreeHead,
    cosigned_ms: int | None = None,
) -> Cosignature:
    ts = int(time.time() * 1000) if cosigned_ms is None else cosigned_ms
    sig = witness_key.sign(
        cosign_message(public_bytes(log_key), head.tree_size, head.timestamp_ms, head.root, ts)
    )
    return Cosignature(head.tree_size, head.timestamp_ms, head.root, ts, key_id(witness_key), sig)


# ------------------------------------------------------------------------ state file


@dataclass(frozen=True)
class WitnessState:
    """What a witness keeps between runs: the log key it pinned, the last head it cosigned
    and that cosignature. Also what ``bastion audit verify --cosignature`` reads."""

    log_public_key: bytes
    head: SignedTreeHead
    cosignature: Cosignature

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": STATE_FORMAT,
                "log_public_key": self.log_public_key.hex(),
                "log_key_id": key_id(self.log_public_key),
                "head": self.head.to_dict(),
                "cosignature": self.cosignature.to_dict(),
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, source: str = "witness state") -> WitnessState:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source} is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ConfigError(
                f"{source} is not a witness state file (format {STATE_FORMAT!r}, written by "
                "`bastion audit witness`)"
            )
        try:
            pub = bytes.fromhex(data["log_public_key"])
            head = SignedTreeHead.from_dict(data["head"])
            cosig = Cosignature.from_dict(data["cosignature"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source} is damaged ({type(exc).__name__}: {exc})") from None
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if len(pub) != 32:
            raise ConfigError(f"{source}: log_public_key must be 32 bytes in hex")
        if not cosig.covers(head):
            raise ConfigError(f"{source}: its cosignature is not over its head")
        return cls(pub, head, cosig)


def read_state(path: Path) -> WitnessState | None:
    """The state in ``path``, or None when the file does not exist (a first run)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read witness state {path}: {exc.strerror}") from None
    return WitnessState.from_json(text, f"witness state {path}")


def write_state(path: Path, state: WitnessState) -> None:
    """Replace ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(state.to_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------ witnessing


@dataclass(frozen=True)
class WitnessOutcome:
    head: SignedTreeHead
    cosignature: Cosignature
    previous_size: int | None  # the size cosigned before (None: first run)
    already: bool  # this very head was cosigned before (nothing new signed)

    @property
    def message(self) -> str:
        h, wid = self.head, self.cosignature.witness_key_id
        what = f"signed tree head (size {h.tree_size}, root {h.root.hex()[:16]}…)"
        if self.already:
            return f"witness {wid} had already cosigned the latest {what}"
        since = (
            "first cosignature: the log key is now pinned in the state file"
            if self.previous_size is None
            else f"consistent with the last cosigned head (size {self.previous_size})"
        )
        return f"witness {wid} cosigned the latest {what}; {since}"


def witness(
    log: AuditLog,
    witness_key: Ed25519PrivateKey,
    state_path: Path,
    log_key: Ed25519PublicKey | None = None,
) -> WitnessOutcome:
    """Cosign ``log``'s latest signed tree head if it is consistent with the last head this
    witness cosigned (kept in ``state_path``); store the cosignature in the log database and
    in the state file. Raises :class:`WitnessRefused` when the log misbehaves."""
    state = read_state(state_path)
    wid = key_id(witness_key)
    if state is not None:
        pinned = Ed25519PublicKey.from_public_bytes(state.log_public_key)
        if log_key is not None and public_bytes(log_key) != state.log_public_key:
            raise ConfigError(
                f"witness state {state_path} pins log key {key_id(pinned)}, not "
                f"{key_id(log_key)}: keep one state file per log"
            )
        if state.cosignature.witness_key_id != wid:
            raise ConfigError(
                f"witness state {state_path} was written by witness key "
                f"{state.cosignature.witness_key_id}, not {wid}"
            )
        log_key = pinned
    if log_key is None:
        raise ConfigError(
            "the witness needs the log's public key on its first run: pass --log-key PUB (or "
            "set $BASTION_AUDIT_PUBKEY); it is then pinned in the state file"
        )
    head = log.latest_head()
    if head is None:
        raise ConfigError(
            f"no signed tree head in {log.url} to cosign: sign one first (`bastion audit sign`)"
        )
    n = head.tree_size
    label = f"signed tree head #{head.id} (size {n})"
    if not head.verify(log_key):
        raise WitnessRefused(
            f"refusing to cosign: the latest {label} has no valid signature by log key "
            f"{key_id(log_key)}"
        )
    size = log.size()
    if size < n:
        raise WitnessRefused(
            f"refusing to cosign: the log holds {size} entries, fewer than the {n} its latest "
            f"{label} covers"
        )
    if log.root(n) != head.root:
        raise WitnessRefused(
            f"refusing to cosign: the recorded leaves of entries 0..{n - 1} do not hash to the "
            f"root of the {label}"
        )
    previous = None
    if state is not None:
        old = state.head
        m = old.tree_size
        previous = m
        if n < m:
            raise WitnessRefused(
                f"refusing to cosign: the latest {label} is smaller than the last head this "
                f"witness cosigned (size {m}): the log was rolled back or its newer heads "
                "deleted"
            )
        proof = log.consistency_proof(m, n)
        if not verify_consistency(m, n, old.root, head.root, proof):
            raise WitnessRefused(
                f"refusing to cosign: the latest {label} is not consistent with the last head "
                f"this witness cosigned (size {m}): the RFC 6962 consistency proof from size "
                f"{m} to size {n} fails, so entries below {m} were changed"
            )
        if state.cosignature.covers(head) and state.head.signature == head.signature:
            stored = [c for c in log.cosignatures() if c.signature == state.cosignature.signature]
            if not stored:  # the state was written but the database lost (or never got) it
                log.add_cosignature(state.cosignature)
            return WitnessOutcome(head, state.cosignature, m, already=True)
    cosig = cosign(witness_key, log_key, head)
    stored_id = log.add_cosignature(cosig)
    cosig = Cosignature(**{**cosig.__dict__, "id": stored_id})
    write_state(state_path, WitnessState(public_bytes(log_key), head, cosig))
    return WitnessOutcome(head, cosig, previous, already=False)


__all__ = [
    "Cosignature",
    "WitnessOutcome",
    "WitnessRefused",
    "WitnessState",
    "cosign",
    "cosign_message",
    "read_state",
    "witness",
    "write_state",
]
