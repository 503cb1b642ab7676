"""The composed guard: verdicts per sample, the policy, save/load, and its errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from bastion.errors import ConfigError, DataError
from bastion.guard import Guard, GuardConfig, GuardNotFittedError, GuardVerdict, fit_guard
from bastion.guard.config import PolicyConfig, load_guard_config
from bastion.guard.policy import ClientSignal, decide
from bastion.models.io import load_model
from tests.guard.conftest import fast_config


def test_inspect_gives_one_verdict_per_sample(fitted_guard, digits, pgd_examples):
    clean = fitted_guard.inspect(digits.test.x[:40], "alice")
    assert len(clean) == 40 and all(isinstance(v, GuardVerdict) for v in clean)
    assert set(fitted_guard.detectors) <= set(clean[0].scores)
    assert sum(v.verdict != "allow" for v in clean) <= 6
    attacked = fitted_guard.inspect(pgd_examples[:40], "mallory")
    assert sum(v.verdict != "allow" for v in attacked) >= 0.6 * len(attacked)
    flagged = next(v for v in attacked if v.verdict != "allow")
    assert flagged.reasons and "threshold" in " ".join(flagged.reasons) + "extreme"
    fitted_guard.reset_client("alice")
    fitted_guard.reset_client("mallory")


def test_predict_and_inspect_returns_the_model_logits(fitted_guard, digits_module, digits):
    x = digits.test.x[:16]
    logits, verdicts = fitted_guard.predict_and_inspect(x, "bob")
    with torch.no_grad():
        torch.testing.assert_close(logits, digits_module(x))
    assert len(verdicts) == 16
    fitted_guard.reset_client("bob")


def test_save_load_round_trip_gives_identical_scores(fitted_guard, digits_module, digits, tmp_path):
    path = fitted_guard.save(tmp_path)
    assert path.name == "guard.json" and (tmp_path / "guard.safetensors").exists()
    doc = json.loads(path.read_text())
    assert doc["config"]["target_fpr"] == 0.01 and "pickle" not in path.read_text()
    loaded = Guard.load(tmp_path, digits_module)
    x = torch.cat([digits.test.x[:50], torch.rand(10, 1, 8, 8)])
    a, b = fitted_guard.scores(x), loaded.scores(x)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert loaded.thresholds == fitted_guard.thresholds
    assert loaded.extraction.delta_ == fitted_guard.extraction.delta_
    assert [v.verdict for v in loaded.inspect(x, "c")] == [
        v.verdict for v in fitted_guard.inspect(x, "c2")
    ]


def test_load_without_guard_says_how_to_fit(digits_module, tmp_path):
    with pytest.raises(
        GuardNotFittedError, match=r"no guard fitted for .*bastion guard fit --model"
    ):
        Guard.load(tmp_path, digits_module)


def test_load_for_other_weights_is_refused(fitted_guard, digits_model_dir, tmp_path):
    fitted_guard.save(tmp_path)
    other = load_model(digits_model_dir).module
    with torch.no_grad():
        other[0].weight.add_(0.01)
    with pytest.raises(GuardNotFittedError, match="fitted for other model weights"):
        Guard.load(tmp_path, other)
    assert Guard.load(tmp_path, other, check_model=False).thresholds


def test_corrupt_guard_file_is_reported(fitted_guard, digits_module, tmp_path):
    fitted_guard.save(tmp_path)
    (tmp_path / "guard.json").write_text("{not json")
    with pytest.raises(GuardNotFittedError, match="unreadable guard"):
        Guard.load(tmp_path, digits_module)


def test_bad_inputs_raise_data_errors(fitted_guard):
    with pytest.raises(DataError, match=r"sample shape \(1, 4, 4\), the model expects \(1, 8, 8\)"):
        fitted_guard.inspect(torch.zeros(2, 1, 4, 4), "c")
    x = torch.zeros(2, 1, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN or Inf"):
        fitted_guard.inspect(x, "c")


def test_policy_levels():
    policy = PolicyConfig(flag_at=1, hold_at=2, extreme_factor=3.0, block_at=2)
    thr = {"a": 1.0, "b": 1.0}
    assert decide({"a": 0.5, "b": 0.5}, thr, policy).verdict == "allow"
    one = decide({"a": 1.5, "b": 0.5}, thr, policy)
    assert one.verdict == "flag" and one.reasons == ["a 1.5 > threshold 1"]
    assert decide({"a": 1.5, "b": 1.5}, thr, policy).verdict == "hold"
    assert decide({"a": 3.5, "b": 0.5}, thr, policy).verdict == "hold"
    assert decide({"a": 3.5, "b": 4.0}, thr, policy).verdict == "block"
    alert = ClientSignal(extraction_alert=True, reasons=("client x: PRADA",))
    v = decide({"a": 0.1, "b": 0.1}, thr, policy, alert)
    assert v.verdict == "block" and v.reasons == ["client x: PRADA"]
    soft = PolicyConfig(extraction_action="hold", volume_action="flag")
    assert decide({"a": 0.1}, {"a": 1.0}, soft, alert).verdict == "hold"
    assert decide({"a": 0.1}, {"a": 1.0}, soft, ClientSignal(volume_alert=True)).verdict == "flag"


def test_config_yaml_errors_name_the_key(tmp_path):
    bad = tmp_path / "guard.yaml"
    bad.write_text("policy:\n  hold_at: 1\n  flag_at: 2\n")
    with pytest.raises(ConfigError, match=r"hold_at \(1\) must be >= flag_at \(2\)"):
        load_guard_config(bad)
    bad.write_text("detectors:\n  mahalanobis:\n    shrinkage: 2\n")
    with pytest.raises(ConfigError, match=r"detectors\.mahalanobis\.shrinkage"):
        load_guard_config(bad)
    bad.write_text("detector: {}\n")
    with pytest.raises(ConfigError, match="detector: unknown key"):
        load_guard_config(bad)
    good = tmp_path / "ok.yaml"
    good.write_text("target_fpr: 0.05\ndetectors:\n  squeeze: {enabled: false}\n")
    assert load_guard_config(good).target_fpr == 0.05


def test_fit_guard_with_a_subset_of_detectors(digits_module, digits):
    cfg = fast_config(delta=0.9)
    cfg.detectors.reconstruction.enabled = False
    cfg.detectors.squeeze.enabled = False
    guard = fit_guard(digits_module, digits.train.head(400), config=cfg, target_fpr=0.05)
    assert set(guard.thresholds) == {"mahalanobis", "zscore"}
    assert guard.config.target_fpr == 0.05 and guard.extraction.delta_ == 0.9


def test_fit_guard_with_every_detector_off_is_refused(digits_module, digits):
    cfg = GuardConfig()
    for name in ("mahalanobis", "reconstruction", "zscore", "squeeze"):
        getattr(cfg.detectors, name).enabled = False
    with pytest.raises(ConfigError, match="disables every detector"):
        fit_guard(digits_module, digits.train.head(100), config=cfg)


def test_guard_works_with_a_non_sequential_model(digits):
    """Features of other models come through forward hooks."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.body = torch.nn.Linear(4 * 64, 32)
            self.head = torch.nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.body(torch.relu(self.conv(x)).flatten(1))))

    torch.manual_seed(0)
    net = Net().eval()
    cfg = fast_config(delta=0.9)
    cfg.detectors.reconstruction.epochs = 2
    guard = fit_guard(net, digits.train.head(300), config=cfg)
    views = guard.detectors["mahalanobis"].views_
    assert [v[0] for v in views] == ["conv"] * 4 + ["body", "penultimate"]
    assert [v[1] for v in views[:4]] == ["mean", "grid", "rmean", "rgrid"]
    assert len(guard.inspect(digits.test.x[:5], "c")) == 5


def test_model_dir_copy_round_trip(fitted_guard, digits_model_dir, tmp_path):
    """A guard saved beside a model directory loads with that directory's model."""
    model_dir = tmp_path / "model"
    shutil.copytree(digits_model_dir, model_dir)
    fitted_guard.save(model_dir)
    loaded = load_model(model_dir)
    assert Guard.exists(model_dir)
    assert Guard.load(model_dir, loaded.module).thresholds == fitted_guard.thresholds
