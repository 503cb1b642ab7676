"""The before/after comparison of a hardened model: typed record, JSON and a self-contained
HTML page (inline CSS, plots as inline PNG; no external resources).

Rows come from the two assessment reports, matched finding by finding (same probe, attack
and parameters), so both sides were measured the same way; hardening-specific evidence (ε
spent by DP-SGD, sanitization precision/recall, the backdoor check, training time) comes
from the hardening run itself.

Clean accuracy comes first (:class:`AccuracyGuard`): a child whose clean accuracy on the full
test set drops by more than the allowed amount (``--allow-accuracy-drop``, default
:data:`DEFAULT_ALLOWED_DROP`), or falls to the assessment's chance guard (majority-class rate
+ margin, :mod:`bastion.assess.checks`), is a **regression** whatever its robustness figures
say: a model that is wrong everywhere is "robust" for free. Otherwise the verdict follows
the vulnerability score, whose evasion severities are chance-normalised
(:func:`bastion.assess.scoring.evasion_severity`). ``clean_accuracy_drop`` (parent − child,
top level of comparison.json) is what the release gate reads.
"""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from bastion import __version__
from bastion.assess.checks import CHANCE_MARGIN, chance_rate
from bastion.assess.schema import Finding, Report, ThreatModel

Better = Literal["higher", "lower", "none"]
Verdict = Literal["improved", "regression", "unchanged", "not_measured"]
#: Clean accuracy (absolute, on the full test set) a hardening may cost by default.
DEFAULT_ALLOWED_DROP = 0.05
ROBUST_PROBES = ("evasion", "blackbox")


class MetricRow(BaseModel):
    """One measured quantity on both models."""

    group: str
    metric: str
    parent: float | None = None
    child: float | None = None
    better: Better = "higher"
    note: str = ""

    @property
    def delta(self) -> float | None:
        if self.parent is None or self.child is None:
            return None
        return self.child - self.parent

    @property
    def improved(self) -> bool | None:
        d = self.delta
        if d is None or self.better == "none" or abs(d) < 1e-12:
            return None
        return d > 0 if self.better == "higher" else d < 0


class ModelSummary(BaseModel):
    name: str
    sha256: str
    path: str | None = None
    score: float | None = None


