"""`bastion audit witness` cosigns the latest signed tree head only when it is consistent
(RFC 6962) with the last one it cosigned, and `verify --witness-key` requires that
cosignature on the latest head."""

from __future__ import annotations

import json
import sys
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.audit import AuditLog, public_pem, resolve_signing_key
from bastion.audit.sth import generate_key_file, key_id, sign_head
from bastion.audit.witness import Cosignature, cosign, read_state
from bastion.cli import main
from tests.audit.conftest import entry
from tests.audit.test_tamper import Intruder


@pytest.fixture()
def w(tmp_path, monkeypatch):
    """A 20-entry log signed every 10 entries, its key, and a witness with a state file."""
    for var in ("BASTION_AUDIT_KEY", "BASTION_AUDIT_PUBKEY", "BASTION_DB"):
        monkeypatch.delenv(var, raising=False)

    class W:
        url = f"sqlite:///{tmp_path / 'audit.db'}"
        log_key = resolve_signing_key(tmp_path / "audit.pem", create=True)
        log_pub = tmp_path / "audit-pub.pem"
        wkey_file = tmp_path / "witness.pem"
        wkey = generate_key_file(wkey_file)
        wpub = tmp_path / "witness-pub.pem"
        state = tmp_path / "witness-state.json"

        def append(self, lo: int, hi: int, key=None) -> None:
            with AuditLog.open(
                self.url, signing_key=key or self.log_key, checkpoint_every=10
            ) as log:
                log.append_many([entry(i) for i in range(lo, hi)])

        def db(self) -> AuditLog:
            return AuditLog.open(self.url)

    w = W()
    w.log_pub.write_text(public_pem(w.log_key))
    w.wpub.write_text(public_pem(w.wkey))
    w.append(0, 10)
    w.append(10, 20)
    w.wid = key_id(w.wkey)
    return w


def run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["bastion", *[str(a) for a in args]])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out + out.err


def witness(mp, cap, w, *extra):
    return run(
        mp, cap, "audit", "witness", "--db", w.url, "--key", w.wkey_file, "--state", w.state, *extra
    )


def verify(mp, cap, w, *extra):
    return run(mp, cap, "audit", "verify", "--db", w.url, "--key", w.log_pub, *extra)


def rewrite_history(w, *, new_entries: bool) -> None:
    """The log's own key holder edits entry 5, recomputes every hash and chain, re-signs every
    head with the real log key (and, if asked, appends 10 entries with a new head)."""
    with w.db() as log:
        x = Intruder(log)
        _, _, _, entries = x.block(0)
        entries[5] = entries[5].replace(b'"allow"', b'"block"')
        x.set_entries(0, entries)
        x.rehash_from(0)
        x.q("DELETE FROM audit_log_heads")
        x.close()
    with AuditLog.open(w.url, signing_key=w.log_key) as log:
        for size in (10, 20):
            head = sign_head(w.log_key, size, log.root(size), int(time.time() * 1000))
            log.backend.insert_head(head, w.log_key.public_key().public_bytes_raw())
        if not new_entries:
            log.sign_tree_head()  # a fresh head at the same size 20, over the rewritten root
    if new_entries:
        w.append(20, 30)


def test_cosign_extend_and_require(w, monkeypatch, capsys):
    mp, cap = monkeypatch, capsys
    code, out = witness(mp, cap, w, "--log-key", w.log_pub)
    assert code == 0, out
    assert f"witness {w.wid} cosigned the latest signed tree head (size 20" in out
    assert "first cosignature: the log key is now pinned" in out
    state = read_state(w.state)
    assert state is not None and state.head.tree_size == 20
    with w.db() as log:
        stored = log.cosignatures()
    assert len(stored) == 1 and stored[0].signature == state.cosignature.signature
    assert stored[0].verify(w.wkey.public_key(), w.log_key.public_key())

    code, out = verify(mp, cap, w, "--witness-key", w.wpub)
    assert code == 0 and out.startswith("OK: 20 entries"), out
    assert f"cosigned by witness {w.wid} at size 20" in out

    w.append(20, 30)  # a new checkpoint head at 30, not cosigned yet
    code, out = verify(mp, cap, w, "--witness-key", w.wpub)
    assert code == 1
    assert (
        f"FAILED: the latest signed tree head (size 30) carries no valid cosignature by witness "
        f"{w.wid} (the largest size it cosigned is 20)"
    ) in out
    code, out = witness(mp, cap, w)  # the log key is pinned: no --log-key now
    assert code == 0, out
    assert "cosigned the latest signed tree head (size 30" in out
    assert "consistent with the last cosigned head (size 20)" in out
    code, out = witness(mp, cap, w)
    assert code == 0 and "had already cosigned the latest signed tree head (size 30" in out
    with w.db() as log:
        assert [c.tree_size for c in log.cosignatures()] == [20, 30]
    code, out = verify(mp, cap, w, "--witness-key", w.wpub, "--cosignature", w.state)
    assert code == 0 and f"cosigned by witness {w.wid} at size 30" in out, out


