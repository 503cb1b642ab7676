"""Stateful detection of query-based attacks by query similarity, per client and across clients.

After Blacklight (Li, Shan, Wenger, Zhang, Zheng & Zhao, "Blacklight: Scalable Defense for
Neural Networks against Query-Based Black-Box Attacks", USENIX Security 2022): the
queries of a black-box evasion attack (Square, HopSkipJump, boundary and gradient-
estimation attacks) are near-duplicates of each other: each is the current candidate plus a
small change. Every query is reduced to a fingerprint (:mod:`bastion.guard.fingerprint`:
quantised, sliding windows hashed, top-k hashes) and looked up in two bounded stores:

* a **global** store of the last ``global_store`` fingerprints of every client (a ring
  buffer with a hash → entry index), so an attacker who spreads one attack over several API
  keys still meets its own earlier queries;
* a **per-client** store of the client's last ``client_store`` fingerprints, so a slow
  attacker is not washed out of the global store by other traffic.

A query whose best stored match shares at least ``threshold_`` hashes is a *near-duplicate*
(a hit) of that entry and joins its *anchor* (the first query of the chain of
near-duplicates it belongs to; a query that is no hit starts its own). The client is
alerted when ``min_hits`` of its last ``window_queries`` queries were hits on one anchor:
it keeps querying around one input, which is what a query-based attack does and what a
client sending distinct inputs does not. Hits count for the key that *sent* the
near-duplicate, whichever key's query it matched, so an attack split over several keys is
attributed to every key that took part (each sends near-duplicates of one input), and the
keys it matched are named in the reason; a key whose queries were only matched (a benign
user whose image an attacker perturbed later) is not blamed, and a benign user who sends
that image once after the attack has one hit on the attack's anchor, not ``min_hits``.
Exact repeats (the same input bytes as a stored query) are neither hits nor stored: a
deterministic model answers them with nothing new, and benign clients often re-send the
same input.

``threshold_`` is calibrated in :meth:`SimilarityMonitor.fit` on held-out benign data: the
largest match any benign query reaches against the earlier ones (all kept), plus
``margin`` × k, and never below ``min_share`` × k. Window contents common to more than
``stop_share`` of the held-out queries (blank background) are put on a stop list.

Limits: an attacker who spreads the queries around each input over more keys than
``min_hits`` allows (so that no key sends two near-duplicates of one input within its
window) is not attributed; nor is one whose changes exceed the quantisation step on most
windows (a transformation per query), which also costs it the small steps these attacks
rely on.

Memory is bounded: at most ``max_clients`` clients (least recently seen evicted), and
``global_store`` + ``client_store`` × clients fingerprints of at most ``top_k`` 8-byte
hashes (about 35 MB for the defaults at 1 000 clients). Work per query is O(top_k).
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field

from bastion.errors import ConfigError, NotFittedError
from bastion.guard.clients import ClientTable
from bastion.guard.config import SimilarityConfig
from bastion.guard.fingerprint import Fingerprinter, auto_window, common_hashes, shared
from bastion.guard.policy import ClientSignal

_MAX_LINKS = 32


class SimilarityStatus(BaseModel):
    """The similarity detector's view of one client after its latest query."""

    client_id: str
    queries: int = 0
    repeats: int = 0
    hits: int = Field(0, description="near-duplicates among the client's last `window` queries")
    anchor_hits: int = Field(0, description="the most of them around one input (the alarm)")
    total_hits: int = 0
    last_match: int = Field(0, description="hashes its latest query shared with a stored one")
    threshold: int = 0
    alert: bool = False
    reason: str | None = None
    alert_at_query: int | None = None
    linked_clients: list[str] = Field(default_factory=list)

    def signal(self) -> ClientSignal:
        scores = (
            ("similarity.match", float(self.last_match)),
            ("similarity.hits", float(self.anchor_hits)),
        )
        reasons = (f"client {self.client_id}: {self.reason}",) if self.alert else ()
        return ClientSignal(self.alert, False, scores, reasons)


def _digest(row: np.ndarray) -> int:
    return int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little")


