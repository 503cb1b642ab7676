"""The guard: input detectors + drift + per-client extraction monitoring + the verdict policy.

``fit_guard(module, train)`` fits every enabled detector on clean training data, calibrates
their thresholds on a held-out part to the target false-positive rate, and returns a
:class:`Guard`. ``Guard.inspect(x, client_id)`` gives one :class:`GuardVerdict` per sample
(batched, no gradients, safe to call from several threads). ``Guard.save(model_dir)`` writes
``guard.json`` (config, parameters, thresholds) and ``guard.safetensors`` (learned tensors)
beside the model — no pickle; ``Guard.load(model_dir, module)`` reads them back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bastion.data.dataset import Dataset
from bastion.errors import DataError, ModelError
from bastion.guard.base import Detector
from bastion.guard.config import GuardConfig
from bastion.guard.detectors import DETECTORS, build_detectors
from bastion.guard.drift import DriftMonitor
from bastion.guard.extraction import ExtractionMonitor, ExtractionStatus
from bastion.guard.policy import ClientSignal, decide
from bastion.guard.tap import ModelTap, TapOutputs
from bastion.guard.verdict import DriftStatus, GuardVerdict

log = logging.getLogger(__name__)
GUARD_JSON = "guard.json"
GUARD_TENSORS = "guard.safetensors"
FORMAT_VERSION = 1


class GuardNotFittedError(ModelError):
    """No guard was fitted for a model directory (or it belongs to another model)."""


class Guard:
    """Composes fitted detectors, the drift monitor and the extraction monitor under a policy.

    Build it with :func:`fit_guard` or :meth:`Guard.load`, not by hand."""

    def __init__(
        self,
        tap: ModelTap,
        detectors: dict[str, Detector],
        config: GuardConfig,
        *,
        drift: DriftMonitor | None = None,
        extraction: ExtractionMonitor | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.tap = tap
        self.detectors = detectors
        self.config = config
        self.drift = drift
        self.extraction = extraction
        self.meta = dict(meta or {})
        self._lock = threading.Lock()
        self._input_shape: tuple[int, ...] | None = (
            tuple(self.meta["input_shape"]) if self.meta.get("input_shape") else None
        )

    # -- inspection -----------------------------------------------------------------------
    @property
    def thresholds(self) -> dict[str, float]:
        return {name: det.threshold() for name, det in self.detectors.items()}

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            raise DataError("guard input must be a batch tensor of shape (N, C, H, W)")
        if self._input_shape is not None and tuple(x.shape[1:]) != self._input_shape:
            raise DataError(
                f"guard input has sample shape {tuple(x.shape[1:])}, the model expects "
                f"{self._input_shape}"
            )
        if not torch.isfinite(x).all():
            raise DataError("guard input contains NaN or Inf values")

    def scores(self, x: torch.Tensor, outputs: TapOutputs | None = None) -> dict[str, torch.Tensor]:
        """Raw scores of every detector for a batch (no state is changed)."""
        self._check_input(x)
        with torch.no_grad():
            outputs = outputs if outputs is not None else self.tap(x)
            return {name: det.score(x, outputs) for name, det in self.detectors.items()}

    def predict_and_inspect(
        self, x: torch.Tensor, client_id: str, *, now: float | None = None
    ) -> tuple[torch.Tensor, list[GuardVerdict]]:
        """The model's logits for ``x`` and one verdict per sample, from one forward pass.
        Updates the drift window and the client's extraction state."""
        self._check_input(x)
        with torch.no_grad():
            outputs = self.tap(x)
            raw = {name: det.score(x, outputs) for name, det in self.detectors.items()}
        thresholds = self.thresholds
        n = x.shape[0]
        rows = [{name: float(s[i]) for name, s in raw.items()} for i in range(n)]
        fired = [any(r[k] > thresholds[k] for k in r) for r in rows]
        if self.drift is not None:
            self.drift.update(outputs.features)
        signals: list[ClientSignal | None] = [None] * n
        if self.extraction is not None:
            statuses = self.extraction.observe(
                client_id, x, outputs.predictions, anomalous=fired,
                now=time.time() if now is None else now,
            )  # fmt: skip
            signals = [s.signal() for s in statuses]
        verdicts = [
            decide(r, thresholds, self.config.policy, sig)
            for r, sig in zip(rows, signals, strict=True)
        ]
        return outputs.logits, verdicts

    def inspect(self, x: torch.Tensor, client_id: str) -> list[GuardVerdict]:
        """One verdict per sample of the batch ``x`` sent by ``client_id``."""
        return self.predict_and_inspect(x, client_id)[1]

    def drift_status(self) -> DriftStatus:
        """p-value and alert of the sliding-window drift test (alert False when disabled)."""
        if self.drift is None:
            return DriftStatus(p_value=1.0, alert=False, window_size=0, window_capacity=0,
                               alpha=self.config.drift.alpha, method="disabled")  # fmt: skip
        return self.drift.status()

    def client_status(self, client_id: str) -> ExtractionStatus | None:
        """The extraction monitor's current view of one client (None when disabled)."""
        return None if self.extraction is None else self.extraction.status(client_id)

    def reset_client(self, client_id: str) -> None:
        """Forget a client's extraction state (e.g. after a reviewer cleared it)."""
        if self.extraction is not None:
            self.extraction.reset(client_id)

    # -- persistence ----------------------------------------------------------------------
    @staticmethod
    def exists(model_dir: str | Path) -> bool:
        return (Path(model_dir) / GUARD_JSON).is_file()

    def save(self, model_dir: str | Path) -> Path:
        """Write ``guard.json`` and ``guard.safetensors`` into ``model_dir``; returns the JSON path."""
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        detectors = {}
        for name, det in self.detectors.items():
            scalars, ts = det.state()
            detectors[name] = {"params": det.get_params(), "state": scalars}
            tensors.update({f"detector.{name}.{k}": v for k, v in ts.items()})
        doc: dict[str, Any] = {
            "format": FORMAT_VERSION, "config": self.config.model_dump(mode="json"),
            "meta": self.meta, "detectors": detectors,
        }  # fmt: skip
        if self.drift is not None:
            scalars, ts = self.drift.state()
            doc["drift"] = scalars
            tensors.update({f"drift.{k}": v for k, v in ts.items()})
        if self.extraction is not None:
            doc["extraction"] = self.extraction.state()
        tmp_t = model_dir / (GUARD_TENSORS + ".tmp")
        save_file(tensors, str(tmp_t))
        tmp_t.replace(model_dir / GUARD_TENSORS)
        tmp_j = model_dir / (GUARD_JSON + ".tmp")
        tmp_j.write_text(json.dumps(doc, indent=2))
        tmp_j.replace(model_dir / GUARD_JSON)
        return model_dir / GUARD_JSON

    @classmethod
    def load(cls, model_dir: str | Path, module: nn.Module, *, check_model: bool = True) -> Guard:
        """Read the guard saved beside a model. Raises :class:`GuardNotFittedError` when there
        is none, or when it was fitted for other weights (``check_model``)."""
        model_dir = Path(model_dir)
        path = model_dir / GUARD_JSON
        fix = f"run `bastion guard fit --model {model_dir}`"
        if not path.is_file() or not (model_dir / GUARD_TENSORS).is_file():
            raise GuardNotFittedError(f"no guard fitted for {model_dir}: {fix}")
        try:
            doc = json.loads(path.read_text())
            tensors = load_file(str(model_dir / GUARD_TENSORS))
        except (ValueError, OSError) as exc:
            raise GuardNotFittedError(f"{path}: unreadable guard ({exc}): {fix}") from None
        if doc.get("format") != FORMAT_VERSION:
            raise GuardNotFittedError(f"{path}: guard format {doc.get('format')!r} is not "
                                      f"{FORMAT_VERSION}: {fix}")  # fmt: skip
        meta = doc.get("meta", {})
        if check_model and meta.get("model_sha256"):
            from bastion.models.io import state_sha256

            if state_sha256(module) != meta["model_sha256"]:
                raise GuardNotFittedError(f"{path} was fitted for other model weights: {fix} again")
        config = GuardConfig.model_validate(doc["config"])
        tap = ModelTap(module)
        detectors: dict[str, Detector] = {}
        for name, entry in doc["detectors"].items():
            if name not in DETECTORS:
                raise GuardNotFittedError(f"{path}: unknown detector {name!r}: {fix}")
            det = DETECTORS[name](**entry["params"])
            prefix = f"detector.{name}."
            det.load_state(entry["state"],
                           {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})  # fmt: skip
            if det.needs_model:
                det.model = tap  # type: ignore[attr-defined]
            detectors[name] = det
        drift = None
        if "drift" in doc:
            drift = DriftMonitor.from_state(
                doc["drift"], {k[6:]: v for k, v in tensors.items() if k.startswith("drift.")}
            )
        extraction = (
            ExtractionMonitor.from_state(doc["extraction"]) if "extraction" in doc else None
        )
        return cls(tap, detectors, config, drift=drift, extraction=extraction, meta=meta)


