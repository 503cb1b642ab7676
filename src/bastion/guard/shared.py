"""Where the guard's stateful monitors get their observations: this process only, or every
replica of the gateway (through Redis).

The stateful monitors (PRADA extraction, similarity, coverage, the drift window) decide
from what each client sent *before*. Behind a load balancer a client's queries are spread
over replicas; if each replica kept its own state, an attacker alternating between ``n``
replicas would be seen ``1/n`` at a time and alerted ``n`` times later, if ever.

So replicas share the monitors' *input* rather than their internal state: every guarded
batch becomes one :class:`Observation` (the range-scaled inputs, the model's features and
predicted classes, which samples an input detector flagged, the time) appended to one
ordered log, and every replica applies every observation of the log, in the log's order,
to its own monitors before it decides on its own batch. The monitors are deterministic
(the similarity fingerprints' salt, PRADA's projection and the coverage projection are
fitted, saved with the guard and loaded by every replica), so each replica's state is the
state one process would have after the same queries in the same order, and an attacker
spread over replicas is alerted at the same query as against one process. What is *not*
shared: nothing of the monitors' state, but the work: every replica updates its monitors
for the whole deployment's traffic (the model pass, the input detectors, validation,
auth and the audit are per request and scale out; the state updates do not).

:class:`LocalClientState` is the single-process log (the default; no copy, no I/O); the
guard skips it altogether when no shared store is attached. :class:`RedisClientState`
keeps the log in a Redis stream (``XADD`` with an approximate ``MAXLEN``; a replica that
starts replays what the stream still holds, so it starts with the deployment's state).
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from bastion.errors import BastionError, ConfigError

log = logging.getLogger(__name__)


class SharedStateUnavailable(BastionError):
    """The shared log of observations cannot be reached: the guard cannot decide with the
    deployment's state, so the request fails (503), never served on a partial view."""


@dataclass(frozen=True)
class Observation:
    """One guarded batch as the stateful monitors need it (``kind`` "reset": a reviewer
    cleared the client, which every replica must forget too)."""

    client_id: str
    scaled: np.ndarray = field(repr=False)  # (N, ...) float32, range-scaled inputs
    features: np.ndarray = field(repr=False)  # (N, D) float32, the model's features
    predictions: np.ndarray = field(repr=False)  # (N,) int64, the predicted classes
    anomalous: np.ndarray = field(repr=False)  # (N,) bool, an input detector fired
    now: float = 0.0  # the time the batch arrived (seconds since the epoch)
    kind: Literal["observe", "reset"] = "observe"

    @classmethod
    def reset(cls, client_id: str) -> Observation:
        empty = np.zeros(0, dtype=np.float32)
        return cls(
            client_id,
            empty,
            empty.reshape(0, 0),
            np.zeros(0, np.int64),
            np.zeros(0, bool),
            kind="reset",
        )


class ClientStateStore(Protocol):
    """The ordered log of observations the guard's monitors are fed from."""

    def exchange(self, obs: Observation) -> Iterator[tuple[Observation, bool]]:
        """Append ``obs``; yield every observation not yet applied here, in log order, up to
        and including ``obs`` (flagged True), which the caller applies in that order."""
        ...

    def exchange_many(self, batch: list[Observation]) -> Iterator[tuple[Observation, int | None]]:
        """:meth:`exchange` for several observations at once (one micro-batch of several
        clients): each of ``batch`` is flagged with its index in ``batch``, the others' with
        None, all in log order."""
        ...

    def catch_up(self) -> Iterator[Observation]:
        """Every observation appended elsewhere and not yet applied here, in log order."""
        ...

    def close(self) -> None: ...


class LocalClientState:
    """One process: the log is the calls themselves."""

    def exchange(self, obs: Observation) -> Iterator[tuple[Observation, bool]]:
        yield obs, True

    def exchange_many(self, batch: list[Observation]) -> Iterator[tuple[Observation, int | None]]:
        yield from ((obs, i) for i, obs in enumerate(batch))

    def catch_up(self) -> Iterator[Observation]:
        return iter(())

    def close(self) -> None:
        return None


# -- encoding ------------------------------------------------------------------------------


def _shape(a: np.ndarray) -> bytes:
    return ",".join(str(int(s)) for s in a.shape).encode()