def test_history_rewritten_with_the_log_key_is_refused(w, monkeypatch, capsys):
    mp, cap = monkeypatch, capsys
    assert witness(mp, cap, w, "--log-key", w.log_pub)[0] == 0
    rewrite_history(w, new_entries=True)
    code, out = verify(mp, cap, w)  # the key holder's rewrite carries valid signatures …
    assert code == 0 and out.startswith("OK: 30 entries"), out
    code, out = witness(mp, cap, w)  # … but the witness sees the fork
    assert code == 1
    text = out.replace("\n", " ")
    assert "REFUSED: refusing to cosign: the latest signed tree head #" in text
    assert (
        "(size 30) is not consistent with the last head this witness cosigned (size 20): the "
        "RFC 6962 consistency proof from size 20 to size 30 fails"
    ) in text
    assert read_state(w.state).head.tree_size == 20  # nothing new cosigned
    code, out = verify(mp, cap, w, "--witness-key", w.wpub)  # the stored cosignature disagrees
    assert code == 1 and f"witness {w.wid} cosignature #1 (size 20) does not match the log" in out
    assert "first untrusted entry 0" in out and "an entry in 0..19" in out
    assert "so that key signed a history other than the one the witness cosigned" in out
    with w.db() as log:  # the insider deletes the cosignatures as well …
        x = Intruder(log)
        x.q("DELETE FROM audit_log_cosignatures")
        x.close()
    code, out = verify(mp, cap, w, "--witness-key", w.wpub)
    assert code == 1 and "carries no valid cosignature by witness" in out and "none found" in out
    code, out = verify(mp, cap, w, "--witness-key", w.wpub, "--cosignature", w.state)
    assert code == 1 and "does not match the log: an entry in 0..19" in out  # … the state shows it


def test_a_fork_at_the_same_size_is_refused(w, monkeypatch, capsys):
    mp, cap = monkeypatch, capsys
    assert witness(mp, cap, w, "--log-key", w.log_pub)[0] == 0
    rewrite_history(w, new_entries=False)
    code, out = witness(mp, cap, w)
    assert code == 1 and "(size 20) is not consistent with the last head this witness" in out
    assert "from size 20 to size 20 fails" in out.replace("\n", " ")


def test_a_rollback_is_refused(w, monkeypatch, capsys):
    mp, cap = monkeypatch, capsys
    assert witness(mp, cap, w, "--log-key", w.log_pub)[0] == 0
    w.append(20, 30)
    assert witness(mp, cap, w)[0] == 0  # cosigned 30
    with w.db() as log:  # back to 20 entries, with every trace of 30 removed
        x = Intruder(log)
        x.q("DELETE FROM audit_log_blocks WHERE start >= 20")
        x.q("DELETE FROM audit_log_heads WHERE tree_size > 20")
        x.q("DELETE FROM audit_log_cosignatures WHERE tree_size > 20")
        x.close()
    code, out = witness(mp, cap, w)
    assert code == 1
    assert (
        "refusing to cosign: the latest signed tree head #2 (size 20) is smaller than the last "
        "head this witness cosigned (size 30): the log was rolled back"
    ) in out.replace("\n", " ")
    # the database alone cannot show it (its latest head is cosigned) …
    code, out = verify(mp, cap, w, "--witness-key", w.wpub)
    assert code == 0 and "cosigned by witness" in out
    # … the witness's state file, kept outside it, does
    code, out = verify(mp, cap, w, "--witness-key", w.wpub, "--cosignature", w.state)
    assert code == 1 and "covers 30 entries but only 20 remain; first missing entry 20" in out


