"""The guard: input detectors + drift + per-client extraction monitoring + the verdict policy.

``fit_guard(model, train)`` fits every enabled detector that applies on clean training data,
calibrates their thresholds on a held-out part to the target false-positive rate, and
returns a :class:`Guard`. ``model`` is an ``nn.Module`` or a
:class:`~bastion.models.loaded.LoadedModel` of any form: where the model's hidden layers can
be read (a torch module with an ``nn.Linear`` head) Mahalanobis and drift run on them;
otherwise (scikit-learn, XGBoost, ONNX through onnxruntime) the guard reads the model
through its scores only and uses input-space detectors, in units of the input spec's
per-feature ranges. Which detectors were not built, and why, is kept in the guard's meta
(``detectors_not_built``) with the full input spec.

``Guard.inspect(x, client_id)`` gives one :class:`GuardVerdict` per sample (batched, no
gradients, safe to call from several threads). ``Guard.save(dir)`` writes ``guard.json``
(config, parameters, thresholds, meta) and ``guard.safetensors`` (learned tensors) — no
pickle; ``Guard.load(dir, model)`` reads them back. A model directory holds its guard; for a
model file the guard goes in ``<file>.guard/`` beside it (:func:`default_guard_dir`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bastion.data.dataset import Dataset
from bastion.data.spec import InputSpec, image_spec
from bastion.errors import DataError, ModelError
from bastion.guard.base import Detector
from bastion.guard.config import CalibrationRecord, GuardConfig
from bastion.guard.detectors import DETECTORS, build_detectors
from bastion.guard.drift import DriftMonitor
from bastion.guard.extraction import ExtractionMonitor, ExtractionStatus
from bastion.guard.policy import ClientSignal, decide
from bastion.guard.query import (
    QueryBatch,
    QueryMonitors,
    QueryStatus,
    fit_query_monitors,
    merge_signals,
)
from bastion.guard.shared import ClientStateStore, Observation
from bastion.guard.tap import InputScale, ModelTap, ScoresTap, Tap, TapOutputs, make_tap
from bastion.guard.verdict import DriftStatus, GuardVerdict
from bastion.models.loaded import LoadedModel
from bastion.scan.engine import require_clean

log = logging.getLogger(__name__)
GUARD_JSON = "guard.json"
GUARD_TENSORS = "guard.safetensors"
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


class GuardNotFittedError(ModelError):
    """No guard was fitted for a model (or it belongs to another model)."""


def default_guard_dir(model: LoadedModel | str | Path | None) -> Path | None:
    """Where a model's guard lives: the model directory itself, or ``<file>.guard/`` beside
    a model file (``bc.pt`` → ``bc.pt.guard/``; an entry point's weights file when the model
    has no path). None when nothing names a place (an entry point without weights)."""
    if isinstance(model, LoadedModel):
        path = model.path
        if path is None:
            weights = [a for a in model.artifacts if a.role != "source"]
            path = Path(weights[0].path) if weights else None
    else:
        path = Path(model) if model is not None else None
    if path is None:
        return None
    return path if path.is_dir() else path.with_name(path.name + ".guard")


def _legacy_spec(meta: dict[str, Any]) -> InputSpec | None:
    """The input spec of a guard saved before meta held one (images in a scalar range)."""
    shape, bounds = meta.get("input_shape"), meta.get("bounds")
    if not shape:
        return None
    lo, hi = bounds if bounds else (0.0, 1.0)
    if len(shape) == 3:
        return image_spec(tuple(shape), bounds=(float(lo), float(hi)), source="guard meta")
    return InputSpec(
        modality="tabular",
        shape=list(shape),
        source_layout="flat",
        lower=[float(lo)],
        upper=[float(hi)],
        bounds_source="guard meta",
    )


class Guard:
    """Composes fitted detectors, the drift monitor and the extraction monitor under a policy.

    Build it with :func:`fit_guard` or :meth:`Guard.load`, not by hand. ``tap`` reads the
    model (:class:`~bastion.guard.tap.ModelTap` or :class:`~bastion.guard.tap.ScoresTap`);
    ``input_spec`` is the spec the guard was fitted for (from ``meta["input_spec"]``)."""

    def __init__(
        self,
        tap: Tap,
        detectors: dict[str, Detector],
        config: GuardConfig,
        *,
        drift: DriftMonitor | None = None,
        extraction: ExtractionMonitor | None = None,
        query: QueryMonitors | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.tap = tap
        self.detectors = detectors
        self.config = config
        self.drift = drift
        self.extraction = extraction
        self.query = query
        self.meta = dict(meta or {})
        self._lock = threading.RLock()  # held while the stateful monitors apply a shared log
        self.shared: ClientStateStore | None = None  # None: state of this process only
        spec = self.meta.get("input_spec")
        self.input_spec: InputSpec | None = (
            InputSpec.model_validate(spec) if spec else _legacy_spec(self.meta)
        )
        self._scale = InputScale.from_spec(self.input_spec)
        self._input_shape: tuple[int, ...] | None = (
            tuple(self.meta["input_shape"]) if self.meta.get("input_shape") else None
        )

    # -- inspection -----------------------------------------------------------------------
    @property
    def thresholds(self) -> dict[str, float]:
        return {name: det.threshold() for name, det in self.detectors.items()}

    @property
    def not_built(self) -> dict[str, str]:
        """Detectors of the config that were not built, and why."""
        return dict(self.meta.get("detectors_not_built") or {})

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            tabular = self.input_spec is not None and self.input_spec.modality == "tabular"
            want = "(N, features)" if tabular else "(N, C, H, W)"
            raise DataError(f"guard input must be a batch tensor of shape {want}")
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
        """The model's logits for ``x`` (log-probabilities for a model read through its
        scores) and one verdict per sample, from one model pass. Updates the drift window
        and the client's state in the extraction monitor (PRADA) and the query detectors
        (similarity, coverage); an alert of any of them is the client's extraction alert."""
        logits, (verdicts,) = self.predict_and_inspect_groups(
            x, [(client_id, int(x.shape[0]))], now=now, isolate=False
        )
        assert not isinstance(verdicts, Exception)
        return logits, verdicts

    def predict_and_inspect_groups(
        self,
        x: torch.Tensor,
        groups: Sequence[tuple[str, int]],
        *,
        now: float | None = None,
        isolate: bool = True,
    ) -> tuple[torch.Tensor, list[list[GuardVerdict] | Exception]]:
        """:meth:`predict_and_inspect` for a batch of several clients' samples: ``x`` holds
        the groups' samples one group after the other, ``groups`` each group's client and
        sample count. The model and every detector run once over the whole batch (one
        pass, whatever the number of clients); the stateful monitors then take each
        group in turn, as separate calls would. With ``isolate`` a monitor's failure
        (e.g. the shared state's Redis) is that group's result, not every group's."""
        if sum(n for _, n in groups) != int(x.shape[0]):
            raise DataError("the groups' sample counts do not add up to the batch")
        self._check_input(x)
        with torch.no_grad():
            outputs = self.tap(x)
            raw = {name: det.score(x, outputs) for name, det in self.detectors.items()}
        thresholds = self.thresholds
        table = {name: s.tolist() for name, s in raw.items()}
        rows = [{name: values[i] for name, values in table.items()} for i in range(int(x.shape[0]))]
        fired = [any(r[k] > thresholds[k] for k in r) for r in rows]
        now = time.time() if now is None else now
        stateful = self.extraction is not None or self.query is not None
        scaled = self._scale(x) if stateful else x
        parts = _parts(groups)
        observe = self._observe_local if self.shared is None else self._observe_shared
        return outputs.logits, [
            sig
            if isinstance(sig, Exception)
            else [
                decide(r, thresholds, self.config.policy, s)
                for r, s in zip(rows[part], sig, strict=True)
            ]
            for sig, part in zip(
                observe(groups, parts, scaled, outputs, fired, now, isolate), parts, strict=True
            )
        ]

    def _observe_local(
        self,
        groups: Sequence[tuple[str, int]],
        parts: list[slice],
        scaled: torch.Tensor,
        outputs: TapOutputs,
        fired: list[bool],
        now: float,
        isolate: bool,
    ) -> list[list[ClientSignal | None] | Exception]:
        """This process's monitors: what no client's state enters once for the batch (the
        drift window, one for all clients and fed in the same order; the query detectors'
        hashes and projections), then each group's client state in turn."""
        if self.drift is not None:
            self.drift.update(outputs.features)
        batch = None if self.query is None else self.query.prepare(scaled, outputs)
        out: list[list[ClientSignal | None] | Exception] = []
        for (client_id, _), part in zip(groups, parts, strict=True):
            try:
                out.append(
                    self._observe(
                        client_id,
                        scaled[part],
                        outputs.part(part),
                        fired[part],
                        now,
                        prepared=None if batch is None else batch.part(part),
                        drift=False,
                    )
                )
            except Exception as exc:
                if not isolate:
                    raise
                out.append(exc)
        return out

    def _observe_shared(
        self,
        groups: Sequence[tuple[str, int]],
        parts: list[slice],
        scaled: torch.Tensor,
        outputs: TapOutputs,
        fired: list[bool],
        now: float,
        isolate: bool,
    ) -> list[list[ClientSignal | None] | Exception]:
        """The shared log: every group's observation appended in one exchange (two Redis
        round trips for the whole micro-batch), then everything before it and the batch
        applied in log order; a failure is every group's."""
        assert self.shared is not None
        batch = [
            Observation(
                client_id,
                scaled[part].detach().float().numpy(),
                outputs.features[part].detach().float().numpy(),
                outputs.predictions[part].numpy().astype("int64"),
                np.array(fired[part], dtype=bool),
                now,
            )
            for (client_id, _), part in zip(groups, parts, strict=True)
        ]
        own: list[list[ClientSignal | None] | Exception] = [
            [None] * len(obs.anomalous) for obs in batch
        ]
        try:
            with self._lock:
                for entry, index in self.shared.exchange_many(batch):
                    signals = self._apply(entry)
                    if index is not None:
                        own[index] = signals
        except Exception as exc:
            if not isolate:
                raise
            return [exc] * len(batch)
        return own

    def _observe(
        self,
        client_id: str,
        scaled: torch.Tensor,
        outputs: TapOutputs,
        fired: list[bool],
        now: float,
        *,
        prepared: QueryBatch | None = None,
        drift: bool = True,
    ) -> list[ClientSignal | None]:
        """Update the drift window (unless ``drift`` is False: done for the whole batch)
        and the client's state in the stateful monitors; one client signal per sample (None
        without extraction and query monitors). ``prepared``: the query detectors'
        stateless part of these rows, when computed for a larger batch."""
        if drift and self.drift is not None:
            self.drift.update(outputs.features)
        signals: list[ClientSignal | None] = [None] * len(fired)
        if self.extraction is not None:
            statuses = self.extraction.observe(
                client_id, scaled, outputs.predictions, anomalous=fired, now=now
            )
            signals = [s.signal() for s in statuses]
        if self.query is not None:
            extra = self.query.observe(client_id, scaled, outputs, prepared)
            signals = [merge_signals(s, e) for s, e in zip(signals, extra, strict=True)]
        return signals

    # -- state shared by replicas (bastion.guard.shared) ------------------------------------
    def share_state(self, store: ClientStateStore | None) -> None:
        """Feed the stateful monitors from ``store``, the log of every replica's
        observations, replaying what it holds now; None: this process only (the default).
        A guard without stateful monitors has nothing to share and ignores ``store``."""
        if self.drift is None and self.extraction is None and self.query is None:
            store = None
        with self._lock:
            self.shared = store
        if store is not None:
            self.sync()

    def _apply(self, obs: Observation) -> list[ClientSignal | None]:
        if obs.kind == "reset":
            self._reset_local(obs.client_id)
            return []
        preds = torch.from_numpy(obs.predictions)
        k = int(preds.max()) + 1 if preds.numel() else 1
        # the monitors read only the predicted classes of the logits: one-hot ones give them
        logits = torch.nn.functional.one_hot(preds, k).float()
        outputs = TapOutputs(logits=logits, features=torch.from_numpy(obs.features))
        fired = obs.anomalous.tolist()
        return self._observe(obs.client_id, torch.from_numpy(obs.scaled), outputs, fired, obs.now)

    def sync(self) -> None:
        """Apply the other replicas' observations not applied yet (no-op when unshared)."""
        if self.shared is None:
            return
        # the serving path runs under inference mode, so the monitors' buffers are
        # inference tensors: updating them (from a status call) must be too
        with self._lock, torch.inference_mode():
            for entry in self.shared.catch_up():
                self._apply(entry)

    def inspect(self, x: torch.Tensor, client_id: str) -> list[GuardVerdict]:
        """One verdict per sample of the batch ``x`` sent by ``client_id``."""
        return self.predict_and_inspect(x, client_id)[1]

    def drift_status(self) -> DriftStatus:
        """p-value and alert of the sliding-window drift test (alert False when disabled)."""
        if self.drift is None:
            return DriftStatus(
                p_value=1.0,
                alert=False,
                window_size=0,
                window_capacity=0,
                alpha=self.config.drift.alpha,
                method="disabled",
            )
        self.sync()
        return self.drift.status()

    def client_status(self, client_id: str) -> ExtractionStatus | None:
        """The extraction monitor's current view of one client (None when disabled)."""
        self.sync()
        return None if self.extraction is None else self.extraction.status(client_id)

    def query_status(self, client_id: str) -> QueryStatus | None:
        """The similarity and coverage detectors' view of one client (None when both off)."""
        self.sync()
        return None if self.query is None else self.query.status(client_id)

    def reset_client(self, client_id: str) -> None:
        """Forget a client's extraction and query-detector state (e.g. after a reviewer
        cleared it), on every replica when the state is shared."""
        if self.shared is None:
            self._reset_local(client_id)
            return
        with self._lock:
            for entry, _mine in self.shared.exchange(Observation.reset(client_id)):
                self._apply(entry)

    def _reset_local(self, client_id: str) -> None:
        if self.extraction is not None:
            self.extraction.reset(client_id)
        if self.query is not None:
            self.query.reset(client_id)

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
            "format": FORMAT_VERSION,
            "config": self.config.model_dump(mode="json"),
            "meta": self.meta,
            "detectors": detectors,
        }
        if self.drift is not None:
            scalars, ts = self.drift.state()
            doc["drift"] = scalars
            tensors.update({f"drift.{k}": v for k, v in ts.items()})
        if self.extraction is not None:
            doc["extraction"] = self.extraction.state()
        if self.query is not None:
            doc["query"], ts = self.query.state()
            tensors.update({f"query.{k}": v for k, v in ts.items()})
        tmp_t = model_dir / (GUARD_TENSORS + ".tmp")
        save_file(tensors, str(tmp_t))
        tmp_t.replace(model_dir / GUARD_TENSORS)
        tmp_j = model_dir / (GUARD_JSON + ".tmp")
        tmp_j.write_text(json.dumps(doc, indent=2))
        tmp_j.replace(model_dir / GUARD_JSON)
        return model_dir / GUARD_JSON

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        model: nn.Module | LoadedModel,
        *,
        check_model: bool = True,
        fix: str | None = None,
    ) -> Guard:
        """Read the guard saved in ``model_dir`` for ``model`` (an ``nn.Module`` or a
        :class:`LoadedModel`). Raises :class:`GuardNotFittedError` when there is none, or
        when it was fitted for other weights (``check_model``). ``fix`` is the command the
        errors suggest (default ``bastion guard fit --model <model_dir>``)."""
        model_dir = Path(model_dir)
        path = model_dir / GUARD_JSON
        fix = fix or f"run `bastion guard fit --model {model_dir}`"
        if not path.is_file() or not (model_dir / GUARD_TENSORS).is_file():
            raise GuardNotFittedError(f"no guard fitted for {model_dir}: {fix}")
        try:
            doc = json.loads(path.read_text())
            require_clean(model_dir / GUARD_TENSORS)
            tensors = load_file(str(model_dir / GUARD_TENSORS))
        except (ValueError, OSError) as exc:
            raise GuardNotFittedError(f"{path}: unreadable guard ({exc}): {fix}") from None
        if doc.get("format") not in READABLE_FORMATS:
            raise GuardNotFittedError(
                f"{path}: guard format {doc.get('format')!r} is not {FORMAT_VERSION}: {fix}"
            )
        meta = doc.get("meta", {})
        loaded = model if isinstance(model, LoadedModel) else None
        module = loaded.module if loaded is not None else model
        if check_model:
            _check_identity(meta, loaded, module, path, fix)
        config = GuardConfig.model_validate(doc["config"])
        spec_doc = meta.get("input_spec")
        spec = InputSpec.model_validate(spec_doc) if spec_doc else _legacy_spec(meta)
        tap = _tap_for(meta, loaded, module, spec, path, fix)
        detectors: dict[str, Detector] = {}
        for name, entry in doc["detectors"].items():
            if name not in DETECTORS:
                raise GuardNotFittedError(f"{path}: unknown detector {name!r}: {fix}")
            det = DETECTORS[name](**_params(entry["params"]))
            prefix = f"detector.{name}."
            det.load_state(
                entry["state"],
                {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)},
            )
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
        query = None
        if "query" in doc:
            query = QueryMonitors.from_state(
                doc["query"], {k[6:]: v for k, v in tensors.items() if k.startswith("query.")}
            )
        return cls(
            tap, detectors, config, drift=drift, extraction=extraction, query=query, meta=meta
        )


