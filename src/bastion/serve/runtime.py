"""The model and its guard as the gateway runs them: loaded once (in the app's lifespan),
then one call per request gives the probabilities and a verdict per sample.

The guard is reached through two small adapters (:func:`load_guard`, :meth:`Runtime.infer`)
so the gateway depends only on ``Guard.load(model_dir, module)``,
``guard.predict_and_inspect(x, client_id)`` (or ``guard.inspect``) and
``guard.drift_status()``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bastion.errors import ConfigError, ModelError
from bastion.models.io import LoadedModel, load_model
from bastion.serve.settings import ServeSettings

log = logging.getLogger(__name__)
VERDICT_ORDER = {"allow": 0, "flag": 1, "hold": 2, "block": 3}


@dataclass(frozen=True)
class Inference:
    """What the model and guard said about one batch."""

    probabilities: torch.Tensor  # (N, K)
    predictions: list[int]
    verdicts: list[dict[str, Any]]  # per sample: verdict, scores, reasons
    verdict: str  # the most severe of the per-sample verdicts

    @property
    def scores(self) -> list[dict[str, float]]:
        return [v.get("scores", {}) for v in self.verdicts]


def load_guard(model_dir: Path, module: torch.nn.Module, *, required: bool) -> Any | None:
    """The fitted guard saved beside the model, or None (with a warning) when there is none
    and ``required`` is false."""
    try:
        from bastion.guard.guard import Guard
    except ImportError as exc:
        if required:
            raise ConfigError(
                f"guard.required is set but bastion.guard cannot load: {exc}"
            ) from None
        log.warning("guard unavailable (%s): serving without detectors", exc)
        return None
    try:
        return Guard.load(model_dir, module)
    except ModelError as exc:  # none fitted, or fitted for other weights
        if required:
            raise ConfigError(f"guard.required is set: {exc}") from None
        log.warning("serving WITHOUT a guard: %s", exc)
        return None
    except Exception as exc:  # a guard is there but unreadable: never serve unguarded by accident
        raise ConfigError(
            f"cannot load the guard beside {model_dir} ({type(exc).__name__}: {exc}): refit it "
            f"with `bastion guard fit --model {model_dir}`, or set guard.enabled: false"
        ) from None


def _verdict_dict(v: Any) -> dict[str, Any]:
    if hasattr(v, "model_dump"):
        return v.model_dump()
    return {"verdict": v.verdict, "scores": dict(v.scores), "reasons": list(v.reasons)}


class Runtime:
    """The loaded model (eval mode, no gradients) plus an optional guard."""

    def __init__(
        self, loaded: LoadedModel, *, sample_shape: tuple[int, ...],
        bounds: tuple[float, float], guard: Any | None = None,
    ) -> None:  # fmt: skip
        self.loaded = loaded
        self.module = loaded.module.eval()
        self.sample_shape = sample_shape
        self.bounds = bounds
        self.guard = guard

    @classmethod
    def from_settings(cls, settings: ServeSettings) -> Runtime:
        if settings.model_dir is None:
            raise ConfigError("no model to serve: pass --model DIR (or model_dir in serve.yaml)")
        loaded = load_model(settings.model_dir)
        params = loaded.spec.params if loaded.spec is not None else {}
        if "input_shape" not in params:
            raise ModelError(f"{settings.model_dir}: spec.json has no input_shape")
        shape = tuple(int(s) for s in params["input_shape"])
        guard = None
        if settings.guard.enabled:
            guard_dir = settings.guard.dir or settings.model_dir
            guard = load_guard(guard_dir, loaded.module, required=settings.guard.required)
        bounds = _bounds(loaded, guard)
        return cls(loaded, sample_shape=shape, bounds=bounds, guard=guard)

    @property
    def model_sha256(self) -> str:
        return self.loaded.sha256

    def infer(self, x: torch.Tensor, client_id: str) -> Inference:
        """Probabilities, predictions and verdicts for one validated batch (blocking)."""
        return self.infer_many([(x, client_id)])[0]

    def infer_many(self, requests: list[tuple[torch.Tensor, str]]) -> list[Inference | Exception]:
        """Several requests in as few passes as possible (blocking): the model runs once over
        all of them; the guard once per client (its extraction state is per client), in
        arrival order. A failing guard call fails only its own client's requests."""
        sizes = [int(x.shape[0]) for x, _ in requests]
        out: list[Inference | Exception | None] = [None] * len(requests)
        with torch.inference_mode():
            if self.guard is None:
                logits = self.module(torch.cat([x for x, _ in requests]))
                allow = {"verdict": "allow", "scores": {}, "reasons": []}
                for i, part in enumerate(logits.split(sizes)):
                    out[i] = _inference(part, [dict(allow) for _ in range(sizes[i])])
                return out  # type: ignore[return-value]
            groups: dict[str, list[int]] = {}
            for i, (_, client) in enumerate(requests):
                groups.setdefault(client, []).append(i)
            for client, idx in groups.items():
                try:
                    x = torch.cat([requests[i][0] for i in idx])
                    if hasattr(self.guard, "predict_and_inspect"):
                        logits, verdicts = self.guard.predict_and_inspect(x, client)
                    else:
                        logits, verdicts = self.module(x), self.guard.inspect(x, client)
                    vds = [_verdict_dict(v) for v in verdicts]
                except Exception as exc:  # reported to these requests only
                    for i in idx:
                        out[i] = exc
                    continue
                start = 0
                for i, part in zip(idx, logits.split([sizes[i] for i in idx]), strict=True):
                    out[i] = _inference(part, vds[start : start + sizes[i]])
                    start += sizes[i]
        return out  # type: ignore[return-value]

    def drift_status(self) -> dict[str, Any] | None:
        if self.guard is None:
            return None
        status = self.guard.drift_status()
        return status.model_dump() if hasattr(status, "model_dump") else dict(status)


def _inference(logits: torch.Tensor, vds: list[dict[str, Any]]) -> Inference:
    probs = torch.softmax(logits.float(), dim=1)
    worst = max((v["verdict"] for v in vds), key=VERDICT_ORDER.__getitem__, default="allow")
    return Inference(probs, probs.argmax(1).tolist(), vds, worst)


def _bounds(loaded: LoadedModel, guard: Any | None) -> tuple[float, float]:
    """Valid input range: the training manifest's, else the guard's, else [0, 1]."""
    manifest = loaded.provenance.get("train_manifest") or {}
    spec = manifest.get("input_spec")
    if spec:
        return min(spec["lower"]), max(spec["upper"])
    if manifest.get("bounds"):  # manifests written before the input spec
        lo, hi = manifest["bounds"]
        return float(lo), float(hi)
    meta = getattr(guard, "meta", None) or {}
    if meta.get("bounds"):
        lo, hi = meta["bounds"]
        return float(lo), float(hi)
    return 0.0, 1.0