class AccuracyGuard(BaseModel):
    """The clean-accuracy collapse guard of a hardening, on the full test set.

    ``collapsed``: the child lost more than ``allowed_drop`` or sits below ``floor`` (the
    majority-class rate + margin, or the threat model's ``min_clean_accuracy``). A collapse
    is a regression; ``permitted`` when the user explicitly allowed a drop at least this
    large (``--allow-accuracy-drop``), and only then does ``bastion harden`` exit 0."""

    parent_accuracy: float
    child_accuracy: float
    clean_accuracy_drop: float
    allowed_drop: float
    allowed_explicitly: bool
    chance: float
    floor: float
    n: int
    child_at_chance: bool
    collapsed: bool
    permitted: bool

    @classmethod
    def measure(
        cls,
        parent_accuracy: float,
        child_accuracy: float,
        y,
        *,
        allowed: float | None = None,
        min_clean_accuracy: float | None = None,
    ) -> AccuracyGuard:
        chance = chance_rate(y)
        floor = max(min(chance + CHANCE_MARGIN, 1.0), min_clean_accuracy or 0.0)
        allowed_drop = DEFAULT_ALLOWED_DROP if allowed is None else float(allowed)
        drop = parent_accuracy - child_accuracy
        at_chance = child_accuracy < floor
        collapsed = drop > allowed_drop + 1e-12 or at_chance
        return cls(
            parent_accuracy=parent_accuracy,
            child_accuracy=child_accuracy,
            clean_accuracy_drop=drop,
            allowed_drop=allowed_drop,
            allowed_explicitly=allowed is not None,
            chance=chance,
            floor=floor,
            n=int(y.numel()),
            child_at_chance=at_chance,
            collapsed=collapsed,
            permitted=collapsed and allowed is not None and drop <= allowed_drop + 1e-12,
        )

    @property
    def blocks(self) -> bool:
        """A collapse the user did not allow: ``bastion harden`` exits 1."""
        return self.collapsed and not self.permitted

    def summary(self) -> str:
        """A short account of the collapse (for the verdict)."""
        why = []
        if self.clean_accuracy_drop > self.allowed_drop + 1e-12:
            why.append(f"drop {self.clean_accuracy_drop:.3f} > allowed {self.allowed_drop:g}")
        if self.child_at_chance:
            why.append(f"below the chance guard {self.floor:.3f}")
        tail = f" ({'; '.join(why)})" if why else ""
        accepted = "; accepted by --allow-accuracy-drop" if self.permitted else ""
        return (
            f"clean accuracy {self.parent_accuracy:.3f} → {self.child_accuracy:.3f}{tail}{accepted}"
        )

    def message(self) -> str:
        """One line: what dropped, by how much, against what, and how to allow it."""
        what = (
            f"clean accuracy {self.parent_accuracy:.3f} → {self.child_accuracy:.3f} on the "
            f"{self.n} test rows (drop {self.clean_accuracy_drop:+.3f})"
        )
        if not self.collapsed:
            return f"{what}: within the allowed drop {self.allowed_drop:g}"
        why = []
        if self.clean_accuracy_drop > self.allowed_drop + 1e-12:
            why.append(f"more than the allowed {self.allowed_drop:g}")
        if self.child_at_chance:
            why.append(
                f"below the chance guard {self.floor:.3f} (majority-class rate {self.chance:.3f})"
            )
        head = f"the hardened model is worse: {what}, {' and '.join(why)}"
        if self.permitted:
            return f"{head}; accepted by --allow-accuracy-drop {self.allowed_drop:g}"
        need = math.ceil(max(self.clean_accuracy_drop, 0.0) * 1000) / 1000
        return (
            f"{head}. Pass --allow-accuracy-drop {max(need, 0.001):g} to accept it, or soften "
            "the recipe (smaller ε, more epochs, init: parent)"
        )


class SkippedCheck(BaseModel):
    """A comparison check that did not run here, and why."""

    check: str
    reason: str


class BackdoorCheck(BaseModel):
    """BadNets on the training data, trained with the parent's recipe vs the hardening
    recipe: attack success on triggered test inputs (and the clean-data baseline). The
    trigger fits the modality: an image patch (``patch_size``) or, on tabular rows, the
    ``features`` set to their upper bounds (``patch_size`` 0)."""

    rate: float
    target: int
    patch_size: int
    trigger: str = "patch"
    features: list[int] | None = None
    n_poisoned: int
    parent_attack_success: float
    child_attack_success: float
    clean_model_attack_success: float
    parent_accuracy: float
    child_accuracy: float
    precision: float | None = None
    recall: float | None = None
    n_flagged: int | None = None


class Comparison(BaseModel):
    """comparison.json: parent vs child under the same assessment."""

    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    bastion_version: str = __version__
    parent: ModelSummary
    child: ModelSummary
    recipe: str
    recipe_steps: list[dict[str, Any]]
    threat_model: ThreatModel | None = None
    rows: list[MetricRow] = Field(default_factory=list)
    curves: dict[str, dict[str, list[float]]] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    privacy: dict[str, Any] | None = None
    sanitize: dict[str, Any] | None = None
    backdoor: BackdoorCheck | None = None
    reports: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    clean_accuracy_drop: float | None = Field(
        None, description="parent − child clean accuracy on the full test set (> 0: lost)"
    )
    accuracy: AccuracyGuard | None = None
    verdict: Verdict = "not_measured"
    verdict_reason: str = ""
    skipped: list[SkippedCheck] = Field(default_factory=list)

    def row(self, metric: str) -> MetricRow:
        for r in self.rows:
            if r.metric == metric:
                return r
        raise KeyError(f"no row {metric!r}: have {[r.metric for r in self.rows]}")


