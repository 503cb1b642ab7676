"""The evasion assessment end to end: report contract, curve sharing, resume, sanity checks."""

import json

import pytest
import torch

import bastion.assess.evasion_probe as ep
from bastion.assess.api import assess
from bastion.assess.probe import ProbeContext
from bastion.assess.runner import PARTIAL, run_assessment, select_probes
from bastion.assess.schema import Budgets, Report, ThreatModel

FAST = Budgets(n_eval=120, pgd_steps=10, apgd_steps=20)


def threat(**kw):
    base = {
        "eps": [0.1],
        "attacks": ["fgsm", "pgd"],
        "curve_attack": "pgd",
        "budgets": FAST,
        "probes": ["evasion"],
    }
    return ThreatModel(**{**base, **kw})


def test_report_contract(digits_model, digits, tmp_path):
    out = assess(digits_model, digits, threat(), tmp_path / "a")
    data = json.loads(out.json_path.read_text())
    assert {"name", "sha256"} <= data["model"].keys()
    assert {"name", "sha256", "n"} <= data["dataset"].keys()
    assert "threat_model" in data and 0 <= data["score"] <= 100
    for f in data["findings"]:
        assert {"probe", "attack", "params", "metrics", "severity", "seconds"} <= f.keys()
        assert 0 <= f["severity"] <= 10
    by_attack = {f["attack"]: f for f in data["findings"]}
    pgd, fgsm = by_attack["pgd"]["metrics"], by_attack["fgsm"]["metrics"]
    assert pgd["robust_accuracy"] < pgd["clean_accuracy"]
    assert pgd["robust_accuracy"] <= fgsm["robust_accuracy"] + 0.01
    curve = by_attack["pgd-curve"]["series"]
    assert len(curve["eps"]) == 10 and curve["robust_accuracy"] == sorted(
        curve["robust_accuracy"], reverse=True
    )
    html = out.html_path.read_text()
    assert (
        "data:image/png;base64," in html
        and "http" not in html.split("<body>")[1].split("How to read")[0]
    )
    assert out.run_id is not None
    Report.model_validate(data)


def test_curve_attacks_only_survivors(digits_model, digits, tmp_path, monkeypatch):
    calls = []
    real = ep.robust_mask

    def counting(model, x, y, **kw):
        calls.append((kw["attack"], kw["eps"], len(y)))
        return real(model, x, y, **kw)

    monkeypatch.setattr(ep, "robust_mask", counting)
    curve_eps = [round(0.021 * k, 3) for k in range(1, 11)]  # none equals the threat ε or sanity ε
    assess(
        digits_model,
        digits,
        threat(attacks=["pgd"], curve_eps=curve_eps),
        tmp_path / "c",
        record=False,
    )
    attacked = [n for a, e, n in calls if e in curve_eps and a == "pgd"]
    # 10 ε values but each only sees the survivors of the previous one
    assert len(attacked) >= 2 and attacked == sorted(attacked, reverse=True)
    assert sum(attacked) < 0.7 * 10 * FAST.n_eval


def test_resume_skips_finished_findings(digits_model, digits, tmp_path, monkeypatch):
    out = tmp_path / "r"
    ctx = ProbeContext(model=digits_model, data=digits, threat=threat(), out_dir=out)
    run_shard = ep.EvasionProbe.run_shard
    yielded = []

    def killed_after_two(self, c, shard):  # the executors run the probe shard by shard
        for f in run_shard(self, c, shard):
            if len(yielded) == 2:
                raise KeyboardInterrupt
            yielded.append(f)
            yield f

    monkeypatch.setattr(ep.EvasionProbe, "run_shard", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_assessment(ctx)
    kinds = [json.loads(x)["kind"] for x in (out / PARTIAL).read_text().splitlines()[1:]]
    assert kinds == ["finding", "shard"] * 2  # 2 findings, each with its shard's record
    monkeypatch.setattr(ep.EvasionProbe, "run_shard", run_shard)
    seen = []
    real = ep.robust_mask

    def counting(model, x, y, **kw):
        seen.append(kw["attack"])
        return real(model, x, y, **kw)

    monkeypatch.setattr(ep, "robust_mask", counting)
    report = run_assessment(
        ProbeContext(model=digits_model, data=digits, threat=threat(), out_dir=out)
    )
    assert [f.attack for f in report.findings][:2] == ["fgsm", "pgd"]
    assert {f.attack for f in report.findings} >= {"fgsm", "pgd", "pgd-curve", "sanity-checks"}
    # fgsm (finished, not the strongest) was not recomputed for the evasion findings
    assert seen.count("fgsm") <= 1  # only the sanity check's single-step comparison


def test_checkpoint_for_other_threat_is_discarded(digits_model, digits, tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / PARTIAL).write_text(json.dumps({"fingerprint": "other"}) + "\n")
    report = run_assessment(
        ProbeContext(model=digits_model, data=digits, threat=threat(attacks=["fgsm"]), out_dir=out)
    )
    assert any(f.attack == "fgsm" for f in report.findings)


def test_masked_model_raises_sanity_warnings(digits_module, digits, tmp_path):
    """A model whose gradients are masked (a hard step on the input) must trip the checks."""

    class Masked(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            q = torch.round(x * 2) / 2  # zero gradient almost everywhere
            return self.inner(q.detach() + 0 * x)

    from bastion.models.io import LoadedModel

    masked = LoadedModel(name="masked", sha256="0" * 64, module=Masked(digits_module))
    report = run_assessment(
        ProbeContext(
            model=masked,
            data=digits,
            out_dir=tmp_path / "m",
            threat=threat(budgets=Budgets(n_eval=40, pgd_steps=5, apgd_steps=10), curve_eps=[0.1]),
        )
    )
    checks = {w.check for w in report.warnings}
    assert "large-eps-reaches-chance" in checks or "noise-weaker-than-attack" in checks


def test_threat_selects_probes(digits, digits_model, tmp_path):
    def ctx(threat):
        return ProbeContext(model=digits_model, data=digits, threat=threat, out_dir=tmp_path)

    chosen, skipped = select_probes(ctx(ThreatModel(access="labels")))
    assert "evasion" not in chosen
    assert any(s.probe == "evasion" and "white-box" in s.reason for s in skipped)
    assert any(s.probe == "poisoning" and s.status == "excluded" for s in skipped)
    with pytest.raises(ValueError, match="unknown probe"):  # refused when the threat is read
        ThreatModel(probes=["nope"])
