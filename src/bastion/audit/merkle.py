"""Merkle hash trees in the manner of RFC 6962 §2.1 (Certificate Transparency).

``leaf = SHA-256(0x00 ‖ entry)``, ``node = SHA-256(0x01 ‖ left ‖ right)``; the tree hash of
``n`` leaves splits at ``k``, the largest power of two smaller than ``n`` (so trees of any
size, not only powers of two, have one well-defined root). Inclusion and consistency proofs
are built as in RFC 6962 §2.1.1 / §2.1.2 and checked with the iterative algorithms of
RFC 9162 §2.1.3.2 / §2.1.4.2.

Speed: everything hashes with :mod:`hashlib` in list comprehensions (about 0.3 µs per
node on one core); a tree keeps each level as one contiguous ``bytearray`` (64 bytes of
memory per leaf in all), so a proof is ``O(log n)`` lookups.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import sha256

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = sha256(b"").digest()  # MTH({}) = SHA-256() of the empty string


def leaf_hash(entry: bytes) -> bytes:
    """``SHA-256(0x00 ‖ entry)``."""
    return sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 ‖ left ‖ right)``."""
    return sha256(NODE_PREFIX + left + right).digest()


def leaf_hashes(entries: Sequence[bytes]) -> list[bytes]:
    """Leaf hashes of many entries (one tight comprehension)."""
    p = LEAF_PREFIX
    return [sha256(p + e).digest() for e in entries]


def parent_level(level: Sequence[bytes]) -> list[bytes]:
    """Hashes of the complete pairs of ``level`` (an odd last node is left out)."""
    it = iter(level)
    p = NODE_PREFIX
    return [sha256(p + a + b).digest() for a, b in zip(it, it, strict=False)]


