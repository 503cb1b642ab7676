"""The monitor page's per-key view of the guard's stateful detectors: for every API key the
guard has seen, its query count and what the extraction monitor (PRADA, anomaly rate,
volume) and the query-attack detectors (similarity, coverage) say about it, alerts first.

Read through the guard's own status methods (``client_status``, ``query_status``), which
sync replicas' shared state first, so a key spreading its queries over replicas shows
whole. Runs in a worker thread (the statuses may call Redis)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bastion.store import keys as keystore

SHOWN = 50


@dataclass(frozen=True)
class ClientWatch:
    key_id: int
    name: str
    role: str
    queries: int
    alerts: list[str]  # the detectors that alerted, each "name at query N"
    reasons: list[str]
    prada_w: float | None
    anomaly_rate: float

    @property
    def alerted(self) -> bool:
        return bool(self.alerts)


def _row(key: keystore.KeyInfo, guard: Any) -> ClientWatch | None:
    cid = str(key.id)
    ext = guard.client_status(cid) if hasattr(guard, "client_status") else None
    qry = guard.query_status(cid) if hasattr(guard, "query_status") else None
    monitors = [ext, *((qry.similarity, qry.coverage) if qry is not None else ())]
    queries = max((m.queries for m in monitors if m is not None), default=0)
    if queries == 0:
        return None
    alerts: list[str] = []
    reasons: list[str] = []
    if ext is not None:
        if ext.extraction_alert:
            alerts.append(f"extraction at query {ext.alert_at_query}")
            reasons.append(ext.alert_reason or "extraction alert")
        if ext.volume_alert:
            alerts.append("volume")
            reasons.append(f"{ext.volume} queries in the volume window")
    if qry is not None:
        for name, at in qry.alerts.items():
            alerts.append(f"{name} at query {at}")
        for st in (qry.similarity, qry.coverage):
            if st is not None and st.alert and st.reason:
                reasons.append(st.reason)
    return ClientWatch(
        key_id=key.id,
        name=key.name or f"key {key.id}",
        role=key.role,
        queries=queries,
        alerts=alerts,
        reasons=reasons,
        prada_w=ext.prada_w if ext is not None else None,
        anomaly_rate=ext.anomaly_rate if ext is not None else 0.0,
    )


def watched_clients(engine: Any, guard: Any) -> list[ClientWatch]:
    """The keys the guard holds state for, alerted ones first, then by query count (at most
    ``SHOWN``); empty without a guard or without stateful detectors."""
    if guard is None or not (hasattr(guard, "client_status") or hasattr(guard, "query_status")):
        return []
    rows = [r for k in keystore.list_keys(engine) if (r := _row(k, guard)) is not None]
    rows.sort(key=lambda r: (not r.alerted, -r.queries, r.key_id))
    return rows[:SHOWN]
