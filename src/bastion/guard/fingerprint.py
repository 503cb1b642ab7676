"""Query fingerprints for the similarity detector (Blacklight, Li et al., USENIX Security 2022).

A query (any shape, flattened, range-scaled to [0, 1] per feature) is quantised to
``levels`` values per feature; every window of ``window`` consecutive quantised values is
hashed; hashes on the *stop list* (window contents common to many benign queries, such as
an all-background window, learned on held-out data) are dropped; the ``top_k`` largest
distinct hash values are the fingerprint. Two queries that share many hashes share many
windows exactly: a small change (the few pixels a Square step or a HopSkipJump probe
touches, noise below the quantisation step) leaves most windows, and so most of the top-k,
unchanged, while distinct natural inputs share few.

The window hash is a keyed polynomial hash: ``Σ_j q[i+j]·B^j mod 2^64`` (computed for all
windows at once from prefix sums and the inverse powers of the odd base ``B``), then a
splitmix64 finaliser salted with a per-guard secret, so an attacker cannot tell which
windows make the top-k. It is not a cryptographic hash: collisions only ever add a match,
and evading the detector means changing the windows themselves.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK = (1 << 64) - 1


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on every element (uint64, wrapping)."""
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    return h ^ (h >> np.uint64(31))


def auto_window(dim: int) -> int:
    """The default window length: an eighth of the input, between 4 and 20 features
    (Blacklight uses 20 on 32×32×3 images; 8 on 8×8 digits)."""
    return int(min(20, max(4, dim // 8), dim))


class Fingerprinter:
    """Maps a batch (N, D) in [0, 1] to N fingerprints of at most ``top_k`` distinct uint64
    hashes each (sorted). ``salt`` keys the hash; ``stop`` holds dropped window hashes."""

    def __init__(
        self,
        dim: int,
        *,
        levels: int,
        window: int,
        top_k: int,
        salt: int,
        stop: np.ndarray | None = None,
    ) -> None:
        self.dim, self.levels, self.top_k, self.salt = dim, levels, top_k, salt
        self.window = min(window, dim)
        base = (salt * 2 + 1) & _MASK | 1  # odd, so invertible mod 2^64
        inverse = pow(base, -1, 1 << 64)
        self._pow = _powers(base, dim + 1)
        self._inv = _powers(inverse, dim + 1)
        self._salt = np.uint64(salt & _MASK)
        self.stop = np.sort(np.asarray(stop if stop is not None else [], dtype=np.uint64))

    @property
    def n_windows(self) -> int:
        return self.dim - self.window + 1

    def window_hashes(self, x: np.ndarray) -> np.ndarray:
        """Every window hash of every row: (N, D − window + 1) uint64."""
        q = np.clip(np.floor(x * self.levels), 0, self.levels - 1).astype(np.uint64) + np.uint64(1)
        n, w = q.shape[0], self.window
        with np.errstate(over="ignore"):
            prefix = np.zeros((n, self.dim + 1), dtype=np.uint64)
            np.cumsum(q * self._pow[: self.dim], axis=1, dtype=np.uint64, out=prefix[:, 1:])
            nw = self.n_windows
            h = (prefix[:, w : w + nw] - prefix[:, :nw]) * self._inv[:nw]
            return _mix(h ^ self._salt)

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """Fingerprints of a batch: per row, its ``top_k`` largest distinct window hashes
        that are not on the stop list (sorted ascending; fewer when the row has fewer)."""
        h = np.sort(self.window_hashes(x), axis=1)
        out = []
        for row in h:
            keep = np.empty(row.shape, dtype=bool)
            keep[0] = True
            np.not_equal(row[1:], row[:-1], out=keep[1:])
            row = row[keep]
            if self.stop.size:
                row = row[~_member(row, self.stop)]
            out.append(row[-self.top_k :])
        return out


def _powers(base: int, n: int) -> np.ndarray:
    out = np.empty(n, dtype=np.uint64)
    v = 1
    for i in range(n):
        out[i] = v
        v = (v * base) & _MASK
    return out


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``values ∈ sorted_set`` elementwise (both uint64, ``sorted_set`` sorted, non-empty)."""
    pos = np.searchsorted(sorted_set, values).clip(0, sorted_set.size - 1)
    return sorted_set[pos] == values


def shared(fp: np.ndarray, store: np.ndarray) -> np.ndarray:
    """How many hashes of the sorted fingerprint ``fp`` each row of ``store`` (M, k) holds
    (zeros in ``store`` are empty slots; fingerprints never contain 0 in practice)."""
    if fp.size == 0 or store.size == 0:
        return np.zeros(store.shape[0], dtype=np.int64)
    pos = np.searchsorted(fp, store).clip(0, fp.size - 1)
    return ((fp[pos] == store) & (store != 0)).sum(1)


def common_hashes(fingerprinter: Fingerprinter, x: np.ndarray, share: float) -> np.ndarray:
    """The window hashes present in more than ``share`` of the rows of ``x`` (each row
    counted once): contents so common in benign data that they identify nothing."""
    counts: dict[int, int] = {}
    for i in range(0, len(x), 512):
        for row in fingerprinter.window_hashes(x[i : i + 512]):
            for h in np.unique(row).tolist():
                counts[h] = counts.get(h, 0) + 1
    limit = share * len(x)
    return np.array(sorted(h for h, c in counts.items() if c > limit), dtype=np.uint64)
