"""Merkle tree and proofs against a slow RFC 6962 reference, the Certificate Transparency
test vectors, and hand-computed small trees."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    MerkleTree,
    leaf_hash,
    leaf_hashes,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

# ---------------------------------------------------------------- slow reference (RFC 6962 text)


def ref_mth(d: list[bytes]) -> bytes:
    """MTH(D[n]) of RFC 6962 §2.1, over entries (not leaf hashes)."""
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 6962 §2.1.1."""
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 6962 §2.1.2."""
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def tree_of(entries: list[bytes]) -> MerkleTree:
    t = MerkleTree()
    t.extend(leaf_hashes(entries))
    return t


# ---------------------------------------------------------------- CT vectors

CT_ENTRIES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (0-based leaf index, tree size, audit path) from the CT reference tests
CT_INCLUSION = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CT_CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


def test_ct_roots():
    t = tree_of(CT_ENTRIES)
    assert (
        t.root(0)
        == EMPTY_ROOT
        == bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    )
    for n in range(1, 9):
        assert t.root(n).hex() == CT_ROOTS[n - 1]
        assert ref_mth(CT_ENTRIES[:n]).hex() == CT_ROOTS[n - 1]


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_ct_inclusion(index, size, path):
    t = tree_of(CT_ENTRIES)
    proof = t.inclusion_proof(index, size)
    assert [p.hex() for p in proof] == path
    root = bytes.fromhex(CT_ROOTS[size - 1])
    assert verify_inclusion(leaf_hash(CT_ENTRIES[index]), index, size, proof, root)
    assert not verify_inclusion(leaf_hash(b"forged"), index, size, proof, root)


@pytest.mark.parametrize(("old", "new", "proof_hex"), CT_CONSISTENCY)
def test_ct_consistency(old, new, proof_hex):
    t = tree_of(CT_ENTRIES)
    proof = t.consistency_proof(old, new)
    assert [p.hex() for p in proof] == proof_hex
    old_root, new_root = bytes.fromhex(CT_ROOTS[old - 1]), bytes.fromhex(CT_ROOTS[new - 1])
    assert verify_consistency(old, new, old_root, new_root, proof)


def test_hand_computed_three_leaves():
    a, b, c = b"a", b"b", b"c"
    la, lb, lc = (hashlib.sha256(b"\x00" + x).digest() for x in (a, b, c))
    ab = hashlib.sha256(b"\x01" + la + lb).digest()
    root3 = hashlib.sha256(b"\x01" + ab + lc).digest()  # split at k = 2
    t = tree_of([a, b, c])
    assert t.root() == root3
    assert t.root(2) == ab and t.root(1) == la
    assert t.inclusion_proof(2) == [ab]
    assert t.inclusion_proof(0) == [lb, lc]
    assert t.consistency_proof(2, 3) == [lc]
    assert t.consistency_proof(1, 3) == [lb, lc]
    assert verify_consistency(2, 3, ab, root3, [lc])
    assert node_hash(la, lb) == ab


def test_proofs_match_reference_for_every_size_and_index():
    rng = random.Random(0)
    entries = [rng.randbytes(rng.randint(0, 40)) for _ in range(40)]
    t = tree_of(entries)
    for n in range(1, len(entries) + 1):
        root = ref_mth(entries[:n])
        assert t.root(n) == root
        for m in range(n):
            proof = t.inclusion_proof(m, n)
            assert proof == ref_path(m, entries[:n])
            assert verify_inclusion(leaf_hash(entries[m]), m, n, proof, root)
            if n > 1:  # the same path at the neighbouring index puts the leaf on the wrong side
                assert not verify_inclusion(leaf_hash(entries[m]), m ^ 1, n, proof, root)
            if proof:
                bad = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
                assert not verify_inclusion(leaf_hash(entries[m]), m, n, bad, root)
        for m in range(1, n):
            proof = t.consistency_proof(m, n)
            assert proof == ref_subproof(m, entries[:n], True)
            old_root = ref_mth(entries[:m])
            assert verify_consistency(m, n, old_root, root, proof)
            assert not verify_consistency(m, n, root, root, proof)
            assert not verify_consistency(m, n, old_root, old_root, proof)
            assert not verify_consistency(m, n, old_root, root, proof[:-1])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=1, max_size=70), st.data())
def test_incremental_tree_and_frontier_match_reference(entries, data):
    cut = data.draw(st.integers(0, len(entries)))
    t = MerkleTree()
    t.extend(leaf_hashes(entries[:cut]))
    t.extend(leaf_hashes(entries[cut:]))
    f, g = Frontier(), Frontier()
    f.extend(leaf_hashes(entries[:cut]))
    f.extend_fast(leaf_hashes(entries[cut:]), max_height=3)
    g.extend_fast(leaf_hashes(entries))
    assert t.root() == f.root() == g.root() == ref_mth(entries)
    assert Frontier().root_with(leaf_hashes(entries)) == ref_mth(entries)


def test_out_of_range_requests_are_refused():
    t = tree_of([b"x", b"y"])
    with pytest.raises(ValueError, match="outside a tree of 2"):
        t.inclusion_proof(2)
    with pytest.raises(ValueError, match=r"outside the log.s 0\.\.2"):
        t.root(3)
    assert not verify_inclusion(leaf_hash(b"x"), 2, 2, [], t.root())
    assert verify_consistency(0, 2, EMPTY_ROOT, t.root(), [])
    assert not verify_consistency(2, 1, t.root(), t.root(1), [])
