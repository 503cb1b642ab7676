"""The assessment pages (reviewer or admin): ``/assessments`` (every run: model, date,
score, recorded gate verdict), ``/assessments/{ref}`` (the report's content: the plain-words
summary, what changed since the model's previous run, the evidence figures and adversarial
examples, the findings) and ``/assessments/compare?a=REF&b=REF`` (two runs compared,
regressions highlighted). The pieces are those of ``report.html``
(:mod:`bastion.report`), rendered in the dashboard's own templates and stylesheet (so the
strict CSP holds: figures are ``data:`` PNGs, which ``img-src`` admits)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from bastion.assess.schema import Report
from bastion.dashboard import assessments as runs
from bastion.dashboard.render import error_page, page
from bastion.dashboard.session import DashboardUser, Viewer
from bastion.report.diff import RunComparison, compare_reports
from bastion.report.evidence import EvidencePlot, evidence_plots
from bastion.report.gallery import Gallery, build_gallery
from bastion.report.html import severity_class
from bastion.report.plots import accuracy_bars, series_plot
from bastion.report.summary import Summary, build_summary

router = APIRouter(include_in_schema=False)
RefQuery = Annotated[str, Query(max_length=210, description="a run: a stored id or dir:NAME")]
_PLOTTING = threading.Lock()  # pyplot keeps global state: one figure at a time


@dataclass(frozen=True)
class ReportView:
    """What the detail page shows of a report (figures as data URIs)."""

    summary: Summary
    evidence: list[EvidencePlot]
    gallery: Gallery | None
    bars: str | None
    plots: list[str]


def fmt(value: object) -> str:
    """A metric as the report prints it (4 significant digits)."""
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def runs_dir(request: Request) -> Path | None:
    """The run folders of ``bastion dashboard --runs DIR`` (None under ``bastion serve``)."""
    return getattr(request.app.state, "dashboard_runs_dir", None)


def report_view(a: runs.Assessment) -> ReportView | None:
    """The summary and figures of ``a``'s report (None when it has no valid report)."""
    report = a.report
    if report is None:
        return None
    with _PLOTTING:
        evidence = evidence_plots(report.findings)
        drawn = {k for p in evidence for k in p.findings}
        plots = [
            p
            for p in (series_plot(f) for f in report.findings if f.series and f.key not in drawn)
            if p
        ]
        return ReportView(
            summary=build_summary(report, a.decision),
            evidence=evidence,
            gallery=build_gallery(report, a.out_dir),
            bars=accuracy_bars(report.findings),
            plots=plots,
        )


def previous_of(rows: list[runs.RunRow], row: runs.RunRow) -> runs.RunRow | None:
    """The same model's run made just before ``row`` (``rows`` newest first)."""
    for other in rows:
        if other.model == row.model and other.ref != row.ref and other.created < row.created:
            return other
    return None


def _label(row: runs.RunRow) -> str:
    return f"run {row.ref}" if row.source == "store" else f"folder {row.ref[4:]}"


def _compare(a: runs.Assessment, b: runs.Assessment) -> RunComparison | None:
    if a.report is None or b.report is None:
        return None
    return compare_reports(a.report, b.report, label_a=_label(a.row), label_b=_label(b.row))


def _not_found(request: Request, user: DashboardUser, detail: str) -> HTMLResponse:
    return error_page(request, user, 404, "Assessment", detail)


@router.get("/assessments", response_class=HTMLResponse)
async def assessments(request: Request, user: Viewer) -> HTMLResponse:
    rows = await anyio.to_thread.run_sync(
        runs.list_runs, request.app.state.engine, runs_dir(request)
    )
    return page(request, "assessments.html.j2", user=user, runs=rows)


@router.get("/assessments/compare", response_class=HTMLResponse)
async def compare(
    request: Request, user: Viewer, a: RefQuery = "", b: RefQuery = ""
) -> HTMLResponse:
    engine, folder = request.app.state.engine, runs_dir(request)
    rows = await anyio.to_thread.run_sync(runs.list_runs, engine, folder)
    context: dict[str, Any] = {"runs": rows, "a": a, "b": b, "cmp": None, "problem": ""}
    if a and b:
        try:
            ra, rb = await anyio.to_thread.run_sync(
                lambda: (runs.load(engine, folder, a), runs.load(engine, folder, b))
            )
        except runs.UnknownRun as exc:
            return _not_found(request, user, str(exc))
        context["cmp"] = _compare(ra, rb)
        if context["cmp"] is None:
            context["problem"] = "one of the runs has no valid report to compare"
    return page(request, "assessment_compare.html.j2", user=user, fmt=fmt, **context)


@router.get("/assessments/{ref}", response_class=HTMLResponse)
async def assessment(request: Request, ref: str, user: Viewer) -> HTMLResponse:
    engine, folder = request.app.state.engine, runs_dir(request)

    def load() -> tuple[runs.Assessment, ReportView | None, RunComparison | None]:
        a = runs.load(engine, folder, ref)
        prev_row = previous_of(runs.list_runs(engine, folder), a.row)
        cmp = _compare(runs.load(engine, folder, prev_row.ref), a) if prev_row else None
        return a, report_view(a), cmp

    try:
        a, view, cmp = await anyio.to_thread.run_sync(load)
    except runs.UnknownRun as exc:
        return _not_found(request, user, str(exc))
    report: Report | None = a.report
    return page(
        request,
        "assessment.html.j2",
        user=user,
        run=a.row,
        r=report,
        view=view,
        cmp=cmp,
        problem=a.problem,
        sev=severity_class,
        fmt=fmt,
    )