def _parts(groups: Sequence[tuple[str, int]]) -> list[slice]:
    """The rows of each group in the concatenated batch."""
    out, start = [], 0
    for _, n in groups:
        out.append(slice(start, start + n))
        start += n
    return out


def _params(params: dict[str, Any]) -> dict[str, Any]:
    """Detector parameters as saved, with a format-1 scalar ``bounds`` pair as
    ``lower``/``upper``."""
    out = dict(params)
    if "bounds" in out:
        lo, hi = out.pop("bounds")
        out["lower"], out["upper"] = [float(lo)], [float(hi)]
    return out


def _check_identity(
    meta: dict[str, Any], loaded: LoadedModel | None, module: Any, path: Path, fix: str
) -> None:
    """Refuse a guard fitted for other weights: the state hash when both have a module,
    else the model's own hash (the artifacts' for a model file)."""
    from bastion.models.io import state_sha256

    state = state_sha256(module) if isinstance(module, nn.Module) else None
    if meta.get("state_sha256") and state is not None:
        ok = meta["state_sha256"] == state
    elif meta.get("model_sha256"):
        ok = meta["model_sha256"] in {state, loaded.sha256 if loaded is not None else None}
    else:
        return
    if not ok:
        raise GuardNotFittedError(f"{path} was fitted for other model weights: {fix} again")


