"""Distribution drift of the traffic against the reference data.

The reference is a sample of penultimate-layer features of clean training data, projected
on its top ``components`` principal components. A sliding window of the most recent
``window`` inputs is compared with it by a two-sample Kolmogorov–Smirnov test per component;
the p-values are Bonferroni-corrected (min p × k), as in Rabanser et al. 2019 ("Failing
Loudly"), and an alert is raised when the corrected p-value falls below ``alpha``.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from scipy import stats

from bastion.errors import NotFittedError
from bastion.guard.config import DriftConfig
from bastion.guard.verdict import DriftStatus


class DriftMonitor:
    """Sliding-window KS drift test on PCA components. ``fit(reference_features)``, then
    ``update(features)`` per request and ``status()`` when asked (cached until the window
    changes). Thread-safe."""

    def __init__(self, config: DriftConfig | None = None, *, seed: int = 0) -> None:
        self.config = config or DriftConfig()
        self.seed = seed
        self._lock = threading.Lock()
        self._cached: DriftStatus | None = None

    def fit(self, reference: torch.Tensor) -> DriftMonitor:
        """Learn the projection and keep a reference sample (features, shape (N, D))."""
        ref = reference.detach().flatten(1).double()
        if len(ref) > self.config.reference_size:
            gen = torch.Generator().manual_seed(self.seed)
            ref = ref[torch.randperm(len(ref), generator=gen)[: self.config.reference_size]]
        mean = ref.mean(0)
        k = min(self.config.components, ref.shape[1], len(ref) - 1)
        _, _, vh = torch.linalg.svd(ref - mean, full_matrices=False)
        self.mean_ = mean.float()
        self.components_ = vh[:k].T.contiguous().float()  # (D, k)
        self.reference_ = ((ref - mean) @ vh[:k].T).float()  # (N, k)
        self._reset_window()
        return self

    def _reset_window(self) -> None:
        k = self.components_.shape[1]
        self._window = torch.zeros(self.config.window, k)
        self._count = 0  # total samples seen
        self._cached = None

    def _check(self) -> None:
        if not hasattr(self, "components_"):
            raise NotFittedError(self, "fit")

    def project(self, features: torch.Tensor) -> torch.Tensor:
        self._check()
        return (features.detach().flatten(1).float() - self.mean_) @ self.components_

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of penultimate features (N, D) to the sliding window."""
        z = self.project(features)
        cap = self.config.window
        with self._lock:
            for row in z[-cap:]:
                self._window[self._count % cap] = row
                self._count += 1
            self._cached = None

    def reset(self) -> None:
        """Empty the window (e.g. after a deliberate model or data change)."""
        with self._lock:
            self._reset_window()

    def status(self) -> DriftStatus:
        """The corrected p-value and alert for the current window."""
        self._check()
        cfg = self.config
        with self._lock:
            if self._cached is not None:
                return self._cached
            n = min(self._count, cfg.window)
            window = self._window[:n].numpy().copy()
        if n < cfg.min_samples:
            result = DriftStatus(
                p_value=1.0, alert=False, window_size=n, window_capacity=cfg.window, alpha=cfg.alpha
            )
        else:
            ref = self.reference_.numpy()
            tests = [stats.ks_2samp(ref[:, j], window[:, j]) for j in range(ref.shape[1])]
            p_min = min(float(t.pvalue) for t in tests)
            p = min(1.0, p_min * len(tests))
            stat = max(float(t.statistic) for t in tests)
            result = DriftStatus(
                p_value=p,
                alert=bool(p < cfg.alpha),
                window_size=n,
                window_capacity=cfg.window,
                alpha=cfg.alpha,
                statistic=stat,
            )
        with self._lock:
            self._cached = result
        return result

    # -- persistence ----------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        self._check()
        scalars = {"config": self.config.model_dump(mode="json"), "seed": self.seed}
        tensors = {
            "mean_": self.mean_,
            "components_": self.components_,
            "reference_": self.reference_,
        }
        return scalars, {k: v.contiguous() for k, v in tensors.items()}

    @classmethod
    def from_state(cls, scalars: dict[str, Any], tensors: dict[str, torch.Tensor]) -> DriftMonitor:
        monitor = cls(
            DriftConfig.model_validate(scalars["config"]), seed=int(scalars.get("seed", 0))
        )
        monitor.mean_ = tensors["mean_"]
        monitor.components_ = tensors["components_"]
        monitor.reference_ = tensors["reference_"]
        monitor._reset_window()
        return monitor
