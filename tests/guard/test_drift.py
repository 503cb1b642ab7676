"""Sliding-window drift: quiet on clean traffic, alerts on shifted traffic."""

from __future__ import annotations

import pytest
import torch

from bastion.errors import NotFittedError
from bastion.guard.config import DriftConfig
from bastion.guard.drift import DriftMonitor


def test_no_alert_on_clean_windows_and_alert_on_shift(fitted_guard, digits):
    monitor = DriftMonitor.from_state(*fitted_guard.drift.state())
    assert monitor.status().window_size == 0 and monitor.status().p_value == 1.0
    monitor.update(fitted_guard.tap(digits.test.x[:200]).features)
    clean = monitor.status()
    assert clean.window_size == 200 and not clean.alert and clean.p_value > 0.01
    monitor.reset()
    shifted = 1.0 - digits.test.x[:200]  # inverted images
    monitor.update(fitted_guard.tap(shifted).features)
    drift = monitor.status()
    assert drift.alert and drift.p_value < 1e-3 and drift.statistic > clean.statistic


def test_guard_drift_status_tracks_inspected_traffic(fitted_guard, digits):
    fitted_guard.drift.reset()
    fitted_guard.inspect(digits.test.x[:60], "drift-client")
    status = fitted_guard.drift_status()
    assert status.window_size == 60 and status.window_capacity == 200
    fitted_guard.drift.reset()
    fitted_guard.reset_client("drift-client")


def test_window_slides_and_keeps_capacity():
    gen = torch.Generator().manual_seed(0)
    monitor = DriftMonitor(DriftConfig(window=20, min_samples=10, components=2)).fit(
        torch.randn(300, 5, generator=gen)
    )
    monitor.update(torch.randn(15, 5, generator=gen))
    assert monitor.status().window_size == 15
    monitor.update(torch.randn(15, 5, generator=gen) + 5)
    status = monitor.status()
    assert status.window_size == 20 and status.alert


def test_status_before_fit_raises():
    with pytest.raises(NotFittedError, match=r"DriftMonitor\.fit"):
        DriftMonitor().status()
