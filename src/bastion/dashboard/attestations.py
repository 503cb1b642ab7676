"""Each run's attestation status for the overview: whether ``bastion attest`` signed it
(``attestation.dsse.json`` in the run's folder) and, with a trusted public key configured
(``dashboard.attestation_key``, ``bastion dashboard --attestation-key``), whether the
signature verifies and every subject (model files, report, dataset manifest) still hashes
to what was signed.

Without a trusted key a signed run says so and no more: a signature checked against a key
the attestation itself names would prove nothing. Results are cached per attestation file
(by path, size and mtime) and re-checked when it changes; the subjects are re-hashed at
most every ``RECHECK_S`` seconds."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bastion.errors import BastionError

ATTESTATION_FILE = "attestation.dsse.json"
RECHECK_S = 60.0
State = Literal["unsigned", "signed", "verified", "stale", "invalid"]


@dataclass(frozen=True)
class AttestationStatus:
    """``unsigned``: no attestation; ``signed``: one is there, no trusted key to check it;
    ``verified``: signature and every subject check; ``stale``: the signature checks but a
    subject changed or is not where it was signed; ``invalid``: the signature does not
    verify (or the file is not an attestation)."""

    state: State
    detail: str = ""
    gate_passed: bool | None = None

    @property
    def label(self) -> str:
        return {
            "unsigned": "not attested",
            "signed": "signed (not verified: no trusted key configured)",
            "verified": "verified",
            "stale": "signature ok, subjects changed",
            "invalid": "INVALID",
        }[self.state]


class AttestationChecker:
    """Checks run folders' attestations against one trusted key (or none)."""

    def __init__(self, public: Ed25519PublicKey | None) -> None:
        self.public = public
        self._cache: dict[Path, tuple[tuple[int, int], float, AttestationStatus]] = {}
        self._lock = threading.Lock()

    def status(self, out_dir: str | Path | None) -> AttestationStatus:
        if not out_dir:
            return AttestationStatus("unsigned", "the run has no folder")
        path = Path(out_dir) / ATTESTATION_FILE
        try:
            st = path.stat()
        except OSError:
            return AttestationStatus("unsigned")
        if self.public is None:
            return AttestationStatus("signed", str(path))
        stamp = (st.st_size, st.st_mtime_ns)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp and now - cached[1] < RECHECK_S:
            return cached[2]
        result = self._verify(path)
        with self._lock:
            self._cache[path] = (stamp, now, result)
        return result

    def _verify(self, path: Path) -> AttestationStatus:
        from bastion.gate.attest import verify_attestation

        assert self.public is not None
        try:
            v = verify_attestation(path, self.public)
        except (BastionError, OSError, ValueError) as exc:
            return AttestationStatus("invalid", str(exc).splitlines()[0])
        if v.ok:
            return AttestationStatus("verified", f"key {v.key_id or '?'}", v.gate_passed)
        if v.signature_ok:
            return AttestationStatus("stale", "; ".join(v.problems[:3]), v.gate_passed)
        return AttestationStatus("invalid", "; ".join(v.problems[:3]) or "bad signature")
