"""The model and its guard as the gateway runs them: loaded once (in the app's lifespan),
then one call per request gives the probabilities and a verdict per sample.

Any model form `bastion assess` reads is served (a model directory, an entry point with its
weights, TorchScript, ONNX converted or through onnxruntime, skops, XGBoost, LightGBM): the
runtime asks the :class:`~bastion.models.loaded.LoadedModel` for its scores and never
assumes a torch module. The guard is reached through the :class:`InputGuard` protocol
(what :class:`bastion.guard.Guard` offers); for a model without readable internals the
guard reads the model's scores and runs input-space detectors only.

Requests are validated against the model's input spec (shape, per-feature bounds, integer
features). It comes, in this order, from the model's provenance (the training manifest),
the fitted guard's meta, the ``--data`` the server is pointed at, or the dataset the
provenance names; with none of them the server refuses to start rather than guess bounds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from bastion.data.spec import InputSpec, image_spec
from bastion.errors import BastionError, ConfigError, ModelError
from bastion.guard.guard import GUARD_JSON, GUARD_TENSORS, Guard, default_guard_dir
from bastion.guard.verdict import VERDICT_ORDER, DriftStatus, GuardVerdict
from bastion.models.io import LoadedModel, load_model
from bastion.serve.settings import ServeSettings

log = logging.getLogger(__name__)


class InputGuard(Protocol):
    """What the gateway needs of a guard (:class:`bastion.guard.Guard` is one): the model's
    logits and one verdict per sample from one pass, and the drift test's status."""

    def predict_and_inspect(
        self, x: torch.Tensor, client_id: str
    ) -> tuple[torch.Tensor, Sequence[GuardVerdict]]: ...

    def drift_status(self) -> DriftStatus: ...

    def reset_client(self, client_id: str) -> None:
        """Forget a client's per-client state (after an admin lifts its block)."""
        ...


@dataclass(frozen=True)
class Inference:
    """What the model and guard said about one batch."""

    probabilities: torch.Tensor  # (N, K)
    predictions: list[int]
    verdicts: list[GuardVerdict]  # per sample: verdict, scores, reasons
    verdict: str  # the most severe of the per-sample verdicts

    @property
    def scores(self) -> list[dict[str, float]]:
        return [dict(v.scores) for v in self.verdicts]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_guard(
    guard_dir: Path | None,
    loaded: LoadedModel,
    *,
    required: bool,
    fix: str | None = None,
    explicit: bool = False,
    allow_unguarded: bool = False,
) -> Guard | None:
    """The fitted guard in ``guard_dir`` for ``loaded``, or None.

    The guard fails closed: one that is there but cannot be used (corrupt, truncated or
    empty ``guard.json``, a missing or unreadable weights file, fitted for other weights)
    raises a one-line ConfigError, and so does a ``guard_dir`` the operator named
    (``explicit``) that holds no guard; ``allow_unguarded`` turns both into a warning and
    serving without it. No guard at all beside the model is a warning, or an error when
    ``required``."""
    fix = fix or f"run `bastion guard fit --model {guard_dir}`"
    if guard_dir is None:
        msg = f"{loaded.name}: no model file to look for a guard beside: set guard.dir"
        if required:
            raise ConfigError(f"guard.required is set: {msg}")
        log.warning("serving WITHOUT a guard: %s", msg)
        return None
    files = [guard_dir / GUARD_JSON, guard_dir / GUARD_TENSORS]
    if not any(f.exists() for f in files):
        msg = f"no guard fitted in {guard_dir}: {fix}"
        if required:
            raise ConfigError(f"guard.required is set: {msg}")
        if explicit and not allow_unguarded:
            raise ConfigError(
                f"{msg} (guard.dir names it), or pass --allow-unguarded to serve without a guard"
            )
        log.warning("serving WITHOUT a guard: %s", msg)
        return None
    try:
        return Guard.load(guard_dir, loaded, fix=fix)
    except Exception as exc:  # a guard is there but unusable: never serve unguarded by accident
        problem = _one_line(exc)
        if allow_unguarded and not required:
            log.warning("serving WITHOUT a guard (--allow-unguarded): %s", problem)
            return None
        raise ConfigError(
            f"the guard in {guard_dir} cannot be used ({type(exc).__name__}: {problem}); the "
            f"gateway does not serve unguarded by accident: {fix}, or pass --allow-unguarded "
            "(guard.allow_unguarded) to serve without it"
        ) from None


