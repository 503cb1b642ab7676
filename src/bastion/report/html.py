"""Render ``report.html`` from a Report: self-contained (inline CSS and PNG plots).

It opens with the plain-words summary (:mod:`bastion.report.summary`), then "Since the
previous assessment" when a comparison is given (:mod:`bastion.report.diff`), the evidence
figures (:mod:`bastion.report.evidence`) and the full tables.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from bastion.assess.schema import Report
from bastion.gate.evaluate import GateDecision
from bastion.report.diff import RunComparison
from bastion.report.evidence import evidence_plots
from bastion.report.gallery import build_gallery
from bastion.report.plots import accuracy_bars, series_plot
from bastion.report.summary import build_summary


def _env() -> Environment:
    # the template is ``*.html.j2``: name the extension, or nothing would be escaped
    env = Environment(
        loader=PackageLoader("bastion.report", "templates"),
        autoescape=select_autoescape(["html", "html.j2"]),
    )
    env.filters["fmt"] = _fmt
    return env


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def severity_class(sev: float) -> str:
    return "crit" if sev >= 7 else "high" if sev >= 4 else "med" if sev >= 1.5 else "low"


def render_report(
    report: Report,
    *,
    decision: GateDecision | None = None,
    comparison: RunComparison | None = None,
    run_dir: Path | None = None,
) -> str:
    """The report page; ``decision`` adds the policy verdict, ``comparison`` the section
    on what changed since the previous assessment, ``run_dir`` (where the findings'
    artifacts are) the gallery of adversarial examples."""
    evidence = evidence_plots(report.findings)
    drawn = {k for p in evidence for k in p.findings}
    plots = [
        p for p in (series_plot(f) for f in report.findings if f.series and f.key not in drawn) if p
    ]
    return (
        _env()
        .get_template("report.html.j2")
        .render(
            r=report,
            summary=build_summary(report, decision),
            cmp=comparison,
            evidence=evidence,
            gallery=build_gallery(report, run_dir),
            bars=accuracy_bars(report.findings),
            plots=plots,
            sev=severity_class,
        )
    )


def write_report_html(
    report: Report,
    out_dir: Path,
    *,
    decision: GateDecision | None = None,
    comparison: RunComparison | None = None,
    path: Path | None = None,
    run_dir: Path | None = None,
) -> Path:
    """Write ``report.html`` in ``out_dir`` (or at ``path``); the run's artifacts are read
    from ``run_dir`` (default ``out_dir``). Returns the path written."""
    path = path or out_dir / "report.html"
    html = render_report(
        report, decision=decision, comparison=comparison, run_dir=run_dir or out_dir
    )
    path.write_text(html)
    return path