def largest_pow2_below(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def fold(nodes: Sequence[bytes]) -> bytes:
    """Root of a tree given the roots of its perfect subtrees, largest (leftmost) first."""
    if not nodes:
        return EMPTY_ROOT
    acc = nodes[-1]
    for node in reversed(nodes[:-1]):
        acc = node_hash(node, acc)
    return acc


class Frontier:
    """The roots of the perfect subtrees that make up a growing tree (a binary counter):
    enough to extend the tree and compute its current root in ``O(log n)`` memory."""

    __slots__ = ("heights", "nodes", "size")

    def __init__(self) -> None:
        self.size = 0
        self.heights: list[int] = []
        self.nodes: list[bytes] = []

    def push(self, node: bytes, height: int = 0) -> None:
        """Append a perfect subtree of ``2**height`` leaves (aligned: ``size`` must be a
        multiple of ``2**height``)."""
        heights, nodes = self.heights, self.nodes
        self.size += 1 << height
        while heights and heights[-1] == height:
            heights.pop()
            node = node_hash(nodes.pop(), node)
            height += 1
        heights.append(height)
        nodes.append(node)

    def extend(self, leaves: Sequence[bytes]) -> None:
        for leaf in leaves:
            self.push(leaf)

    def extend_fast(self, leaves: Sequence[bytes], *, max_height: int = 16) -> None:
        """Like :meth:`extend`, hashing aligned power-of-two runs level by level (fast for
        long runs of leaves)."""
        i, n = 0, len(leaves)
        while i < n:
            size = self.size
            align = (size & -size).bit_length() - 1 if size else max_height
            h = min(align, (n - i).bit_length() - 1, max_height)
            if h == 0:
                self.push(leaves[i])
            else:
                self.push(levels_of(list(leaves[i : i + (1 << h)]))[-1][0], h)
            i += 1 << h

    def root(self) -> bytes:
        return fold(self.nodes)

    def root_with(self, leaves: Sequence[bytes]) -> bytes:
        """The root after appending ``leaves``, leaving this frontier unchanged."""
        copy = self.copy()
        copy.extend_fast(leaves)
        return copy.root()

    def copy(self) -> Frontier:
        other = Frontier()
        other.size, other.heights, other.nodes = self.size, list(self.heights), list(self.nodes)
        return other


def levels_of(leaves: list[bytes]) -> list[list[bytes]]:
    """Every level of the perfect-subtree nodes above ``leaves`` (level 0 is ``leaves``)."""
    levels = [leaves]
    while len(levels[-1]) > 1:
        levels.append(parent_level(levels[-1]))
    return levels


def decompose(levels: list[list[bytes]], start: int, stop: int) -> list[bytes]:
    """Roots of the perfect subtrees covering ``[start, stop)`` of a block whose levels are
    given, largest first; ``start`` must be aligned to the largest of them (true for
    ``start == 0``)."""
    out = []
    pos, remaining = start, stop - start
    while remaining:
        h = remaining.bit_length() - 1
        out.append(levels[h][pos >> h])
        pos += 1 << h
        remaining -= 1 << h
    return out


class MerkleTree:
    """An append-only Merkle tree over leaf hashes, with every perfect-subtree node kept
    (level ``h`` holds the hashes of aligned blocks of ``2**h`` leaves) so that roots of
    earlier sizes and proofs cost ``O(log n)``."""

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]

    @property
    def size(self) -> int:
        return len(self._levels[0]) // HASH_SIZE

    def extend(self, leaves: Sequence[bytes]) -> None:
        """Append leaf hashes and compute the new perfect-subtree nodes."""
        if not leaves:
            return
        self._levels[0] += b"".join(leaves)
        h = 0
        while True:
            level = self._levels[h]
            n_nodes = len(level) // HASH_SIZE
            if n_nodes < 2:
                break
            if h + 1 == len(self._levels):
                self._levels.append(bytearray())
            parents = self._levels[h + 1]
            done = len(parents) // HASH_SIZE
            todo = n_nodes // 2
            if todo == done:
                break
            chunk = bytes(level[2 * done * HASH_SIZE : 2 * todo * HASH_SIZE])
            pairs = [chunk[i : i + 2 * HASH_SIZE] for i in range(0, len(chunk), 2 * HASH_SIZE)]
            p = NODE_PREFIX
            parents += b"".join([sha256(p + pair).digest() for pair in pairs])
            h += 1

    def leaf(self, index: int) -> bytes:
        return self._node(0, index)

    def _node(self, height: int, index: int) -> bytes:
        off = index * HASH_SIZE
        return bytes(self._levels[height][off : off + HASH_SIZE])

    def subtree_root(self, start: int, stop: int) -> bytes:
        """MTH of leaves ``[start, stop)`` (RFC 6962 §2.1)."""
        n = stop - start
        if n <= 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and start % n == 0:
            h = n.bit_length() - 1
            return self._node(h, start >> h)
        k = largest_pow2_below(n)
        return node_hash(self.subtree_root(start, start + k), self.subtree_root(start + k, stop))

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        self._check_size(size)
        return self.subtree_root(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path of leaf ``index`` in the tree of the first ``size`` leaves
        (RFC 6962 §2.1.1 PATH(m, D[n]))."""
        size = self.size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf index {index} is outside a tree of {size} entries")
        path = []
        lo, hi = 0, size
        while hi - lo > 1:
            k = largest_pow2_below(hi - lo)
            if index < lo + k:
                path.append(self.subtree_root(lo + k, hi))
                hi = lo + k
            else:
                path.append(self.subtree_root(lo, lo + k))
                lo += k
        path.reverse()
        return path

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        """Proof that the tree of ``old`` leaves is a prefix of the tree of ``new`` leaves
        (RFC 6962 §2.1.2 PROOF(m, D[n])); empty when ``old`` is 0 or equals ``new``."""
        new = self.size if new is None else new
        self._check_size(new)
        if not 0 <= old <= new:
            raise ValueError(f"old size {old} must lie between 0 and the new size {new}")
        if old in (0, new):
            return []
        proof = []
        lo, hi, complete = 0, new, True
        while old != hi:  # SUBPROOF(old - lo, D[lo:hi], complete)
            k = largest_pow2_below(hi - lo)
            if old - lo <= k:
                proof.append(self.subtree_root(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self.subtree_root(lo, lo + k))
                lo += k
                complete = False
        if not complete:
            proof.append(self.subtree_root(lo, hi))
        proof.reverse()
        return proof

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} is outside the log's 0..{self.size} entries")


def _lsb(x: int) -> int:
    return x & 1


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Check an inclusion proof (RFC 9162 §2.1.3.2). ``leaf`` is the leaf *hash*."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if _lsb(fn) or fn == sn:
            r = node_hash(p, r)
            if not _lsb(fn):
                while not _lsb(fn) and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Check a consistency proof (RFC 9162 §2.1.4.2): the tree of ``old_size`` leaves with
    root ``old_root`` is a prefix of the tree of ``new_size`` leaves with root ``new_root``."""
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    path = list(proof)
    if not path:
        return False
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while _lsb(fn):
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if _lsb(fn) or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not _lsb(fn):
                while not _lsb(fn) and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
