"""Evidence figures: membership ROC on log-log axes, extraction fidelity against budget, and
the gallery of adversarial examples the evasion probe keeps (images and tabular data)."""

from __future__ import annotations

import json

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from torch import nn

import bastion.report.evidence as ev
from bastion.assess.api import assess
from bastion.assess.examples import FILENAME, MAX_EXAMPLES
from bastion.assess.schema import Budgets, ThreatModel
from bastion.report.gallery import build_gallery
from bastion.report.html import render_report
from tests.report.reports import evasion, extraction, make_report, membership, tiny_digits_model


def _threat(**kw):
    base = {
        "eps": [0.1],
        "attacks": ["fgsm", "pgd"],
        "curve_attack": "fgsm",
        "curve_eps": [0.1],
        "budgets": Budgets(n_eval=60, pgd_steps=10, apgd_steps=5),
        "probes": ["evasion"],
    }
    return ThreatModel(**{**base, **kw})


def test_membership_roc_log_axes_and_extraction_budget(monkeypatch):
    figs = {}
    real = ev.to_data_uri

    def capture(fig):
        ax = fig.axes[0]
        figs[ax.get_title()] = (ax.get_xscale(), ax.get_yscale(), len(ax.lines))
        return real(fig)

    monkeypatch.setattr(ev, "to_data_uri", capture)
    report = make_report(
        [membership(0.6, 0.004, 3.0), extraction(0.9, 8.9), evasion("pgd", 0.2, 8)]
    )
    plots = ev.evidence_plots(report.findings)
    assert [p.kind for p in plots] == ["membership", "extraction"]  # no curve: not drawn
    assert figs["membership inference ROC"] == ("log", "log", 2)  # the attack and chance
    assert figs["model extraction: fidelity against query budget"][0] == "log"
    assert "300 members" in plots[0].caption
    html = render_report(report)
    assert html.count("data:image/png;base64,") >= 3  # two evidence figures and the bars
    assert "Membership inference" in html and "Model extraction" in html


def test_image_gallery_from_the_evasion_probe(digits, tmp_path):
    out = assess(
        tiny_digits_model(digits), digits, _threat(attacks=["pgd"]), tmp_path / "run", record=False
    )
    pgd = next(f for f in out.report.findings if f.attack == "pgd")
    assert pgd.artifacts == {"examples": FILENAME}
    assert all("examples" not in f.artifacts for f in out.report.findings if f is not pgd)
    kept = json.loads((tmp_path / "run" / FILENAME).read_text())
    assert 1 <= len(kept["examples"]) <= MAX_EXAMPLES
    for e in kept["examples"]:
        x, xa = np.asarray(e["x"]), np.asarray(e["x_adv"])
        assert e["adversarial_prediction"] != e["label"] == e["clean_prediction"]
        assert np.abs(xa - x).max() <= 0.1 + 1e-5  # within the measured ε, L∞
        assert xa.min() >= 0 and xa.max() <= 1 + 1e-6
    html = out.html_path.read_text()
    assert "Adversarial examples" in html
    gallery = build_gallery(out.report, tmp_path / "run")
    assert len(gallery.images) == len(kept["examples"]) and gallery.budget.startswith("ε=0.1 L∞")
    assert all(g.before != g.after for g in gallery.images)


class _MLP(nn.Module):
    def __init__(self, mean: np.ndarray, std: np.ndarray, d: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.net = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def test_tabular_most_changed_features(tmp_path):
    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    tr, te = perm[:400], perm[400:]
    torch.manual_seed(0)
    model = _MLP(x[tr].mean(0), x[tr].std(0) + 1e-6, x.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.tensor(x[tr]), torch.tensor(y[tr])
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    out = assess(
        model,
        (x[tr], y[tr], x[te], y[te]),
        _threat(eps=[0.2], attacks=["pgd"], curve_attack="pgd", curve_eps=[0.2]),
        tmp_path / "tab",
        record=False,
    )
    gallery = build_gallery(out.report, tmp_path / "tab")
    assert gallery is not None  # PGD at 20 % of each range fools some points of this MLP
    assert gallery.modality == "tabular" and not gallery.images
    assert 1 <= len(gallery.features) <= 8
    means = [c.mean_change for c in gallery.features]
    assert means == sorted(means, reverse=True) and means[0] > 0
    assert all(c.max_change <= 0.2 + 1e-4 for c in gallery.features)  # relative ε measured
    html = out.html_path.read_text()
    assert "Most-changed features" in html and gallery.features[0].name in html


def test_gallery_reads_only_inside_the_run_dir(tmp_path):
    outside = tmp_path / "secret.json"
    outside.write_text("{}")
    run = tmp_path / "run"
    run.mkdir()
    f = evasion("pgd", 0.2, 8).model_copy(update={"artifacts": {"examples": "../secret.json"}})
    assert build_gallery(make_report([f]), run) is None
    (run / "evasion").mkdir()
    (run / FILENAME).write_text('{"not": "examples"}')
    g = evasion("pgd", 0.2, 8).model_copy(update={"artifacts": {"examples": FILENAME}})
    assert build_gallery(make_report([g]), run) is None
    assert 'id="examples"' not in render_report(make_report([g]), run_dir=run)