class _GlobalStore:
    """The last ``capacity`` fingerprints of every client: a ring buffer of rows (with their
    owner and anchor), an index hash → the latest entry holding it, and digest → entry for
    exact repeats. Entries are numbered by ``seq``; entry e lives in slot e % capacity."""

    def __init__(self, capacity: int, k: int) -> None:
        self.capacity = capacity
        self.rows = np.zeros((capacity, k), dtype=np.uint64)
        self.sizes = np.zeros(capacity, dtype=np.int64)
        self.owners: list[str | None] = [None] * capacity
        self.anchors = np.zeros(capacity, dtype=np.int64)
        self.digests = np.zeros(capacity, dtype=np.uint64)
        self.index: dict[int, int] = {}
        self.by_digest: dict[int, int] = {}
        self.seq = 0

    def best(self, fp: np.ndarray) -> tuple[int, str | None, int]:
        """(shared hashes, owner, anchor) of the entry sharing most hashes with ``fp``."""
        hits = Counter(self.index.get(h) for h in fp.tolist())
        hits.pop(None, None)
        if not hits:
            return 0, None, -1
        entry, count = hits.most_common(1)[0]
        slot = entry % self.capacity
        return count, self.owners[slot], int(self.anchors[slot])

    def add(self, fp: np.ndarray, owner: str, digest: int, anchor: int) -> int:
        """Store ``fp``; returns its entry number."""
        slot = self.seq % self.capacity
        if self.seq >= self.capacity:  # evict the oldest entry
            old = self.seq - self.capacity
            for h in self.rows[slot, : self.sizes[slot]].tolist():
                if self.index.get(h) == old:
                    del self.index[h]
            if self.by_digest.get(int(self.digests[slot])) == old:
                del self.by_digest[int(self.digests[slot])]
        self.rows[slot] = 0
        self.rows[slot, : fp.size] = fp
        self.sizes[slot] = fp.size
        self.owners[slot] = owner
        self.anchors[slot] = self.seq if anchor < 0 else anchor
        self.digests[slot] = np.uint64(digest)
        for h in fp.tolist():
            self.index[h] = self.seq
        self.by_digest[digest] = self.seq
        self.seq += 1
        return self.seq - 1


@dataclass
class _Client:
    capacity: int
    k: int
    window: int
    rows: np.ndarray = field(init=False)
    anchors: np.ndarray = field(init=False)
    digests: np.ndarray = field(init=False)
    stored: int = 0
    recent: deque = field(init=False)  # anchor of each of the last `window` hits, -1 = none
    per_anchor: Counter = field(default_factory=Counter)
    links: OrderedDict = field(default_factory=OrderedDict)
    queries: int = 0
    repeats: int = 0
    hits: int = 0  # hits among ``recent``
    total_hits: int = 0
    last_match: int = 0
    alert: bool = False
    reason: str | None = None
    alert_at: int | None = None

    def __post_init__(self) -> None:
        self.rows = np.zeros((self.capacity, self.k), dtype=np.uint64)
        self.anchors = np.zeros(self.capacity, dtype=np.int64)
        self.digests = np.zeros(self.capacity, dtype=np.uint64)
        self.recent = deque(maxlen=self.window)

    def best(self, fp: np.ndarray) -> tuple[int, int]:
        """(shared hashes, anchor) of the client's stored query closest to ``fp``."""
        n = min(self.stored, self.capacity)
        if not n:
            return 0, -1
        counts = shared(fp, self.rows[:n])
        i = int(counts.argmax())
        return int(counts[i]), int(self.anchors[i])

    def has(self, digest: int) -> bool:
        n = min(self.stored, self.capacity)
        return bool((self.digests[:n] == np.uint64(digest)).any())

    def add(self, fp: np.ndarray, digest: int, anchor: int) -> None:
        slot = self.stored % self.capacity
        self.rows[slot] = 0
        self.rows[slot, : fp.size] = fp
        self.anchors[slot] = anchor
        self.digests[slot] = np.uint64(digest)
        self.stored += 1

    def push(self, anchor: int) -> None:
        """Note one query: a hit on ``anchor``, or no hit (-1)."""
        if len(self.recent) == self.recent.maxlen and self.recent[0] >= 0:
            old = self.recent[0]
            self.hits -= 1
            self.per_anchor[old] -= 1
            if self.per_anchor[old] <= 0:
                del self.per_anchor[old]
        self.recent.append(anchor)
        if anchor >= 0:
            self.hits += 1
            self.per_anchor[anchor] += 1

    @property
    def top(self) -> int:
        """Most hits on one anchor within the window."""
        return max(self.per_anchor.values(), default=0)

    def link(self, other: str) -> None:
        self.links[other] = self.links.pop(other, 0) + 1
        while len(self.links) > _MAX_LINKS:
            self.links.popitem(last=False)


