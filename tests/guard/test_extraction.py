"""The per-client extraction monitor: PRADA, anomaly rate, volume, bounded state."""

from __future__ import annotations

import pytest
import torch

from bastion.errors import NotFittedError
from bastion.guard import fit_guard
from bastion.guard.config import ExtractionConfig
from bastion.guard.extraction import ExtractionMonitor, shapiro_w
from bastion.guard.simulate import benign_clients, extraction_attack
from tests.guard.conftest import fast_config


@pytest.fixture(scope="module")
def prada_guard(guard_module, digits):
    """A guard whose extraction monitor relies on PRADA alone (no anomaly-rate alerts)."""
    cfg = fast_config(anomaly_rate=None)
    cfg.detectors.reconstruction.epochs = 5
    return fit_guard(guard_module, digits.train, config=cfg)


def test_delta_is_calibrated_below_benign_w(fitted_guard):
    ext = fitted_guard.extraction
    assert 0.5 < ext.delta_ < ext.benign_min_w_ <= 1.0


def test_prada_alerts_on_jacobian_attacker(prada_guard, digits):
    run = extraction_attack(prada_guard, digits.test.x, source="jacobian", budget=300, seed=0)
    assert run.alerted and run.alert_at <= 300
    assert run.reason.startswith("PRADA") and run.last_w < prada_guard.extraction.delta_


def test_no_false_alarm_on_benign_clients(prada_guard, fitted_guard, digits):
    for guard in (prada_guard, fitted_guard):
        runs = benign_clients(guard, digits.test.x, n_clients=2, queries=300, seed=3)
        assert not any(r.alerted for r in runs), [r.reason for r in runs]
        assert all(r.last_w is not None for r in runs)
        for r in runs:
            guard.reset_client(r.client_id)


def test_anomaly_rate_catches_noise_attacker(fitted_guard, digits):
    run = extraction_attack(fitted_guard, digits.test.x, source="noise", budget=100, seed=0)
    assert run.alerted and run.alert_at <= 50 and "anomalous" in run.reason
    verdicts = fitted_guard.inspect(digits.test.x[:2], run.client_id)
    assert all(v.verdict == "block" for v in verdicts)  # sticky until reset
    fitted_guard.reset_client(run.client_id)
    assert fitted_guard.client_status(run.client_id).queries == 0


def _monitor(**kw: object) -> ExtractionMonitor:
    cfg = ExtractionConfig(delta=0.9, **kw)
    return ExtractionMonitor(cfg).fit(torch.rand(10, 1, 8, 8), torch.nn.Identity())


def test_volume_alert_in_window():
    mon = _monitor(max_queries_per_window=5, volume_window_s=10.0)
    x, p = torch.rand(1, 1, 8, 8), torch.tensor([0])
    statuses = [mon.observe("c", x, p, now=float(t))[0] for t in range(6)]
    assert statuses[4].volume == 5 and not statuses[4].volume_alert
    assert statuses[5].volume_alert
    later = mon.observe("c", x, p, now=100.0)[0]
    assert later.volume == 1 and not later.volume_alert


def test_state_is_bounded():
    mon = _monitor(max_clients=3, growing_set=10, history=50)
    gen = torch.Generator().manual_seed(0)
    for k in range(5):
        mon.observe(
            f"c{k}", torch.rand(80, 1, 8, 8, generator=gen), torch.zeros(80, dtype=torch.long)
        )
    assert mon.clients() == ["c2", "c3", "c4"]
    client = mon._clients.get("c4")
    assert len(client.dists) <= 50 and client.growing[0].shape[0] == 10


def test_exact_repeats_are_ignored():
    mon = _monitor()
    x = torch.rand(1, 1, 8, 8)
    for _ in range(200):
        mon.observe("r", x, torch.tensor([1]))
    assert len(mon._clients.get("r").dists) == 0 and not mon.status("r").extraction_alert


def test_shapiro_w_separates_normal_from_bimodal():
    gen = torch.Generator().manual_seed(0)
    normal = torch.randn(300, generator=gen).numpy() + 5
    bimodal = torch.cat(
        [torch.randn(150, generator=gen) * 0.1, torch.randn(150, generator=gen) * 0.1 + 3]
    ).numpy()
    assert shapiro_w(normal) > 0.98 > 0.9 > shapiro_w(bimodal)


def test_observe_before_fit_raises():
    with pytest.raises(NotFittedError, match=r"ExtractionMonitor\.fit"):
        ExtractionMonitor().observe("c", torch.rand(1, 1, 8, 8), torch.tensor([0]))
