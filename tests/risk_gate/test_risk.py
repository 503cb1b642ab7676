"""Risk scoring scales, the catalogue, the system profile and the register's bookkeeping."""

from __future__ import annotations

import csv
import io
import json

import pytest

from bastion.errors import ConfigError
from bastion.risk import scoring
from bastion.risk.catalogue import load_catalogue
from bastion.risk.export import export_csv, export_json, register_to_json, to_csv
from bastion.risk.html import render_risk_report
from bastion.risk.register import build_register, load_register, save_register
from bastion.risk.system import load_system

from .conftest import EXAMPLE_SYSTEM


@pytest.mark.parametrize(
    ("s", "o", "d", "ap"),
    [
        (10, 1, 1, "high"),  # severity >= 9 is high whatever O and D (Bastion rule)
        (9, 2, 3, "high"),
        (8, 8, 1, "high"),
        (8, 4, 5, "medium"),
        (7, 2, 2, "low"),
        (5, 9, 9, "high"),
        (5, 6, 1, "low"),
        (5, 4, 7, "medium"),
        (2, 9, 9, "medium"),
        (2, 5, 10, "low"),
        (1, 10, 10, "low"),
    ],
)
def test_action_priority(s, o, d, ap):
    assert scoring.action_priority(s, o, d) == ap


def test_equal_rpn_can_hide_severity():
    # same RPN, different priorities: why the action priority is not a function of the RPN
    assert scoring.rpn(10, 2, 5) == scoring.rpn(4, 5, 5) == 100
    assert scoring.action_priority(10, 2, 5) == "high"
    assert scoring.action_priority(4, 5, 5) == "low"
    assert scoring.handbook_priority(10, 1, 1) == "low"  # the handbook itself; we are stricter


def test_iso_matrix():
    assert [scoring.likelihood(o) for o in range(1, 11)] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [scoring.impact(s) for s in (1, 2, 3, 9, 10)] == [1, 1, 2, 5, 5]
    assert scoring.iso_level(1, 4) == "low" and scoring.iso_level(1, 5) == "medium"
    assert scoring.iso_level(3, 3) == "medium" and scoring.iso_level(2, 5) == "high"
    assert scoring.iso_level(4, 5) == "critical" and scoring.iso_level(5, 5) == "critical"


def test_evidence_mappings():
    assert [scoring.rate_to_occurrence(r) for r in (0, 0.05, 0.5, 1, 2)] == [1, 1, 6, 10, 10]
    assert scoring.tpr_to_occurrence(0.001, 0.001) == 1  # chance
    assert scoring.tpr_to_occurrence(0.01, 0.001) == 4
    assert scoring.tpr_to_occurrence(0.1, 0.001) == 7
    assert scoring.tpr_to_occurrence(1.0, 0.001) == 10
    assert scoring.detection_from_tpr(0.995) == 1
    assert scoring.detection_from_tpr(0.85, 0.01) == 4
    assert scoring.detection_from_tpr(0.85, 0.2) == 5  # noisy detector: one step worse
    assert scoring.detection_from_tpr(0.0) == 10


def test_catalogue_is_complete():
    cat = load_catalogue()
    ids = {t.id for t in cat.threats}
    assert {"EVA-01", "POI-01", "MIA-01", "EXT-01", "SUP-01", "ART-01"} <= ids
    techniques = {a for t in cat.threats for a in t.atlas}
    assert {
        "AML.T0043",
        "AML.T0020",
        "AML.T0024.000",
        "AML.T0024.002",
        "AML.T0010",
        "AML.T0011.000",
    } <= techniques
    assert {t.layer for t in cat.threats} == {
        "data",
        "training",
        "model",
        "deployment",
        "monitoring",
    }
    for t in cat.threats:
        assert t.nist_ai_rmf and t.controls
    assert {t.probe for t in cat.threats} >= {"evasion", "poisoning", "membership", "extraction"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "version: x\nthreats:\n  - {id: EVA-01, title: t, layer: model, atlas: [T0043], "
            "severity: {default: 5}, occurrence: {default: 5}, detection: {default: 5}}\n",
            r"not ATLAS technique ids \(AML.Txxxx\[.yyy\]\): T0043",
        ),
        (
            "version: x\nthreats:\n  - {id: EVA-01, title: t, layer: model, atlas: [AML.T0043], "
            "severity: {default: 5, exposur: {public_api: 3}}, occurrence: {default: 5}, "
            "detection: {default: 5}}\n",
            r"unknown profile factor 'exposur': use one of exposure",
        ),
        (
            "version: x\nthreats:\n  - {id: EVA-01, title: t, layer: model, atlas: [AML.T0043], "
            "severity: {default: 11}, occurrence: {default: 5}, detection: {default: 5}}\n",
            r"severity.default: Input should be less than or equal to 10",
        ),
    ],
)
def test_custom_catalogue_errors(tmp_path, text, message):
    path = tmp_path / "cat.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_catalogue(path)


def test_register_from_profile(system):
    reg = build_register(system)
    eva = reg.get("EVA-01")
    assert eva.severity == 8  # wrong_answer_cost: major
    assert eva.occurrence == 6  # public_api (6) beats attacker_access scores (5)
    assert eva.owner == "ml-team" and reg.get("EXT-01").owner == "platform-team"
    assert eva.history[0].evidence.kind == "profile"
    assert eva.rpn == eva.severity * eva.occurrence * eva.detection
    # INV-01 applies only to personal/sensitive data: the example has personal data
    assert "INV-01" in {r.id for r in reg.risks}


