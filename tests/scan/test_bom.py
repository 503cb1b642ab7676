"""The CycloneDX 1.6 ML-BOM: what it records (files, model card, datasets, findings,
attestation, signature), schema validity (cyclonedx-python-lib's JSON validator), the
refusals, and `bastion bom` through the real entry point."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from bastion.assess.schema import DatasetRef, Finding, ModelRef, Report, SanityWarning, ThreatModel
from bastion.errors import ConfigError
from bastion.scan.bom import build_bom, severity_band, validate_bom
from tests.cli_runner import run_main

pytest.importorskip("jsonschema", reason="cyclonedx-python-lib[json-validation] validates BOMs")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def model_dir(digits, tmp_path) -> Path:
    """A tiny untrained MLP made in code, with the digits manifests in its provenance."""
    import torch

    from bastion.models.io import save_model
    from bastion.models.zoo import build_model, zoo_spec

    torch.manual_seed(0)
    spec = zoo_spec("mlp", digits.train.shape, digits.train.num_classes, hidden=4, depth=1)
    provenance = {
        "data": "digits",
        "train_manifest": digits.train.manifest().model_dump(mode="json"),
        "test_manifest": digits.test.manifest().model_dump(mode="json"),
        "test_accuracy": 0.125,
    }
    return save_model(build_model(spec), spec, tmp_path / "model", provenance=provenance)


def findings() -> list[Finding]:
    return [
        Finding(
            probe="evasion",
            attack="pgd",
            params={"eps": 0.1, "norm": "inf", "n": 100, "steps": 20},
            metrics={"clean_accuracy": 0.9, "robust_accuracy": 0.25},
            severity=7.5,
        ),
        Finding(
            probe="extraction",
            attack="knockoff",
            params={"queries": 1000},
            metrics={"fidelity": 0.97},
            severity=9.5,
        ),
        Finding(
            probe="membership",
            attack="loss-threshold",
            params={"n": 200},
            metrics={"auc": 0.5, "tpr_at_fpr": float("nan")},
            severity=0.0,
        ),
    ]


@pytest.fixture()
def report(model_dir, digits, tmp_path) -> tuple[Report, Path]:
    weights = model_dir / "model.safetensors"
    rep = Report(
        model=ModelRef(
            name="model",
            sha256=sha(weights),
            path=str(model_dir),
            artifacts=[
                {"path": str(weights), "sha256": sha(weights), "role": "weights"},
                {
                    "path": str(model_dir / "spec.json"),
                    "sha256": sha(model_dir / "spec.json"),
                    "role": "spec",
                },
            ],
            capabilities={"num_classes": 10, "output": "scores"},
        ),
        dataset=DatasetRef(
            name="digits",
            sha256=digits.test.sha256(),
            n=len(digits.test),
            manifest=digits.test.manifest().model_dump(mode="json"),
        ),
        threat_model=ThreatModel(),
        findings=findings(),
        warnings=[SanityWarning(check="blackbox-beats-whitebox", message="masked gradients?")],
        score=42.0,
    )
    path = tmp_path / "assess" / "report.json"
    path.parent.mkdir()
    path.write_text(rep.model_dump_json(indent=2))
    return rep, path


def attestation_for(model_dir: Path, path: Path, *, digest: str | None = None) -> Path:
    """A DSSE envelope shaped as `bastion attest` writes it (the BOM reads, never verifies)."""
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [
            {
                "name": "model/model.safetensors",
                "digest": {"sha256": digest or sha(model_dir / "model.safetensors")},
            },
            # an entry point's source file lives outside the model: not required in it
            {"name": "model/net.py", "digest": {"sha256": "d" * 64}},
        ],
        "predicate": {
            "gate": {"passed": True},
            "model": {"artifacts": [{"subject": "model/net.py", "role": "source"}]},
        },
    }
    env = {
        "payloadType": "application/vnd.in-toto+json",
        "payload": base64.b64encode(json.dumps(statement).encode()).decode(),
        "signatures": [{"keyid": "ab" * 32, "sig": "c2ln"}],
    }
    path.write_text(json.dumps(env))
    return path


def components(doc: dict) -> dict[str, dict]:
    return {c["bom-ref"]: c for c in doc["components"]}


def test_full_bom_records_everything_and_validates(model_dir, report, tmp_path):
    from bastion.scan.signing import generate_model_key, sign_model

    rep, rep_path = report
    keys = generate_model_key(tmp_path / "k.key")
    sign_model(model_dir, keys.private)
    att = attestation_for(model_dir, tmp_path / "assess" / "attestation.dsse.json")
    out = tmp_path / "out" / "bom.json"
    bom = build_bom(model_dir, report=rep, report_path=rep_path, attestation=att, output=out)
    assert validate_bom(bom.text) == []
    doc = json.loads(bom.text)
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.6"

    by_ref = components(doc)
    model = by_ref["model"]
    assert model["type"] == "machine-learning-model"
    files = {c["name"]: c for c in model["components"]}
    assert set(files) == {"model.safetensors", "spec.json", "provenance.json"}  # not model.sig
    for name, c in files.items():
        assert c["type"] == "file"
        assert c["hashes"] == [{"alg": "SHA-256", "content": sha(model_dir / name)}]
    refs = {r["type"]: r for r in model["externalReferences"]}
    assert refs["attestation"]["hashes"][0]["content"] == sha(att)
    assert refs["digital-signature"]["hashes"][0]["content"] == sha(model_dir / "model.sig")
    assert refs["dynamic-analysis-report"]["hashes"][0]["content"] == sha(rep_path)
    assert refs["attestation"]["url"] == "../assess/attestation.dsse.json"  # relative to the BOM
    props = {p["name"]: p["value"] for p in model["properties"]}
    assert props["bastion:attestation.gate"] == "PASS" and props["bastion:assessment.score"] == "42"

    card = model["modelCard"]["modelParameters"]
    assert card["task"] == "classification" and card["approach"] == {"type": "supervised"}
    assert card["architectureFamily"] == "mlp"
    assert card["inputs"] == [{"format": "image (1, 8, 8) in [0, 1]"}]
    assert card["outputs"][0]["format"].startswith("scores over 10 classes: 0, 1, 2")
    metrics = model["modelCard"]["quantitativeAnalysis"]["performanceMetrics"]
    robust = [m for m in metrics if m["type"] == "robust accuracy"]
    assert robust == [
        {
            "type": "robust accuracy",
            "value": "0.25",
            "slice": "evasion/pgd (eps=0.1, n=100, norm=inf, steps=20)",
        }
    ]
    assert model["modelCard"]["considerations"]["technicalLimitations"][0].startswith(
        "blackbox-beats-whitebox"
    )

    data = [c for c in doc["components"] if c["type"] == "data"]
    assert {c["name"] for c in data} == {"digits (train)", "digits (test)"}  # test = assessed
    prov = json.loads((model_dir / "provenance.json").read_text())
    for c in data:
        split = c["name"].split("(")[1].rstrip(")")
        assert c["hashes"][0]["content"] == prov[f"{split}_manifest"]["sha256"]
        assert c["data"][0]["type"] == "dataset"
    test = next(c for c in data if "test" in c["name"])
    assert {p["value"] for p in test["properties"] if p["name"] == "bastion:dataset.role"} == {
        "test",
        "assessed",
    }
    assert {r["ref"] for r in card["datasets"]} == {c["bom-ref"] for c in data}

    vulns = {v["id"]: v for v in doc["vulnerabilities"]}
    assert len(vulns) == 3
    bands = {
        v["description"].split(" probe")[0]: v["ratings"][0]["severity"] for v in vulns.values()
    }
    assert bands == {"evasion": "high", "extraction": "critical", "membership": "none"}
    assert all(v["affects"] == [{"ref": "model"}] for v in vulns.values())
    pgd = next(v for v in vulns.values() if "pgd" in v["description"])
    assert "eps=0.1" in pgd["description"] and "robust_accuracy=0.25" in pgd["description"]
    member = next(v for v in vulns.values() if "membership" in v["description"])
    assert {"name": "bastion:metric:tpr_at_fpr", "value": "nan"} in member["properties"]
    assert (bom.files, bom.datasets, bom.vulnerabilities, bom.references) == (3, 2, 3, 3)


def test_the_validator_rejects_a_broken_bom(model_dir):
    doc = json.loads(build_bom(model_dir).text)
    assert validate_bom(json.dumps(doc)) == []
    components(doc)["model"]["modelCard"]["modelParameters"]["task"] = 3
    assert validate_bom(json.dumps(doc))
    doc = json.loads(build_bom(model_dir).text)
    data = next(c for c in doc["components"] if c["type"] == "data")
    data["data"] = [{"name": "no type"}]
    assert any("'type' is a required property" in e for e in validate_bom(json.dumps(doc)))


def test_single_file_model_and_dataset_manifest(tmp_path, digits):
    model = tmp_path / "clf.onnx"
    model.write_bytes(b"pretend onnx graph")
    manifest = tmp_path / "train-manifest.json"
    manifest.write_text(digits.train.manifest().model_dump_json())
    bom = build_bom(model, manifests=(manifest,))
    assert validate_bom(bom.text) == []
    doc = json.loads(bom.text)
    m = components(doc)["model"]
    assert m["hashes"] == [{"alg": "SHA-256", "content": sha(model)}] and "components" not in m
    (data,) = [c for c in doc["components"] if c["type"] == "data"]
    assert data["hashes"][0]["content"] == digits.train.sha256()
    assert data["externalReferences"][0]["hashes"][0]["content"] == sha(manifest)
    assert m["modelCard"]["modelParameters"]["datasets"] == [{"ref": data["bom-ref"]}]


def test_refusals(model_dir, report, tmp_path):
    rep, rep_path = report
    other = rep.model_copy(
        update={
            "model": rep.model.model_copy(
                update={
                    "artifacts": [
                        {"path": "x/model.safetensors", "sha256": "f" * 64, "role": "weights"}
                    ]
                }
            )
        }
    )
    with pytest.raises(ConfigError, match="the report assessed other model files"):
        build_bom(model_dir, report=other, report_path=rep_path)
    att = attestation_for(model_dir, tmp_path / "att.json", digest="e" * 64)
    with pytest.raises(ConfigError, match="covers other model files"):
        build_bom(model_dir, attestation=att)
    with pytest.raises(ConfigError, match="is an assessment report: pass it with --report"):
        build_bom(model_dir, manifests=(rep_path,))
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a DSSE attestation"):
        build_bom(model_dir, attestation=tmp_path / "x.json")
    with pytest.raises(ConfigError, match="not a dataset manifest"):
        build_bom(model_dir, manifests=(tmp_path / "x.json",))
    (model_dir / "link").symlink_to(model_dir / "spec.json")
    with pytest.raises(ConfigError, match="symbolic link"):
        build_bom(model_dir)


@pytest.mark.parametrize(
    ("severity", "band"),
    [
        (0.0, "none"),
        (0.05, "none"),
        (0.1, "low"),
        (3.99, "low"),
        (4.0, "medium"),
        (6.9, "medium"),
        (7.0, "high"),
        (9.0, "critical"),
        (10.0, "critical"),
    ],
)
def test_severity_bands(severity, band):
    assert severity_band(severity) == band


def test_cli(model_dir, report, tmp_path, monkeypatch, capsys):
    _, rep_path = report
    out = tmp_path / "bom.json"
    code, stdout, _ = run_main(
        monkeypatch, capsys, "bom", model_dir, "--report", rep_path.parent, "--output", out
    )
    assert code == 0 and "valid CycloneDX 1.6" in stdout and "3 finding(s)" in stdout
    assert validate_bom(out.read_text()) == []
    code, stdout, err = run_main(monkeypatch, capsys, "bom", model_dir)
    assert code == 0 and json.loads(stdout)["specVersion"] == "1.6" and "ML-BOM of" in err
    code, _, err = run_main(monkeypatch, capsys, "bom", tmp_path / "nope")
    assert code == 2 and err.strip().endswith("model not found: " + str(tmp_path / "nope"))
    code, _, err = run_main(
        monkeypatch, capsys, "bom", model_dir, "--report", tmp_path / "none.json"
    )
    assert code == 2 and "report not found" in err and len(err.strip().splitlines()) == 1
