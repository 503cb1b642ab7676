"""Read a model's logits, penultimate-layer features and hidden-layer outputs in one forward
pass, thread-safely.

For zoo models (an ``nn.Sequential`` ending in ``nn.Linear``) the network is run layer by
layer; for any other model forward hooks capture the input of the last ``nn.Linear`` (the
penultimate features) and the outputs of the hidden ``Conv2d``/``Linear`` layers, stored per
thread so the gateway may call it from several threads at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
from torch import nn

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


class ModelTap:
    """Wraps an ``nn.Module`` (used in eval mode) to return logits, penultimate features and
    hidden-layer outputs. ``hidden_names`` lists the layers reported in ``hidden``."""

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