def test_bad_heads_are_refused(w, monkeypatch, capsys):
    mp, cap = monkeypatch, capsys
    rogue = Ed25519PrivateKey.generate()
    with AuditLog.open(w.url, signing_key=rogue) as log:
        log.sign_tree_head()  # the latest head, signed by another key
    code, out = witness(mp, cap, w, "--log-key", w.log_pub)
    assert code == 1
    assert "the latest signed tree head #3 (size 20) has no valid signature by log key" in out
    assert not w.state.exists()
    with w.db() as log:
        x = Intruder(log)
        x.q("DELETE FROM audit_log_heads WHERE id = 3")
        x.q("DELETE FROM audit_log_blocks WHERE start >= 10")  # the head covers more than remains
        x.close()
    code, out = witness(mp, cap, w, "--log-key", w.log_pub)
    assert code == 1 and "the log holds 10 entries, fewer than the 20 its latest" in out
    w.append(10, 20)  # a new head at 20 over different content: fine, nothing cosigned yet
    with w.db() as log:
        x = Intruder(log)
        _, _, _, entries = x.block(10)
        entries[2] = entries[2].replace(b'"allow"', b'"block"')
        x.set_entries(10, entries)
        x.rehash_from(10)  # the recorded leaves no longer hash to the signed root
        x.close()
    code, out = witness(mp, cap, w, "--log-key", w.log_pub)
    assert code == 1 and "do not hash to the root of the signed tree head" in out


def test_a_forged_cosignature_fails_verification(w, monkeypatch, capsys):
    mp, cap = monkeypatch, capsys
    assert witness(mp, cap, w, "--log-key", w.log_pub)[0] == 0
    with w.db() as log:
        x = Intruder(log)
        (sig,) = x.q("SELECT signature FROM audit_log_cosignatures")[0]
        sig = bytes(sig)
        x.q("UPDATE audit_log_cosignatures SET signature = ?", sig[:-1] + bytes([sig[-1] ^ 1]))
        x.close()
    code, out = verify(mp, cap, w, "--witness-key", w.wpub)
    assert code == 1 and f"witness {w.wid} cosignature #1 (size 20) is invalid" in out


def test_a_cosignature_is_bound_to_its_log_key(w):
    with w.db() as log:
        head = log.latest_head()
    c = cosign(w.wkey, w.log_key.public_key(), head)
    assert c.verify(w.wkey.public_key(), w.log_key.public_key())
    other = Ed25519PrivateKey.generate().public_key()
    assert not c.verify(w.wkey.public_key(), other)
    assert Cosignature.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_a_log_made_before_witnesses_existed(w, monkeypatch, capsys):
    mp, cap = monkeypatch, capsys
    with w.db() as log:
        x = Intruder(log)
        x.q("DROP TABLE audit_log_cosignatures")
        x.close()
    code, out = verify(mp, cap, w)  # reading an older log needs no new table …
    assert code == 0 and out.startswith("OK: 20 entries")
    with AuditLog.open(w.url, create=False) as log:
        x = Intruder(log)
        assert not x.q("SELECT name FROM sqlite_master WHERE name = 'audit_log_cosignatures'")
        x.close()
    code, out = witness(mp, cap, w, "--log-key", w.log_pub)  # … and the witness adds it
    assert code == 0, out
    assert verify(mp, cap, w, "--witness-key", w.wpub)[0] == 0


def test_witness_user_errors_exit_2(w, monkeypatch, capsys, tmp_path):
    mp, cap = monkeypatch, capsys
    code, out = witness(mp, cap, w)
    assert code == 2 and "the witness needs the log's public key on its first run" in out
    missing = tmp_path / "none" / "audit.db"
    code, out = run(
        mp, cap, "audit", "witness", "--db", missing, "--key", w.wkey_file, "--state", w.state
    )
    assert code == 2 and "no database at" in out and not missing.parent.exists()
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    AuditLog.open(empty).close()
    code, out = run(
        mp,
        cap,
        "audit",
        "witness",
        "--db",
        empty,
        "--key",
        w.wkey_file,
        "--state",
        w.state,
        "--log-key",
        w.log_pub,
    )
    assert code == 2 and "no signed tree head in" in out and "to cosign" in out
    assert witness(mp, cap, w, "--log-key", w.log_pub)[0] == 0
    other = Ed25519PrivateKey.generate()
    code, out = witness(mp, cap, w, "--log-key", other.public_key().public_bytes_raw().hex())
    assert code == 2 and f"pins log key {key_id(w.log_key)}, not {key_id(other)}" in out
    second = tmp_path / "witness2.pem"
    generate_key_file(second)
    code, out = run(mp, cap, "audit", "witness", "--db", w.url, "--key", second, "--state", w.state)
    assert code == 2 and "was written by witness key" in out
    w.state.write_text("{}")
    code, out = witness(mp, cap, w)
    assert code == 2 and "is not a witness state file" in out
    w.wkey_file.chmod(0o644)
    code, out = witness(mp, cap, w)
    assert code == 2 and "chmod 600" in out
    assert "Traceback" not in out