def _spec_from_shape(shape: tuple[int, ...], bounds: tuple[float, float]) -> InputSpec:
    if len(shape) == 3:
        return image_spec(shape, bounds=bounds, source="given")
    return InputSpec(
        modality="tabular",
        shape=list(shape),
        source_layout="flat",
        lower=[float(bounds[0])],
        upper=[float(bounds[1])],
        bounds_source="given",
    )


class Runtime:
    """The loaded model (eval mode, no gradients) plus an optional guard, and the input
    spec requests are checked against (``spec_source`` says where it came from).

    Give ``input_spec``, or ``sample_shape`` and one ``bounds`` pair for every feature."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        input_spec: InputSpec | None = None,
        guard: InputGuard | None = None,
        sample_shape: tuple[int, ...] | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        spec_source: str = "given",
    ) -> None:
        if input_spec is None:
            if sample_shape is None:
                raise ConfigError("a runtime needs the input spec (or the sample shape)")
            input_spec = _spec_from_shape(tuple(sample_shape), bounds)
        self.loaded = loaded
        self.module = loaded.module.eval() if loaded.module is not None else None
        self.input_spec = input_spec
        self.spec_source = spec_source
        self.guard = guard

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.input_spec.shape)

    @classmethod
    def from_settings(cls, settings: ServeSettings) -> Runtime:
        """Load the model of any form, its guard, and the input spec; check that the model
        answers on the spec's inputs (a ConfigError naming the fix otherwise)."""
        if settings.model_dir is None and settings.entry_point is None:
            raise ConfigError(
                "no model to serve: pass --model DIR (a model directory) or --model FILE (any "
                "form `bastion assess` reads, with --entry-point for a state dict), or "
                "model_dir in serve.yaml"
            )
        try:
            loaded = load_model(
                settings.model_dir,
                entry_point=settings.entry_point,
                weights=settings.weights,
                onnx_mode=settings.onnx_mode,
                trusted=settings.trust or None,
            )
        except BastionError:
            raise
        except Exception as exc:
            if settings.entry_point is None:
                raise
            # the entry point is the user's code: its failure is the user's to fix
            raise ModelError(
                f"entry point {settings.entry_point} failed to build the model "
                f"({type(exc).__name__}: {_one_line(exc)})"
            ) from None
        guard = None
        if settings.guard.enabled:
            guard_dir = settings.guard.dir or default_guard_dir(loaded)
            guard = load_guard(
                guard_dir,
                loaded,
                required=settings.guard.required,
                fix=_fit_command(settings),
                explicit=settings.guard.dir is not None,
                allow_unguarded=settings.guard.allow_unguarded,
            )
        spec, source = resolve_input_spec(loaded, guard, settings)
        _check_guard_spec(guard, spec, source)
        runtime = cls(loaded, input_spec=spec, guard=guard, spec_source=source)
        runtime.check_model()
        log.info("inputs: %s, from %s", spec.describe(), source)
        return runtime

    def check_model(self) -> None:
        """One pass on the middle of the box: the model takes the spec's inputs."""
        want = self.loaded.capabilities.input_shape
        spec = self.input_spec
        if want is not None and [int(v) for v in want] != list(spec.shape):
            raise ConfigError(
                f"model {self.loaded.name} takes inputs of shape {tuple(want)} but the input "
                f"spec (from {self.spec_source}) says {tuple(spec.shape)}: pass --data with the "
                "data the model was trained on"
            )
        mid = ((spec.lower_tensor() + spec.upper_tensor()) / 2).expand(spec.shape)
        try:
            out = self._probabilities(mid.unsqueeze(0).contiguous())
        except (RuntimeError, ValueError, TypeError, IndexError, BastionError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(
                f"model {self.loaded.name} cannot run on inputs of the input spec "
                f"({spec.describe()}, from {self.spec_source}): {first}"
            ) from None
        if out.shape[0] != 1:
            raise ConfigError(f"model {self.loaded.name} answered {out.shape[0]} rows for 1")

    @property
    def model_sha256(self) -> str:
        """The loaded model's hash: the same one the assessment report records."""
        return self.loaded.sha256

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        out = self.loaded.scores(x)
        if out.ndim == 1:  # a labels-only model: its answer as one-hot probabilities
            k = self.loaded.capabilities.num_classes or int(out.max()) + 1
            out = torch.nn.functional.one_hot(out.long(), k)
        return out.float()

    def infer(self, x: torch.Tensor, client_id: str) -> Inference:
        """Probabilities, predictions and verdicts for one validated batch (blocking)."""
        result = self.infer_many([(x, client_id)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def infer_many(self, requests: list[tuple[torch.Tensor, str]]) -> list[Inference | Exception]:
        """Several requests in as few passes as possible (blocking): the model runs once over
        all of them; the guard once per client (its extraction state is per client), in
        arrival order. A failing guard call fails only its own client's requests."""
        sizes = [int(x.shape[0]) for x, _ in requests]
        out: list[Inference | Exception | None] = [None] * len(requests)
        with torch.inference_mode():
            guard = self.guard
            if guard is None:
                probs = self._probabilities(torch.cat([x for x, _ in requests]))
                for i, part in enumerate(probs.split(sizes)):
                    allow = [GuardVerdict(verdict="allow") for _ in range(sizes[i])]
                    out[i] = _inference(part, allow)
                return out  # type: ignore[return-value]
            groups: dict[str, list[int]] = {}
            for i, (_, client) in enumerate(requests):
                groups.setdefault(client, []).append(i)
            if hasattr(guard, "predict_and_inspect_groups"):
                return self._infer_groups(guard, requests, groups, sizes)
            for client, idx in groups.items():
                try:
                    x = torch.cat([requests[i][0] for i in idx])
                    logits, verdicts = guard.predict_and_inspect(x, client)
                    probs = torch.softmax(logits.float(), dim=1)
                    vds = list(verdicts)
                except Exception as exc:  # reported to these requests only
                    for i in idx:
                        out[i] = exc
                    continue
                start = 0
                for i, part in zip(idx, probs.split([sizes[i] for i in idx]), strict=True):
                    out[i] = _inference(part, vds[start : start + sizes[i]])
                    start += sizes[i]
        return out  # type: ignore[return-value]

    def _infer_groups(
        self,
        guard: Any,
        requests: list[tuple[torch.Tensor, str]],
        groups: dict[str, list[int]],
        sizes: list[int],
    ) -> list[Inference | Exception]:
        """Every request in ONE model and detector pass whatever the number of clients
        (the guard then updates each client's state in turn, in arrival order)."""
        order = [i for idx in groups.values() for i in idx]
        out: list[Inference | Exception | None] = [None] * len(requests)
        try:
            x = torch.cat([requests[i][0] for i in order])
            logits, results = guard.predict_and_inspect_groups(
                x, [(client, sum(sizes[i] for i in idx)) for client, idx in groups.items()]
            )
            probs = torch.softmax(logits.float(), dim=1).split([sizes[i] for i in order])
        except Exception as exc:  # the pass itself failed: every request learns of it
            return [exc] * len(requests)
        k = 0
        for idx, result in zip(groups.values(), results, strict=True):
            start = 0
            for i in idx:
                if isinstance(result, Exception):
                    out[i] = result
                else:
                    out[i] = _inference(probs[k], result[start : start + sizes[i]])
                start += sizes[i]
                k += 1
        return out  # type: ignore[return-value]

    def drift_status(self) -> DriftStatus | None:
        """The guard's drift test (None without a guard; ``method`` "disabled" when the
        guard runs no drift test)."""
        return None if self.guard is None else self.guard.drift_status()


def _inference(probs: torch.Tensor, verdicts: list[GuardVerdict]) -> Inference:
    worst = max((v.verdict for v in verdicts), key=VERDICT_ORDER.__getitem__, default="allow")
    return Inference(probs, probs.argmax(1).tolist(), verdicts, worst)


def _fit_command(settings: ServeSettings) -> str:
    parts = ["bastion guard fit"]
    if settings.model_dir is not None:
        parts.append(f"--model {settings.model_dir}")
    if settings.entry_point:
        parts.append(f"--entry-point {settings.entry_point}")
    if settings.weights is not None:
        parts.append(f"--weights {settings.weights}")
    if settings.onnx_mode != "auto":
        parts.append(f"--onnx-mode {settings.onnx_mode}")
    return f"run `{' '.join(parts)}`"


def _check_guard_spec(guard: Guard | None, spec: InputSpec, source: str) -> None:
    guard_spec = guard.input_spec if guard is not None else None
    if guard_spec is not None and list(guard_spec.shape) != list(spec.shape):
        raise ConfigError(
            f"the guard was fitted on inputs of shape {tuple(guard_spec.shape)} but the input "
            f"spec (from {source}) says {tuple(spec.shape)}: refit the guard on the model's "
            "training data"
        )


def resolve_input_spec(
    loaded: LoadedModel, guard: Guard | None, settings: ServeSettings
) -> tuple[InputSpec, str]:
    """The spec requests are validated against, and where it came from: the training
    manifest in the model's provenance, the guard's meta, ``settings.data``, or the dataset
    the provenance names. Raises a ConfigError saying which flag to pass when none has one:
    bounds are never guessed."""
    from bastion.data import load_dataset

    prov = loaded.provenance or {}
    manifest = prov.get("train_manifest") or {}
    chosen: tuple[InputSpec, str] | None = None
    if manifest.get("input_spec"):
        spec = InputSpec.model_validate(manifest["input_spec"])
        chosen = spec, "the model's provenance (training manifest)"
    elif manifest.get("bounds") and manifest.get("shape"):  # manifests before the input spec
        lo, hi = manifest["bounds"]
        shape = tuple(int(s) for s in manifest["shape"])
        chosen = _spec_from_shape(shape, (float(lo), float(hi))), "the model's provenance"
    elif guard is not None and guard.input_spec is not None:
        chosen = guard.input_spec, "the fitted guard's meta (guard.json)"
    if chosen is not None:
        if settings.data is not None:
            log.warning(
                "input spec taken from %s: --data %s is not used", chosen[1], settings.data.path
            )
        return chosen
    name = settings.data.path if settings.data is not None else prov.get("data")
    if name:
        data = settings.data
        try:
            bundle = load_dataset(
                name,
                root=data.root if data is not None else prov.get("data_root"),
                seed=data.seed if data is not None else 0,
                options=data.options if data is not None else None,
            )
        except BastionError as exc:
            raise ConfigError(
                f"cannot read the training data {name!r} for the input spec ({exc}): pass "
                "--data TRAIN_FILE"
            ) from None
        where = f"--data {name}" if data is not None else f"the training data {name!r} (provenance)"
        return bundle.train.input_spec, where
    raise ConfigError(
        f"{loaded.path or loaded.name}: no input spec to validate requests against (the model "
        "has no training provenance and no fitted guard): pass --data TRAIN.csv (with the "
        "data flags it is read with, e.g. --label-column, --integer, --lower/--upper or "
        "--bounds), or fit a guard first with `bastion guard fit`; bounds are never guessed"
    )
