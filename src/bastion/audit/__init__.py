"""Tamper-evident append-only audit log: RFC 6962 Merkle tree, Ed25519 signed tree heads,
inclusion and consistency proofs, witness cosignatures, SQLite (WAL, group commit) or
PostgreSQL storage. Verification trusts only a public key its caller gives."""

from bastion.audit.committer import GroupCommitter
from bastion.audit.log import AuditLog, canonical_json
from bastion.audit.merkle import leaf_hash, node_hash, verify_consistency, verify_inclusion
from bastion.audit.sth import (
    SignedTreeHead,
    load_public_key,
    public_pem,
    resolve_public_key,
    resolve_signing_key,
)
from bastion.audit.verify import VerifyResult
from bastion.audit.witness import Cosignature, WitnessRefused, WitnessState

__all__ = [
    "AuditLog",
    "Cosignature",
    "GroupCommitter",
    "SignedTreeHead",
    "VerifyResult",
    "WitnessRefused",
    "WitnessState",
    "canonical_json",
    "leaf_hash",
    "load_public_key",
    "node_hash",
    "public_pem",
    "resolve_public_key",
    "resolve_signing_key",
    "verify_consistency",
    "verify_inclusion",
]