def _split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_cal = max(1, int(round(fraction * n)))
    return perm[n_cal:], perm[:n_cal]


def fit_guard(
    module: nn.Module,
    train: Dataset,
    *,
    target_fpr: float | None = None,
    config: GuardConfig | None = None,
    calibration: Dataset | None = None,
    model_sha256: str | None = None,
) -> Guard:
    """Fit and calibrate a guard for ``module`` on clean data.

    Detectors are fitted on ``train`` (minus a held-out ``config.calibration_fraction`` when
    no ``calibration`` set is given) and their thresholds set so that a share
    ``target_fpr`` (default ``config.target_fpr``) of held-out clean inputs is flagged."""
    config = config or GuardConfig()
    if target_fpr is not None:
        config = config.model_copy(update={"target_fpr": target_fpr})
    module.eval()
    tap = ModelTap(module)
    if calibration is None:
        fit_idx, cal_idx = _split(len(train), config.calibration_fraction, config.seed)
        x_fit, y_fit, x_cal = train.x[fit_idx], train.y[fit_idx], train.x[cal_idx]
    else:
        x_fit, y_fit, x_cal = train.x, train.y, calibration.x
    spec = train.input_spec
    lo, hi = spec.lower_tensor(), spec.upper_tensor()
    bounds = spec.scalar_bounds() or (float(lo.min()), float(hi.max()))
    detectors = build_detectors(config, tap, bounds=bounds)
    for name, det in detectors.items():
        start = time.perf_counter()
        det.fit(x_fit, y_fit).calibrate(x_cal, config.target_fpr)
        log.info("fitted %s in %.2f s (threshold %.4g)", name, time.perf_counter() - start,
                 det.threshold())  # fmt: skip
    with torch.no_grad():
        feats = torch.cat([tap(x_fit[i : i + 512]).features for i in range(0, len(x_fit), 512)])
    drift = None
    if config.drift.enabled:
        drift = DriftMonitor(config.drift).fit(feats)
    extraction = None
    if config.extraction.enabled:
        extraction = ExtractionMonitor(config.extraction).fit(
            torch.cat([x_fit, x_cal]), tap, seed=config.seed
        )
    if model_sha256 is None:
        from bastion.models.io import state_sha256

        model_sha256 = state_sha256(module)
    meta = {
        "model_sha256": model_sha256, "data": train.name, "n_fit": len(x_fit),
        "n_calibration": len(x_cal), "input_shape": list(train.shape),
        "bounds": list(bounds), "input_spec": spec.model_dump(), "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    return Guard(tap, detectors, config, drift=drift, extraction=extraction, meta=meta)
