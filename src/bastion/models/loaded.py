"""The one record every model form loads into, and what it declares it can do.

Whatever the user brought (a model directory, an entry point with weights, TorchScript, an
ONNX graph, a scikit-learn estimator in skops, an XGBoost / LightGBM booster, a remote
endpoint), the rest of Bastion sees a :class:`LoadedModel`: a differentiable ``module``
when gradients are available, otherwise a ``predict_fn`` answering probabilities (or labels),
plus :class:`Capabilities` saying which, and the :class:`Artifact` files it came from (their
hashes are what `bastion attest` records and what the report names).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel
from torch import nn

from bastion.errors import ModelError

ModelForm = Literal[
    "model-dir",
    "entry-point",
    "torchscript",
    "onnx-torch",
    "onnx-runtime",
    "skops",
    "xgboost",
    "lightgbm",
    "http",
    "module",
    "callable",
]
Output = Literal["scores", "labels"]


class Artifact(BaseModel):
    """One file a model was loaded from, with its role and SHA-256."""

    path: str
    sha256: str
    role: str  # weights | spec | onnx | torchscript | skops | xgboost | lightgbm | source


class Capabilities(BaseModel):
    """What a loaded model offers an assessment."""

    gradients: bool
    output: Output = "scores"
    num_classes: int | None = None
    input_shape: list[int] | None = None
    retrainable: bool = False  # a fresh copy can be trained (poisoning, LiRA shadows)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def artifact(path: str | Path, role: str) -> Artifact:
    """The file at ``path`` (recorded as an absolute path, so a report names it wherever it
    is read) with its role and SHA-256."""
    return Artifact(path=str(Path(path).resolve()), sha256=file_sha256(path), role=role)


def artifacts_sha256(artifacts: list[Artifact]) -> str:
    """One digest over the artifacts (role, file name, content hash), order-independent."""
    h = hashlib.sha256()
    for a in sorted(artifacts, key=lambda a: (a.role, Path(a.path).name, a.sha256)):
        h.update(f"{a.role}:{Path(a.path).name}:{a.sha256}\n".encode())
    return h.hexdigest()


@dataclass
class LoadedModel:
    """A ready model plus what identifies it and what it can do.

    Exactly one of ``module`` (a torch module returning logits, differentiable when
    ``capabilities.gradients``) and ``predict_fn`` (a function ``x -> probabilities (N, K)``
    or ``labels (N,)``, no gradients) answers queries. ``rebuild`` returns a fresh, untrained
    copy of the architecture where one can be made (entry points, zoo models); ``estimator``
    holds a scikit-learn-style estimator that can be cloned and refit."""

    name: str
    sha256: str
    form: ModelForm = "model-dir"
    module: nn.Module | None = None
    predict_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    capabilities: Capabilities = field(default_factory=lambda: Capabilities(gradients=True))
    artifacts: list[Artifact] = field(default_factory=list)
    spec: Any = None  # bastion.models.zoo.ModelSpec for zoo models
    path: Path | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    rebuild: Callable[[], nn.Module] | None = None
    estimator: Any = None
    entry_point: str | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.module is None and self.predict_fn is None:
            raise ModelError(f"{self.name}: a loaded model needs a module or a predict function")

    @property
    def differentiable(self) -> bool:
        return self.module is not None and self.capabilities.gradients

    def require_module(self, what: str) -> nn.Module:
        """The torch module, or a ModelError naming ``what`` needed it."""
        if self.module is None or not self.capabilities.gradients:
            raise ModelError(
                f"{what} needs a differentiable torch model; {self.name} is a {self.form} model "
                "without gradients"
            )
        return self.module

    @torch.no_grad()
    def scores(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Probabilities (N, K), or labels (N,) for a labels-only model, batched, no grad."""
        if self.module is not None:
            from bastion.models.predict import predict_logits

            return torch.softmax(predict_logits(self.module, x, batch_size=batch_size).float(), 1)
        fn = self.predict_fn
        parts = [fn(x[i : i + batch_size]).to(x.device) for i in range(0, x.shape[0], batch_size)]
        if not parts:
            return torch.empty(0, dtype=torch.long)
        return torch.cat(parts)

    def predict(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Predicted labels (N,), batched, no gradients."""
        out = self.scores(x, batch_size)
        return out.long() if out.ndim == 1 else out.argmax(1)