def _eps(f: Finding) -> str:
    return f"ε={f.params['eps']:g}" if "eps" in f.params else ""


def _robust_rows(pf: Finding, cf: Finding) -> list[MetricRow]:
    """Robust accuracy, attack success and the chance-normalised severity of one attack."""
    norm = pf.params.get("norm", "")
    label = " ".join(p for p in (pf.attack, _eps(pf), f"L{norm}" if norm else "") if p)
    if pf.probe == "blackbox":
        label += " (black-box)"
    group = pf.probe
    return [
        MetricRow(
            group=group,
            metric=f"robust accuracy · {label}",
            parent=pf.metrics.get("robust_accuracy"),
            child=cf.metrics.get("robust_accuracy"),
        ),
        MetricRow(
            group=group,
            metric=f"attack success · {label}",
            parent=pf.metrics.get("attack_success_rate"),
            child=cf.metrics.get("attack_success_rate"),
            better="lower",
            note="share of correctly classified points the attack fools",
        ),
        MetricRow(
            group=group,
            metric=f"severity · {label}",
            parent=pf.severity,
            child=cf.severity,
            better="lower",
            note="0–10, chance-normalised: robust accuracy over every point, measured from the "
            "majority-class rate (a model wrong everywhere scores 10)",
        ),
    ]


def report_rows(parent: Report, child: Report) -> list[MetricRow]:
    """Rows for every finding both reports share (same key), headline metrics first."""
    by_key = {f.key: f for f in child.findings}
    rows: list[MetricRow] = []
    clean_done = False
    for pf in parent.findings:
        cf = by_key.get(pf.key)
        if cf is None:
            continue
        robust = pf.probe in ROBUST_PROBES and "robust_accuracy" in pf.metrics
        if robust and not pf.attack.endswith(("-curve", "sanity-checks")):
            if not clean_done and "clean_accuracy" in pf.metrics:
                rows.append(
                    MetricRow(
                        group="accuracy",
                        metric=f"clean accuracy (n={pf.params.get('n', '?')})",
                        parent=pf.metrics["clean_accuracy"],
                        child=cf.metrics.get("clean_accuracy"),
                    )
                )
                clean_done = True
            rows += _robust_rows(pf, cf)
        elif pf.probe == "evasion" and pf.attack.endswith("-curve"):
            rows.append(
                MetricRow(
                    group="evasion",
                    metric=f"mean robust accuracy over the ε curve ({pf.attack})",
                    parent=pf.metrics.get("mean_robust_accuracy"),
                    child=cf.metrics.get("mean_robust_accuracy"),
                )
            )
        elif pf.probe == "membership":
            for m, label in (
                ("tpr_at_fpr", "TPR at 0.1% FPR"),
                ("tpr_at_1%_fpr", "TPR at 1% FPR"),
                ("auc", "AUC"),
            ):
                if m in pf.metrics:
                    rows.append(
                        MetricRow(
                            group="membership",
                            metric=f"membership {label} · {pf.attack}",
                            parent=pf.metrics[m],
                            child=cf.metrics.get(m),
                            better="lower",
                        )
                    )
        elif pf.probe == "poisoning" and "attack_success_rate" in pf.metrics:
            rows.append(
                MetricRow(
                    group="poisoning",
                    metric=f"{pf.attack} attack success (assessment probe)",
                    parent=pf.metrics["attack_success_rate"],
                    child=cf.metrics.get("attack_success_rate"),
                    better="lower",
                    note="the probe retrains with each model's recorded "
                    "recipe; see the backdoor check for the hardening recipe",
                )
            )
    rows.append(
        MetricRow(
            group="overall",
            metric="vulnerability score (0–100)",
            parent=parent.score,
            child=child.score,
            better="lower",
        )
    )
    return rows


