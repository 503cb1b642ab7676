"""Read a model's logits, penultimate-layer features and hidden-layer outputs in one forward
pass, thread-safely.

For zoo models (an ``nn.Sequential`` ending in ``nn.Linear``) the network is run layer by
layer; for any other model forward hooks capture the input of the last ``nn.Linear`` (the
penultimate features) and the outputs of the hidden ``Conv2d``/``Linear`` layers, stored per
thread so the gateway may call it from several threads at once.

A model without such internals (a scikit-learn / XGBoost / ONNX-runtime model answering
through a predict function, or a module with no ``nn.Linear``) is read by a
:class:`ScoresTap`: its logits are the log of its probabilities and its "features" are the
input itself, scaled to the input spec's per-feature range (:class:`InputScale`), so the
drift test and the extraction monitor run in input space. :func:`make_tap` picks the tap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from bastion.data.spec import InputSpec
from bastion.errors import ModelError

HIDDEN_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class TapOutputs:
    """The model's view of a batch: ``logits`` (N, K), ``features`` (N, D) — the input of the
    last linear layer — and ``hidden``: the outputs of the hidden conv/linear layers by name."""

    logits: torch.Tensor
    features: torch.Tensor
    hidden: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(1)

    def part(self, rows: slice) -> TapOutputs:
        """The view of the samples ``rows`` of the batch (no copy)."""
        return TapOutputs(
            self.logits[rows], self.features[rows], {k: v[rows] for k, v in self.hidden.items()}
        )


class Tap(Protocol):
    """What the guard reads a model through. ``internals`` is True when ``features`` and
    ``hidden`` come from inside the model (:class:`ModelTap`), False when ``features`` is
    the scaled input (:class:`ScoresTap`); ``kind`` names it in the guard's meta."""

    internals: bool
    kind: str

    def __call__(self, x: torch.Tensor) -> TapOutputs: ...

    def logits(self, x: torch.Tensor) -> torch.Tensor: ...


class ModelTap:
    """Wraps an ``nn.Module`` (used in eval mode) to return logits, penultimate features and
    hidden-layer outputs. ``hidden_names`` lists the layers reported in ``hidden``."""

    internals = True
    kind = "model"

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._local = threading.local()
        self._sequential = isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Linear)
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ModelError(
                f"{type(model).__name__} has no nn.Linear layer: feature-space detectors "
                "need one (disable mahalanobis and drift in the guard config)"
            )
        last = linears[-1][1]
        self.hidden_names = [
            n for n, m in model.named_modules() if isinstance(m, HIDDEN_TYPES) and m is not last
        ]
        if any("." in n for n in self.hidden_names):
            self._sequential = False  # nested blocks: read them through hooks
        if not self._sequential:
            last.register_forward_pre_hook(self._pre_hook)
            wanted = set(self.hidden_names)
            for name, module in model.named_modules():
                if name in wanted:
                    module.register_forward_hook(self._make_hook(name))

    def _pre_hook(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self._local.features = inputs[0]

    def _make_hook(self, name: str):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            store = getattr(self._local, "hidden", None)
            if store is not None:
                store[name] = output

        return hook

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> TapOutputs:
        if self.model.training:
            self.model.eval()
        if self._sequential:
            hidden: dict[str, torch.Tensor] = {}
            h = x
            wanted = set(self.hidden_names)
            modules = list(self.model.named_children())
            for name, module in modules[:-1]:
                h = module(h)
                if name in wanted:
                    hidden[name] = h
            features = h.flatten(1)
            return TapOutputs(modules[-1][1](features), features, hidden)
        self._local.features = None
        self._local.hidden = {}
        logits = self.model(x)
        features, hidden = self._local.features, self._local.hidden
        self._local.hidden = None
        if features is None:
            raise ModelError("the last nn.Linear was not called in forward: cannot read features")
        return TapOutputs(logits, features.flatten(1), hidden)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.model.training:
            self.model.eval()
        return self.model(x)


@dataclass(frozen=True)
class InputScale:
    """``z = (x − lo) / (hi − lo)`` per feature, flattened to (N, D): inputs in the units of
    the input spec's ranges, so that no feature weighs more because of its unit. Features of
    zero range keep a width of 1. ``identity`` when the bounds are [0, 1] for every feature."""

    lo: torch.Tensor
    width: torch.Tensor

    @classmethod
    def from_spec(cls, spec: InputSpec | None) -> InputScale:
        if spec is None:
            return cls(torch.zeros(()), torch.ones(()))
        lo, hi = spec.lower_tensor().flatten(), spec.upper_tensor().flatten()
        width = hi - lo
        return cls(lo, torch.where(width > 0, width, torch.ones_like(width)))

    @property
    def identity(self) -> bool:
        return bool((self.lo == 0).all() and (self.width == 1).all())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1).float()
        if self.identity:
            return flat
        return (flat - self.lo.to(flat)) / self.width.to(flat)


class ScoresTap:
    """A model seen only through its answers: ``fn(x)`` returns probabilities (N, K) or
    labels (N,) (one-hot then). ``logits`` are log-probabilities (floored at 1e-12, so a
    softmax gives the probabilities back); ``features`` the input scaled by ``scale``;
    ``hidden`` is empty. ``why`` says why the model's internals are not read."""

    internals = False
    kind = "scores"

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        scale: InputScale,
        *,
        num_classes: int | None = None,
        why: str = "",
    ) -> None:
        self.fn = fn
        self.scale = scale
        self.num_classes = num_classes
        self.why = why

    def _log_probs(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.fn(x)
        if out.ndim == 1:  # a labels-only model
            k = self.num_classes or int(out.max()) + 1
            out = nn.functional.one_hot(out.long(), k).float()
        return out.float().clamp_min(1e-12).log()

    def __call__(self, x: torch.Tensor) -> TapOutputs:
        return TapOutputs(self._log_probs(x), self.scale(x), {})

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._log_probs(x)


def _softmax_of(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(x: torch.Tensor) -> torch.Tensor:
        if module.training:
            module.eval()
        with torch.no_grad():
            return torch.softmax(module(x).float(), 1)

    return fn


def make_tap(
    module: nn.Module | None,
    predict: Callable[[torch.Tensor], torch.Tensor] | None,
    spec: InputSpec | None,
    *,
    probe: torch.Tensor | None = None,
    name: str = "the model",
    num_classes: int | None = None,
) -> Tap:
    """A :class:`ModelTap` on ``module`` where its internals can be read (checked on
    ``probe``, a small batch), else a :class:`ScoresTap` on ``predict`` (or the module's
    softmax) that says why."""
    scale = InputScale.from_spec(spec)
    if module is not None:
        try:
            tap = ModelTap(module)
            if probe is not None:
                tap(probe)
            return tap
        except (ModelError, RuntimeError, TypeError) as exc:
            detail = (str(exc).splitlines() or [type(exc).__name__])[0].split(": ")[0]
            why = f"{name}: its hidden layers cannot be read ({detail})"
            return ScoresTap(_softmax_of(module), scale, num_classes=num_classes, why=why)
    if predict is None:
        raise ModelError(f"{name} has neither a torch module nor a predict function")
    why = f"{name} answers through a predict function (no torch module, no hidden layers)"
    return ScoresTap(predict, scale, num_classes=num_classes, why=why)