def encode(obs: Observation, replica: str) -> dict[str, bytes]:
    """The stream fields of ``obs`` (arrays as little-endian bytes with their shapes)."""
    return {
        "k": obs.kind.encode(),
        "c": obs.client_id.encode("utf-8", "surrogatepass"),
        "r": replica.encode(),
        "t": repr(float(obs.now)).encode(),
        "x": np.ascontiguousarray(obs.scaled, dtype="<f4").tobytes(),
        "xs": _shape(obs.scaled),
        "f": np.ascontiguousarray(obs.features, dtype="<f4").tobytes(),
        "fs": _shape(obs.features),
        "p": np.ascontiguousarray(obs.predictions, dtype="<i8").tobytes(),
        "a": np.ascontiguousarray(obs.anomalous, dtype=np.uint8).tobytes(),
    }


def _array(data: bytes, dtype: str, shape: bytes | None) -> np.ndarray:
    arr = np.frombuffer(data, dtype=dtype)
    if shape is None:
        return arr.copy()
    dims = tuple(int(s) for s in shape.decode().split(",") if s)
    return arr.reshape(dims).copy()


def decode(fields: dict[bytes, bytes]) -> Observation:
    """The observation of stream ``fields``; ValueError / KeyError when they are not one."""
    kind = fields[b"k"].decode()
    if kind not in ("observe", "reset"):
        raise ValueError(f"unknown observation kind {kind!r}")
    client = fields[b"c"].decode("utf-8", "surrogatepass")
    if kind == "reset":
        return Observation.reset(client)
    scaled = _array(fields[b"x"], "<f4", fields[b"xs"])
    features = _array(fields[b"f"], "<f4", fields[b"fs"])
    preds = _array(fields[b"p"], "<i8", None)
    anomalous = _array(fields[b"a"], "u1", None).astype(bool)
    n = scaled.shape[0] if scaled.ndim else 0
    if not (features.shape[0] == preds.shape[0] == anomalous.shape[0] == n):
        raise ValueError("the arrays of an observation differ in length")
    return Observation(client, scaled, features, preds, anomalous, float(fields[b"t"]), "observe")


# -- Redis ---------------------------------------------------------------------------------