def decide(
    guard: AccuracyGuard | None,
    parent_score: float | None,
    child_score: float | None,
    backdoor: BackdoorCheck | None = None,
) -> tuple[Verdict, str]:
    """The comparison's verdict: a clean-accuracy collapse is a regression whatever the
    robustness; otherwise the vulnerability score (chance-normalised severities), else the
    backdoor check, decides."""
    if guard is not None and guard.collapsed:
        return "regression", f"clean accuracy collapsed: {guard.summary()}"
    if parent_score is not None and child_score is not None:
        what = (
            f"vulnerability score {parent_score:g} → {child_score:g} (chance-normalised severities)"
        )
        if child_score < parent_score - 1e-9:
            return "improved", what
        if child_score > parent_score + 1e-9:
            return "regression", what
        return "unchanged", what
    if backdoor is not None:
        p, c = backdoor.parent_attack_success, backdoor.child_attack_success
        what = f"BadNets attack success {p:.3f} → {c:.3f} (no assessment)"
        if abs(p - c) < 1e-9:
            return "unchanged", what
        return ("improved" if c < p else "regression"), what
    return "not_measured", "no assessment and no backdoor check ran"


def curves(report: Report) -> dict[str, list[float]]:
    for f in report.findings:
        if f.probe == "evasion" and f.attack.endswith("-curve") and "eps" in f.series:
            return {"eps": f.series["eps"], "robust_accuracy": f.series["robust_accuracy"]}
    return {}