class SimilarityMonitor:
    """Blacklight-style near-duplicate detection (module docstring). ``fit(x_heldout)``
    learns the stop list and calibrates the match threshold on held-out benign inputs (range-
    scaled, (N, D) or (N, ...)); ``observe(client, x)`` returns one
    :class:`SimilarityStatus` per query. Thread-safe."""

    def __init__(self, config: SimilarityConfig | None = None) -> None:
        self.config = config or SimilarityConfig()
        self._clients: ClientTable[_Client] = ClientTable()
        self._lock = self._clients.lock

    # -- fitting ----------------------------------------------------------------------------
    def fit(self, x: torch.Tensor, *, seed: int = 0) -> SimilarityMonitor:
        """Calibrate on held-out benign inputs ``x`` (never the model's training rows): the
        stop list, then ``threshold_`` from the matches of ``x`` streamed in a seeded random
        order through an unbounded store."""
        cfg = self.config
        flat = _flat(x)
        if flat.shape[0] < 2:
            raise ConfigError("calibrating the similarity detector needs >= 2 held-out inputs")
        self.dim_ = int(flat.shape[1])
        self.window_ = int(cfg.window or auto_window(self.dim_))
        self.salt_ = int(cfg.salt) if cfg.salt is not None else secrets.randbits(62)
        base = self._fingerprinter(np.zeros(0, dtype=np.uint64))
        self.k_ = int(min(cfg.top_k, base.n_windows))
        self.stop_ = common_hashes(base, flat, cfg.stop_share)
        self._make()
        order = np.random.default_rng(seed).permutation(flat.shape[0])
        probe = _GlobalStore(flat.shape[0], self.k_)
        best: list[int] = []
        seen: set[int] = set()
        for i in range(0, len(order), 512):
            rows = flat[order[i : i + 512]]
            for row, fp in zip(rows, self._fp(rows), strict=True):
                digest = _digest(row)
                if digest in seen:
                    continue
                seen.add(digest)
                best.append(probe.best(fp)[0])
                probe.add(fp, "calibration", digest, -1)
        matches = np.array(best)
        self.n_calibration_ = int(matches.size)
        self.benign_max_ = int(matches.max())
        self.benign_p999_ = float(np.quantile(matches, 0.999))
        if cfg.match_threshold is not None:
            self.threshold_ = int(cfg.match_threshold)
        else:
            self.threshold_ = int(
                max(
                    math.ceil(cfg.min_share * self.k_),
                    self.benign_max_ + max(1, math.ceil(cfg.margin * self.k_)),
                )
            )
        return self

    def _fingerprinter(self, stop: np.ndarray) -> Fingerprinter:
        cfg = self.config
        return Fingerprinter(
            self.dim_,
            levels=cfg.levels,
            window=self.window_,
            top_k=cfg.top_k,
            salt=self.salt_,
            stop=stop,
        )

    def _make(self) -> None:
        self._fp = self._fingerprinter(self.stop_)
        self._global = _GlobalStore(self.config.global_store, self.k_)

    def _check(self) -> None:
        if not hasattr(self, "threshold_"):
            raise NotFittedError(self, "fit")

    # -- runtime ----------------------------------------------------------------------------
    def prepare(self, x: torch.Tensor) -> tuple[list[np.ndarray], list[int]]:
        """What :meth:`observe` computes of a batch before touching any state: each row's
        fingerprint and digest (once for a micro-batch of several clients)."""
        self._check()
        flat = _flat(x)
        return self._fp(flat), [_digest(row) for row in flat]

    def observe(
        self,
        client_id: str,
        x: torch.Tensor,
        prepared: tuple[list[np.ndarray], list[int]] | None = None,
    ) -> list[SimilarityStatus]:
        """Record a batch of (range-scaled) queries from ``client_id``; one status each.
        ``prepared``: :meth:`prepare` of these rows, when already computed."""
        self._check()
        cfg = self.config
        fps, digests = prepared if prepared is not None else self.prepare(x)
        out = []
        with self._lock:
            client = self._clients.touch(
                client_id,
                lambda: _Client(cfg.client_store, self.k_, cfg.window_queries),
                cfg.max_clients,
            )
            for fp, digest in zip(fps, digests, strict=True):
                client.queries += 1
                if digest in self._global.by_digest or client.has(digest):
                    client.repeats += 1
                    client.push(-1)
                    client.last_match = 0
                else:
                    self._step(client_id, client, fp, digest)
                out.append(self._status(client_id, client))
        return out

    def _step(self, client_id: str, client: _Client, fp: np.ndarray, digest: int) -> None:
        cfg = self.config
        g_count, owner, g_anchor = self._global.best(fp)
        c_count, c_anchor = client.best(fp)
        client.last_match = max(g_count, c_count)
        hit = client.last_match >= self.threshold_
        anchor = -1
        if hit:
            client.total_hits += 1
            anchor = g_anchor if g_count >= c_count else c_anchor
            if g_count >= self.threshold_ and owner is not None and owner != client_id:
                client.link(owner)
        entry = self._global.add(fp, client_id, digest, anchor)
        client.add(fp, digest, entry if anchor < 0 else anchor)
        client.push(anchor)
        if hit and not client.alert and client.per_anchor[anchor] >= cfg.min_hits:
            client.alert, client.alert_at = True, client.queries
            client.reason = self._reason(client)
        elif client.alert and not cfg.sticky and client.top < cfg.min_hits:
            client.alert, client.reason = False, None

    def _reason(self, client: _Client) -> str:
        linked = f"; matched queries of client(s) {', '.join(client.links)}" if client.links else ""
        return (
            f"similarity: {client.top} near-duplicates of one input among its last "
            f"{len(client.recent)} queries ({client.hits} in all; >= {self.threshold_} of "
            f"{self.k_} hashes shared with a stored query){linked}"
        )

    def _status(self, client_id: str, client: _Client) -> SimilarityStatus:
        return SimilarityStatus.model_construct(
            client_id=client_id,
            queries=client.queries,
            repeats=client.repeats,
            hits=client.hits,
            anchor_hits=client.top,
            total_hits=client.total_hits,
            last_match=client.last_match,
            threshold=self.threshold_,
            alert=client.alert,
            reason=client.reason,
            alert_at_query=client.alert_at,
            linked_clients=list(client.links),
        )

    def status(self, client_id: str) -> SimilarityStatus:
        """The current view of one client (an empty status for an unknown client)."""
        self._check()
        with self._lock:
            client = self._clients.get(client_id)
            if client is None:
                return SimilarityStatus(client_id=client_id, threshold=self.threshold_)
            return self._status(client_id, client)

    def reset(self, client_id: str) -> None:
        """Forget a client's alert and counts (its queries stay in the global store)."""
        self._clients.discard(client_id)

    def clients(self) -> list[str]:
        return self._clients.ids()

    # -- persistence ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What ``fit`` learned, JSON-ready (per-client state is not saved)."""
        self._check()
        return {
            "config": self.config.model_dump(mode="json"),
            "dim_": self.dim_,
            "window_": self.window_,
            "k_": self.k_,
            "salt_": str(self.salt_),
            "stop_": [str(int(h)) for h in self.stop_],
            "threshold_": self.threshold_,
            "benign_max_": self.benign_max_,
            "benign_p999_": self.benign_p999_,
            "n_calibration_": self.n_calibration_,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SimilarityMonitor:
        monitor = cls(SimilarityConfig.model_validate(state["config"]))
        monitor.dim_ = int(state["dim_"])
        monitor.window_ = int(state["window_"])
        monitor.k_ = int(state["k_"])
        monitor.salt_ = int(state["salt_"])
        monitor.stop_ = np.array([int(h) for h in state["stop_"]], dtype=np.uint64)
        monitor.threshold_ = int(state["threshold_"])
        monitor.benign_max_ = int(state["benign_max_"])
        monitor.benign_p999_ = float(state["benign_p999_"])
        monitor.n_calibration_ = int(state["n_calibration_"])
        monitor._make()
        return monitor


def _flat(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(len(x), -1))
    return arr