class RedisClientState:
    """The log in the Redis stream ``stream``, shared by every replica that names it.

    ``maxlen`` bounds the stream (approximately, as ``XADD MAXLEN ~``): a replica that falls
    further behind than that, or starts after, misses the oldest observations (the monitors'
    own windows are far shorter by default). Calls are synchronous: the guard runs them in
    its worker thread, never on the event loop."""

    def __init__(
        self,
        url: str,
        stream: str,
        *,
        maxlen: int = 50_000,
        timeout_s: float = 2.0,
        page: int = 500,
    ) -> None:
        try:
            import redis
        except ImportError:  # pragma: no cover - redis is in the `scale` extra
            raise ConfigError(
                "--redis-url needs the redis package: pip install 'bastion-ml[scale]'"
            ) from None
        self.url, self.stream, self.maxlen, self.page = url, stream, maxlen, page
        self.replica = f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
        try:
            self._client = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
            )
        except ValueError as exc:
            raise ConfigError(f"bad --redis-url {url!r}: {exc}") from None
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._last = b"0-0"  # the newest entry applied here
        # entries trimmed (or deleted) from the stream before this replica read them: each
        # time it is found (checked at most every gap_check_s), its monitors miss them
        self.gaps = 0
        self.gap_check_s = 1.0
        self._gap_checked = float("-inf")

    def ping(self) -> None:
        """Fail fast at start-up when Redis cannot be reached."""
        try:
            self._client.ping()
        except self._errors as exc:
            raise ConfigError(f"cannot reach Redis at {self.url}: {exc}") from None

    def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except self._errors as exc:
            log.error("shared guard state: Redis call failed (%s)", exc)
            raise SharedStateUnavailable(f"shared guard state unavailable: {exc}") from None

    def check_gap(self, *, force: bool = False) -> bool:
        """True (and an error logged, ``gaps`` counted) when entries newer than the last one
        applied here were removed from the stream before this replica read them — the
        stream's ``maxlen`` is too short for the deployment's traffic, or someone deleted
        entries — so the monitors here missed observations. Seen from ``XINFO STREAM``: the
        oldest entry kept is newer than the last one applied (trimmed past this replica), or
        the newest deleted one is (``XDEL``; Redis ≥ 7). Asked at most every
        ``gap_check_s`` unless ``force``."""
        now = time.monotonic()
        if not force and now - self._gap_checked < self.gap_check_s:
            return False
        self._gap_checked = now
        if self._last == b"0-0":
            return False  # nothing applied yet: the replay starts at the oldest entry kept
        info = self._call(self._client.xinfo_stream, self.stream)
        if not isinstance(info, dict):
            return False
        deleted = info.get("max-deleted-entry-id") or b"0-0"  # XDEL
        first = info.get("recorded-first-entry-id") or b"0-0"  # trimming moves it
        # the oldest entry kept is newer than the last applied here: this replica fell
        # behind the trimmed window (the entries between were most likely never read)
        behind = _entry_key(first) > _entry_key(self._last) and info.get("length", 0) > 0
        if behind:
            deleted = max(deleted, _prev(first), key=_entry_key)
        if _entry_key(deleted) <= _entry_key(self._last):
            return False
        self.gaps += 1
        log.error(
            "shared guard state: entries after %s (up to %s) were removed from %s before this "
            "replica read them: its monitors missed those observations (raise "
            "shared_state.max_entries)",
            self._last.decode(),
            deleted.decode() if isinstance(deleted, bytes) else deleted,
            self.stream,
        )
        self._last = max(self._last, deleted, key=_entry_key)  # report each loss once
        return True

    def _read(self, upto: bytes | str) -> Iterator[tuple[bytes, Observation]]:
        """Entries after the last applied one up to ``upto`` (inclusive), page by page."""
        self.check_gap()
        while True:
            rows = self._call(
                self._client.xrange,
                self.stream,
                min=b"(" + self._last,
                max=upto,
                count=self.page,
            )
            for entry_id, fields in rows:
                self._last = entry_id
                try:
                    yield entry_id, decode(fields)
                except (KeyError, ValueError, UnicodeDecodeError) as exc:
                    log.error("shared guard state: entry %r skipped (%s)", entry_id, exc)
            if len(rows) < self.page:
                return

    def exchange(self, obs: Observation) -> Iterator[tuple[Observation, bool]]:
        own = self._call(
            self._client.xadd,
            self.stream,
            encode(obs, self.replica),
            maxlen=self.maxlen,
            approximate=True,
        )
        seen = False
        for entry_id, other in self._read(own):
            if entry_id == own:
                seen = True
                yield obs, True
            else:
                yield other, False
        if not seen:  # trimmed before it was read back (a stream far too short): still ours
            self._last = max(self._last, own, key=_entry_key)
            yield obs, True

    def exchange_many(self, batch: list[Observation]) -> Iterator[tuple[Observation, int | None]]:
        """Every observation of ``batch`` appended in one pipelined round trip, then one
        read of the log up to the last of them."""
        if not batch:
            return
        pipe = self._client.pipeline(transaction=False)
        for obs in batch:
            pipe.xadd(self.stream, encode(obs, self.replica), maxlen=self.maxlen, approximate=True)
        ids: list[bytes] = self._call(pipe.execute)
        mine = {entry_id: i for i, entry_id in enumerate(ids)}
        seen: set[int] = set()
        for entry_id, other in self._read(max(ids, key=_entry_key)):
            i = mine.get(entry_id)
            if i is None:
                yield other, None
            else:
                seen.add(i)
                yield batch[i], i
        for i, obs in enumerate(batch):  # trimmed before read back (a stream far too short)
            if i not in seen:
                self._last = max(self._last, ids[i], key=_entry_key)
                yield obs, i

    def catch_up(self) -> Iterator[Observation]:
        for _, other in self._read(b"+"):
            yield other

    def close(self) -> None:
        self._client.close()


def _prev(entry_id: bytes) -> bytes:
    """The id just before ``entry_id`` (the newest one a trim can have removed)."""
    ms, seq = _entry_key(entry_id)
    return f"{ms}-{seq - 1}".encode() if seq else f"{ms - 1}-{2**63 - 1}".encode()


def _entry_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)
