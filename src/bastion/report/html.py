"""Render ``report.html`` from a Report: self-contained (inline CSS and PNG plots)."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from bastion.assess.schema import Report
from bastion.report.plots import accuracy_bars, series_plot


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("bastion.report", "templates"), autoescape=select_autoescape()
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


def render_report(report: Report) -> str:
    plots = [p for p in (series_plot(f) for f in report.findings if f.series) if p]
    return (
        _env()
        .get_template("report.html.j2")
        .render(
            r=report,
            bars=accuracy_bars(report.findings),
            plots=plots,
            sev=severity_class,
        )
    )


def write_report_html(report: Report, out_dir: Path) -> Path:
    path = out_dir / "report.html"
    path.write_text(render_report(report))
    return path