def _tap_for(
    meta: dict[str, Any],
    loaded: LoadedModel | None,
    module: Any,
    spec: InputSpec | None,
    path: Path,
    fix: str,
) -> Tap:
    kind = meta.get("tap", "model")
    scale = InputScale.from_spec(spec)
    if kind == "model":
        if not isinstance(module, nn.Module):
            raise GuardNotFittedError(
                f"{path} was fitted on a torch model's hidden layers; this model has none: {fix}"
            )
        return ModelTap(module)
    why = meta.get("tap_reason", "")
    num_classes = loaded.capabilities.num_classes if loaded is not None else None
    if loaded is not None:
        return ScoresTap(loaded.scores, scale, num_classes=num_classes, why=why)
    if isinstance(module, nn.Module):
        return make_tap(None, _module_scores(module), spec, name=type(module).__name__)
    raise GuardNotFittedError(f"{path}: no model to read: {fix}")


def _module_scores(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(module.eval()(x).float(), 1)

    return fn


def _split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_cal = max(1, int(round(fraction * n)))
    return perm[n_cal:], perm[:n_cal]


def _batched(fn, x: torch.Tensor, size: int = 512) -> list:
    return [fn(x[i : i + size]) for i in range(0, len(x), size)]


def fit_guard(
    model: nn.Module | LoadedModel,
    train: Dataset,
    *,
    target_fpr: float | None = None,
    config: GuardConfig | None = None,
    calibration: Dataset | None = None,
    calibration_record: CalibrationRecord | None = None,
    model_sha256: str | None = None,
) -> Guard:
    """Fit and calibrate a guard for ``model`` (an ``nn.Module`` or a :class:`LoadedModel`
    of any form) on clean data.

    Detectors are fitted on ``train``; their thresholds, the drift reference and the query
    monitors are calibrated on ``calibration``, which must be rows the model never trained
    on (choose them with :func:`~bastion.guard.calibration.choose_calibration`; pass its
    ``record``), so that a share ``target_fpr`` (default ``config.target_fpr``) of fresh
    clean inputs is flagged. Without ``calibration`` a share ``config.calibration_fraction``
    of ``train`` is held out instead, and ``meta["calibration"]`` says that its
    disjointness from the model's training rows is unknown.
    Which detectors are built follows the data's modality and what the model exposes
    (:func:`~bastion.guard.detectors.build_detectors`); the reasons for those left out are
    kept in ``meta["detectors_not_built"]``."""
    config = config or GuardConfig()
    if target_fpr is not None:
        config = config.model_copy(update={"target_fpr": target_fpr})
    loaded = model if isinstance(model, LoadedModel) else None
    module = loaded.module if loaded is not None else model
    if module is not None:
        module.eval()
    spec = train.input_spec
    if calibration is None:
        fit_idx, cal_idx = _split(len(train), config.calibration_fraction, config.seed)
        x_fit, y_fit, x_cal = train.x[fit_idx], train.y[fit_idx], train.x[cal_idx]
        calibration_record = calibration_record or CalibrationRecord.of(
            train.subset(cal_idx),
            source="fit-holdout",
            description=f"{len(cal_idx)} rows held out of the fit data ({train.name})",
            how_known="fit_guard was given no calibration set: whether the model trained on "
            "these rows is unknown",
        )
    else:
        x_fit, y_fit, x_cal = train.x, train.y, calibration.x
        calibration_record = calibration_record or CalibrationRecord.of(
            calibration,
            source="given",
            description=f"{len(calibration)} rows of {calibration.name} ({calibration.split})",
            how_known="given to fit_guard: whether the model trained on them is not recorded",
        )
    name = f"{loaded.name} ({loaded.form})" if loaded is not None else type(module).__name__
    tap = make_tap(
        module,
        loaded.scores if loaded is not None else None,
        spec,
        probe=x_fit[:2],
        name=name,
        num_classes=loaded.capabilities.num_classes if loaded is not None else None,
    )
    detectors, not_built = build_detectors(config, tap, spec=spec)
    for reason_name, reason in not_built.items():
        log.info("detector %s not built: %s", reason_name, reason)
    for det_name, det in detectors.items():
        start = time.perf_counter()
        det.fit(x_fit, y_fit).calibrate(x_cal, config.target_fpr)
        log.info(
            "fitted %s in %.2f s (threshold %.4g)",
            det_name,
            time.perf_counter() - start,
            det.threshold(),
        )
    with torch.no_grad():  # the drift reference: held-out rows, like the traffic
        outs = _batched(tap, x_cal)
    feats = torch.cat([o.features for o in outs])
    drift = None
    if config.drift.enabled:
        drift = DriftMonitor(config.drift).fit(feats)
    extraction = None
    if config.extraction.enabled:
        # PRADA's δ from simulated benign clients of the held-out calibration rows only
        with torch.no_grad():
            preds = torch.cat([o.predictions for o in _batched(tap, x_cal)])
        scale = InputScale.from_spec(spec)
        extraction = ExtractionMonitor(config.extraction).fit(
            scale(x_cal), predictions=preds, seed=config.seed
        )
    query = None
    if config.query.similarity.enabled or config.query.coverage.enabled:
        # held-out benign inputs only: the calibration part, never the rows fitted on
        with torch.no_grad():
            cal_outs = _batched(tap, x_cal)
        cal = TapOutputs(
            torch.cat([o.logits for o in cal_outs]), torch.cat([o.features for o in cal_outs])
        )
        query = fit_query_monitors(
            config.query,
            InputScale.from_spec(spec)(x_cal),
            cal,
            num_classes=train.num_classes,
            seed=config.seed,
        )
    from bastion.models.io import state_sha256

    state = state_sha256(module) if isinstance(module, nn.Module) else None
    if model_sha256 is None:
        model_sha256 = loaded.sha256 if loaded is not None else state
    lo, hi = spec.lower_tensor(), spec.upper_tensor()
    meta: dict[str, Any] = {
        "model_sha256": model_sha256,
        "state_sha256": state,
        "model_form": loaded.form if loaded is not None else "module",
        "data": train.name,
        "n_fit": len(x_fit),
        "n_calibration": len(x_cal),
        "calibration": calibration_record.model_dump(mode="json"),
        "input_shape": list(train.shape),
        "modality": spec.modality,
        "bounds": list(spec.scalar_bounds() or (float(lo.min()), float(hi.max()))),
        "input_spec": spec.model_dump(mode="json"),
        "tap": tap.kind,
        "tap_reason": getattr(tap, "why", ""),
        "drift_features": "penultimate" if tap.internals else "input (range-scaled)",
        "detectors_not_built": not_built,
        "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return Guard(tap, detectors, config, drift=drift, extraction=extraction, query=query, meta=meta)
