"""Assessment runs: one row per `bastion assess` (and demo) with the report summary."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Float, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from bastion.assess.schema import Report
from bastion.errors import StoreError
from bastion.store.db import Base, make_engine, session_factory
from bastion.store.ids import storable
from bastion.store.types import UTCDateTime


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime(), default=lambda: datetime.now(UTC))
    kind: Mapped[str] = mapped_column(String(32), default="assess")
    model_name: Mapped[str] = mapped_column(String(256))
    model_sha256: Mapped[str] = mapped_column(String(64))
    dataset_name: Mapped[str] = mapped_column(String(256))
    dataset_sha256: Mapped[str] = mapped_column(String(64))
    out_dir: Mapped[str] = mapped_column(Text)
    score: Mapped[float] = mapped_column(Float)
    n_findings: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    report_json: Mapped[str] = mapped_column(Text)


def record_run(
    report: Report, out_dir: str, *, kind: str = "assess", url: str | None = None
) -> int:
    """Store a run; returns its id."""
    engine = make_engine(url)
    with session_factory(engine)() as session, session.begin():
        run = Run(
            kind=kind,
            model_name=report.model.name,
            model_sha256=report.model.sha256,
            dataset_name=report.dataset.name,
            dataset_sha256=report.dataset.sha256,
            out_dir=out_dir,
            score=report.score,
            n_findings=len(report.findings),
            seconds=report.seconds,
            report_json=report.model_dump_json(),
        )
        session.add(run)
        session.flush()
        run_id = run.id
    engine.dispose()
    return run_id


def list_runs(*, limit: int = 20, url: str | None = None) -> list[Run]:
    engine = make_engine(url)
    with session_factory(engine)() as session:
        rows = list(session.scalars(select(Run).order_by(Run.id.desc()).limit(limit)))
    engine.dispose()
    return rows


def get_run(run_id: int, *, url: str | None = None) -> Run:
    engine = make_engine(url)
    with session_factory(engine)() as session:
        run = session.get(Run, run_id) if storable(engine, run_id) else None
    engine.dispose()
    if run is None:
        raise StoreError(f"no run with id {run_id}: see `bastion runs list`")
    return run