def test_profile_changes_scores_and_exclusions(system):
    device = system.model_copy(
        update={
            "exposure": "on_device",
            "attacker_access": "white_box",
            "safety_critical": True,
            "training_data_sensitivity": "none",
        }
    )
    reg = build_register(device)
    assert reg.get("EVA-01").severity == 10 and reg.get("EVA-01").priority == "high"
    assert reg.get("EXT-01").occurrence == 9
    excluded = {e.id: e.reason for e in reg.excluded}
    assert "EVA-02" in excluded and "exposure is on_device" in excluded["EVA-02"]
    assert "INV-01" in excluded


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"exposure": "internet"}, r"exposure: Input should be 'public_api', 'partner_api'"),
        ({"data_sources": []}, r"data_sources: List should have at least 1 item"),
        ({"colour": "red"}, r"colour: unknown key"),
    ],
)
def test_system_profile_errors(tmp_path, patch, message):
    import yaml

    data = yaml.safe_load(EXAMPLE_SYSTEM.read_text())
    data.update(patch)
    path = tmp_path / "system.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_system(path)


def test_status_owner_and_controls_are_recorded(register):
    register.set_owner("EVA-01", "alice", by="bob")
    register.set_status("EVA-01", "mitigated", reason="PGD-AT model", by="bob")
    register.set_control("EVA-01", "AML.M0003", "implemented", by="bob")
    register.set_control("EVA-01", "bastion:guard", "planned", name="runtime guard")
    eva = register.get("EVA-01")
    assert (
        eva.owner == "alice" and eva.status == "mitigated" and eva.status_reason == "PGD-AT model"
    )
    states = {c.id: c.state for c in eva.controls}
    assert states["AML.M0003"] == "implemented" and states["bastion:guard"] == "planned"
    fields = [c.field for c in eva.history if c.evidence and c.evidence.kind == "manual"]
    assert fields == ["owner", "status", "controls", "controls"]
    assert eva.history[-4].old == "open" and eva.history[-4].new == "mitigated"
    assert eva.history[-4].by == "bob"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda r: r.set_status("EVA-01", "accepted"),
            r"accepting EVA-01 needs a reason: pass --reason",
        ),
        (
            lambda r: r.set_status("EVA-01", "closed"),
            r"unknown status 'closed': use one of open, mitigated, accepted",
        ),
        (
            lambda r: r.set_status("EVA-99", "open"),
            r"no risk 'EVA-99' in the register: it holds EVA-01",
        ),
        (lambda r: r.set_owner("EVA-01", " "), r"the owner cannot be empty"),
        (
            lambda r: r.set_control("EVA-01", "AML.M9999", "implemented"),
            r"EVA-01 has no control 'AML.M9999' \(it has AML.M0003",
        ),
        (lambda r: r.set_control("EVA-01", "AML.M0003", "done"), r"unknown control state 'done'"),
    ],
)
def test_register_edit_errors(register, call, message):
    with pytest.raises(ConfigError, match=message):
        call(register)


def test_register_round_trip_and_load_errors(register, tmp_path):
    register.set_status("ART-01", "accepted", reason="safetensors only")
    path = save_register(register, tmp_path / "reg.json")
    again = load_register(path)
    assert again == register
    with pytest.raises(
        ConfigError, match=r"register not found: .*: create one with `bastion risk init"
    ):
        load_register(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad.json: not valid JSON"):
        load_register(tmp_path / "bad.json")
    data = json.loads(path.read_text())
    data["risks"][0]["status"] = "accepted"
    data["risks"][0]["status_reason"] = ""
    (tmp_path / "edited.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"an accepted risk needs a reason"):
        load_register(tmp_path / "edited.json")


def test_exports(register, tmp_path):
    rows = list(csv.DictReader(io.StringIO(to_csv(register))))
    assert len(rows) == len(register.risks)
    eva = next(r for r in rows if r["id"] == "EVA-01")
    assert eva["rpn"] == str(register.get("EVA-01").rpn) and eva["priority"] == "high"
    assert "AML.T0043" in eva["atlas"] and "MEASURE 2.7" in eva["nist_ai_rmf"]
    export_csv(register, tmp_path / "r.csv")
    data = json.loads(export_json(register, tmp_path / "r.json").read_text())
    assert data["risks"][0]["rpn"] == register.risks[0].rpn
    assert register_to_json(register)["system"]["name"] == "cheque-digit-reader"


def test_heat_map_page(register):
    register.set_status("EVA-01", "accepted", reason="reviewed <script>alert(1)</script>")
    html = render_risk_report(register)
    assert html.count('class="cell lvl-') == 25
    for r in register.risks:
        cell = f'data-likelihood="{r.likelihood}" data-impact="{r.impact}"'
        start = html.index(cell)
        assert r.id in html[start : html.index("</td>", start)]
    assert 'class="cell lvl-critical" data-likelihood="5" data-impact="5"' in html
    assert "<script>" not in html and "&lt;script&gt;" in html  # escaped
    assert "http://" not in html and "https://" not in html  # self-contained: no CDN
    assert "Likelihood × impact" in html and "EVA-01" in html