# ---------------------------------------------------------------------------------- HTML
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1000px;
color:#1d2330;line-height:1.45;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde;
padding-bottom:.2rem}.sub{color:#5a6270}table{border-collapse:collapse;width:100%;margin:.6rem 0}
th,td{padding:.35rem .6rem;border-bottom:1px solid #e6e8ee;text-align:left;font-size:.92rem}
th{background:#f4f6fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.good{color:#137333;font-weight:600}.bad{color:#b3261e;font-weight:600}code{background:#f4f6fa;
padding:0 .25rem;border-radius:3px}.kv td:first-child{color:#5a6270;width:30%}img{max-width:100%}
.note{color:#5a6270;font-size:.85rem}
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isinf(v):
            return "∞"
        return f"{v:.4g}" if abs(v) >= 1 or v == 0 else f"{v:.3f}"
    return html.escape(str(v))


def _kv(items: dict[str, Any]) -> str:
    body = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{_fmt(v)}</td></tr>" for k, v in items.items()
    )
    return f"<table class='kv'>{body}</table>"


def _plots(c: Comparison) -> list[str]:
    import matplotlib.pyplot as plt

    from bastion.report.plots import to_data_uri

    images = []
    if c.curves.get("parent") and c.curves.get("child"):
        fig, ax = plt.subplots(figsize=(5.6, 3.4))
        for who, style in (("parent", "o--"), ("child", "o-")):
            s = c.curves[who]
            ax.plot(s["eps"], s["robust_accuracy"], style, ms=3, lw=1.6, label=who)
        ax.set_xlabel("ε")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title("robustness curve, parent vs hardened", fontsize=10)
        images.append(to_data_uri(fig))
    bars = [
        r
        for r in c.rows
        if r.parent is not None
        and r.child is not None
        and r.group in ("accuracy", "evasion", "membership")
        and 0 <= r.parent <= 1
        and 0 <= r.child <= 1
    ]
    if bars:
        fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(bars) + 1.2))
        ys = range(len(bars))
        ax.barh(
            [y + 0.2 for y in ys], [r.parent for r in bars], 0.4, label="parent", color="#9aa5b8"
        )
        ax.barh(
            [y - 0.2 for y in ys], [r.child for r in bars], 0.4, label="hardened", color="#2f6fde"
        )
        ax.set_yticks(list(ys), [r.metric for r in bars], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(axis="x", alpha=0.3)
        images.append(to_data_uri(fig))
    return images


_VERDICT_CLASS = {"improved": "good", "regression": "bad"}


def render_html(c: Comparison) -> str:
    rows = []
    for r in c.rows:
        d, ok = r.delta, r.improved
        cls = "" if ok is None else ("good" if ok else "bad")
        delta = "–" if d is None else f"{d:+.3f}"
        rows.append(
            f"<tr><td>{html.escape(r.group)}</td><td>{html.escape(r.metric)}"
            + (f"<div class='note'>{html.escape(r.note)}</div>" if r.note else "")
            + f"</td><td class='num'>{_fmt(r.parent)}</td><td class='num'>{_fmt(r.child)}</td>"
            f"<td class='num {cls}'>{delta}</td><td>{r.better}</td></tr>"
        )
    steps = "".join(
        f"<tr><td><code>{html.escape(s.get('name', ''))}</code></td><td>"
        + ", ".join(
            f"{html.escape(k)}={_fmt(v)}" for k, v in s.items() if k not in {"name", "kind"}
        )
        + "</td></tr>"
        for s in c.recipe_steps
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Bastion hardening: {html.escape(c.recipe)}</title><style>{CSS}</style></head><body>",
        f"<h1>Hardening report: <code>{html.escape(c.recipe)}</code></h1>",
        f"<div class='sub'>{c.created:%Y-%m-%d %H:%M UTC} · Bastion {html.escape(c.bastion_version)}</div>",
        f"<p class='{_VERDICT_CLASS.get(c.verdict, '')}'>Verdict: {html.escape(c.verdict.replace('_', ' '))}"
        f" — {html.escape(c.verdict_reason)}</p>",
        "<h2>Models</h2>",
        _kv(
            {
                "parent": f"{c.parent.path or c.parent.name} (sha256 {c.parent.sha256[:16]}…)",
                "hardened": f"{c.child.path or c.child.name} (sha256 {c.child.sha256[:16]}…)",
                **{f"{k} report": v for k, v in c.reports.items()},
            }
        ),
        "<h2>Recipe</h2>",
        f"<table><tr><th>step</th><th>parameters</th></tr>{steps}</table>",
        "<h2>Before / after</h2>",
        "<table><tr><th>group</th><th>metric</th><th>parent</th><th>hardened</th><th>Δ</th>"
        f"<th>better</th></tr>{''.join(rows)}</table>",
    ]
    parts += [f"<img alt='comparison plot' src='{uri}'>" for uri in _plots(c)]
    if c.accuracy is not None:
        parts += ["<h2>Clean-accuracy guard</h2>", _kv(c.accuracy.model_dump())]
    if c.skipped:
        parts += ["<h2>Checks not run</h2><ul>"]
        parts += [f"<li>{html.escape(k.check)}: {html.escape(k.reason)}</li>" for k in c.skipped]
        parts.append("</ul>")
    if c.backdoor is not None:
        parts += ["<h2>Backdoor check (BadNets)</h2>", _kv(c.backdoor.model_dump())]
    if c.privacy:
        parts += ["<h2>Differential privacy</h2>", _kv(c.privacy)]
    if c.sanitize:
        parts += ["<h2>Sanitization</h2>", _kv(c.sanitize)]
    if c.training:
        parts += ["<h2>Training</h2>", _kv(c.training)]
    if c.threat_model is not None:
        parts += [
            "<h2>Threat model</h2>",
            f"<pre>{html.escape(c.threat_model.model_dump_json(indent=2))}</pre>",
        ]
    if c.notes:
        parts += ["<h2>Notes</h2><ul>", *[f"<li>{html.escape(n)}</li>" for n in c.notes], "</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_comparison(c: Comparison, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``comparison.json`` and ``comparison.html`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "comparison.json", out / "comparison.html"
    json_path.write_text(c.model_dump_json(indent=2))
    html_path.write_text(render_html(c))
    return json_path, html_path
