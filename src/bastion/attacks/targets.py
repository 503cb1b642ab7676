"""Query targets: the only thing a black-box attack may call, and the counter on it.

A :class:`QueryTarget` is a callable ``target(x) -> Tensor`` over a batch ``x`` (N, C, H, W)
with three attributes: ``kind`` (``"scores"``: it answers probabilities of shape (N, K);
``"labels"``: it answers predicted labels of shape (N,)), ``num_classes`` and ``queries``
(how many samples it has been asked about, one query per sample).

Targets here: :class:`ModuleTarget` (a local ``nn.Module``), :class:`OnnxTarget` (an ONNX
file through onnxruntime, extra ``bastion-ml[onnx]``), :class:`CallableTarget` (any plain
function) and :class:`~bastion.attacks.http_target.HttpTarget` (a remote JSON endpoint, such
as Bastion's own gateway). :class:`QueryBudget` wraps any of them and raises
:class:`~bastion.errors.QueryBudgetExceeded` instead of going over a budget.

A *refused* query (a gateway that holds the request for human review) still counts; its
answer is a row of NaN (scores) or the label :data:`REFUSED` (labels). Attacks treat a refused
answer as "no information": never an improvement, never adversarial.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from bastion.attacks.evasion import eval_mode
from bastion.errors import AttackError, QueryBudgetExceeded, TargetError

log = logging.getLogger(__name__)
Kind = Literal["scores", "labels"]
KINDS = ("scores", "labels")
REFUSED = -1


@runtime_checkable
class QueryTarget(Protocol):
    """What a black-box attack sees of a model."""

    kind: Kind
    queries: int

    @property
    def num_classes(self) -> int: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def check_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise AttackError(f"unknown target kind {kind!r}: use 'scores' or 'labels'")
    return kind  # type: ignore[return-value]


def as_labels(answer: torch.Tensor) -> torch.Tensor:
    """Predicted labels from a target's answer; refused rows become :data:`REFUSED`."""
    if answer.ndim == 1:
        return answer.long()
    labels = answer.argmax(1)
    return torch.where(torch.isnan(answer).any(1), torch.full_like(labels, REFUSED), labels)


def refused(answer: torch.Tensor) -> torch.Tensor:
    """Boolean mask of refused rows in a target's answer."""
    if answer.ndim == 1:
        return answer.long() == REFUSED
    return torch.isnan(answer).any(1)


class BaseTarget(abc.ABC):
    """Counting, batching and answer checks shared by the concrete targets.

    Subclasses implement ``_answer(x)`` for one batch, returning probabilities (B, K), or
    labels (B,) for a backend that only has labels; refused rows are NaN / :data:`REFUSED`.
    """

    def __init__(self, *, kind: str, num_classes: int | None, batch_size: int) -> None:
        if batch_size < 1:
            raise AttackError(f"batch_size must be >= 1, got {batch_size}")
        if num_classes is not None and num_classes < 2:
            raise AttackError(f"num_classes must be >= 2, got {num_classes}")
        self.kind: Kind = check_kind(kind)
        self.batch_size = batch_size
        self.queries = 0
        self.refused = 0
        self._num_classes = num_classes

    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            self._num_classes = self._infer_num_classes()
        return self._num_classes

    def _infer_num_classes(self) -> int:
        raise TargetError(
            f"{type(self).__name__} cannot tell its number of classes: pass num_classes="
        )

    @abc.abstractmethod
    def _answer(self, x: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or not torch.is_floating_point(x):
            raise AttackError("a query must be a floating-point tensor batch of shape (N, ...)")
        x = x.detach()
        parts = []
        for i in range(0, x.shape[0], self.batch_size):
            batch = x[i : i + self.batch_size]
            self.queries += batch.shape[0]
            parts.append(self._convert(self._answer(batch), batch.shape[0]).to(x.device))
        if not parts:
            shape = (0,) if self.kind == "labels" else (0, self.num_classes)
            return torch.empty(shape, dtype=torch.long if self.kind == "labels" else x.dtype)
        return torch.cat(parts)

    def _convert(self, answer: torch.Tensor, n: int) -> torch.Tensor:
        name = type(self).__name__
        if answer.shape[0] != n:
            raise TargetError(f"{name}: asked about {n} inputs but got {answer.shape[0]} answers")
        if answer.ndim == 2:
            if self._num_classes is None:
                self._num_classes = int(answer.shape[1])
            elif answer.shape[1] != self._num_classes:
                raise TargetError(
                    f"{name}: answered {answer.shape[1]} class scores, expected {self._num_classes}"
                )
            self.refused += int(torch.isnan(answer).any(1).sum())
            return as_labels(answer) if self.kind == "labels" else answer.float()
        if self.kind == "scores":
            raise TargetError(f"{name}: the model answers labels only: use kind='labels'")
        self.refused += int((answer == REFUSED).sum())
        return answer.long()


def _last_linear_width(module: nn.Module) -> int | None:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


class ModuleTarget(BaseTarget):
    """A local ``nn.Module`` behind a query interface: softmax probabilities (``scores``) or
    argmax labels (``labels``), computed without gradients and in eval mode, ``batch_size``
    samples per forward pass (on CPU, batches past a few hundred images run slower per image).
    ``assume_eval=True`` is for callers that already hold the module in
    :func:`~bastion.attacks._ball.eval_mode` for the whole attack: the per-query switch
    (a walk over every submodule and parameter, a fifth of a small CNN's one-image query) is
    skipped."""

    def __init__(
        self,
        module: nn.Module,
        *,
        kind: str = "scores",
        num_classes: int | None = None,
        batch_size: int = 256,
        device: str | torch.device | None = None,
        assume_eval: bool = False,
    ) -> None:
        super().__init__(kind=kind, num_classes=num_classes, batch_size=batch_size)
        self.module = module
        self.device = torch.device(device) if device is not None else None
        self.assume_eval = assume_eval

    def _infer_num_classes(self) -> int:
        width = _last_linear_width(self.module)
        if width is None:
            return super()._infer_num_classes()
        return width

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        if self.device is not None:
            x = x.to(self.device)
        if self.assume_eval:
            with torch.no_grad():
                return torch.softmax(self.module(x).float(), dim=1)
        with torch.no_grad(), eval_mode(self.module):
            return torch.softmax(self.module(x).float(), dim=1)


class CallableTarget(BaseTarget):
    """Any function ``fn(x) -> probabilities (N, K) or labels (N,)`` as a counted target."""

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        *,
        kind: str = "scores",
        num_classes: int | None = None,
        batch_size: int = 1024,
    ) -> None:
        super().__init__(kind=kind, num_classes=num_classes, batch_size=batch_size)
        self.fn = fn

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.fn(x)
        if not isinstance(out, torch.Tensor):
            raise TargetError(f"the query function returned {type(out).__name__}, not a tensor")
        return out


def _softmax_if_needed(out: torch.Tensor, output: str) -> torch.Tensor:
    if output == "probabilities":
        return out
    if output == "auto":
        rows = out.sum(1)
        if bool((out >= -1e-6).all() and ((rows - 1).abs() < 1e-3).all()):
            return out
    return torch.softmax(out, dim=1)


class OnnxTarget(BaseTarget):
    """An ONNX model run by onnxruntime (``pip install 'bastion-ml[onnx]'``).

    ``output`` says what the first graph output holds: ``"logits"`` (softmax applied),
    ``"probabilities"`` or ``"auto"`` (probabilities when every row is a distribution). An
    integer output of shape (N,) is taken as labels."""

    def __init__(
        self,
        path: str | Path,
        *,
        kind: str = "scores",
        num_classes: int | None = None,
        output: Literal["auto", "logits", "probabilities"] = "auto",
        batch_size: int = 256,
        providers: list[str] | None = None,
    ) -> None:
        super().__init__(kind=kind, num_classes=num_classes, batch_size=batch_size)
        if output not in ("auto", "logits", "probabilities"):
            raise AttackError(f"unknown output {output!r}: use 'auto', 'logits' or 'probabilities'")
        try:
            import onnxruntime as ort
        except ImportError:
            raise TargetError(
                "OnnxTarget needs onnxruntime: install the extra with pip install 'bastion-ml[onnx]'"
            ) from None
        path = Path(path)
        if not path.is_file():
            raise TargetError(f"ONNX model not found: {path}")
        try:
            self.session = ort.InferenceSession(
                str(path), providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own error types
            raise TargetError(f"{path}: onnxruntime cannot load it ({exc})") from None
        self.output = output
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        fixed = first.shape[0] if first.shape else None
        if isinstance(fixed, int) and fixed > 0:
            self.batch_size = min(self.batch_size, fixed)
            self._fixed_batch = fixed
        else:
            self._fixed_batch = None
        out_shape = self.session.get_outputs()[0].shape
        if self._num_classes is None and len(out_shape) == 2 and isinstance(out_shape[1], int):
            self._num_classes = out_shape[1]

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().float().numpy()
        n = arr.shape[0]
        if self._fixed_batch is not None and n < self._fixed_batch:
            pad = np.zeros((self._fixed_batch - n, *arr.shape[1:]), dtype=arr.dtype)
            arr = np.concatenate([arr, pad])
        try:
            raw = self.session.run(None, {self.input_name: arr})[0]
        except Exception as exc:  # onnxruntime raises its own error types
            raise TargetError(
                f"onnxruntime failed on a batch of shape {arr.shape}: {exc}"
            ) from None
        out = torch.from_numpy(raw)[:n]
        if out.ndim == 1 and not torch.is_floating_point(out):
            return out.long()
        if out.ndim != 2:
            raise TargetError(f"ONNX output has shape {tuple(out.shape)}: expected (N, classes)")
        out = out.float()
        if not torch.isfinite(out).all():
            raise TargetError("ONNX output contains NaN or Inf values")
        return _softmax_if_needed(out, self.output)


class QueryBudget:
    """Wrap a target so it never answers more than ``max_queries`` samples in total.

    A call that would go over the budget raises :class:`QueryBudgetExceeded` before any
    query is made; attacks catch it and stop with what they have."""

    def __init__(self, target: QueryTarget, max_queries: int) -> None:
        if max_queries < 0:
            raise AttackError(f"max_queries must be >= 0, got {max_queries}")
        self.target = target
        self.max_queries = int(max_queries)
        self.queries = 0

    @property
    def kind(self) -> Kind:
        return self.target.kind

    @property
    def num_classes(self) -> int:
        return self.target.num_classes

    @property
    def remaining(self) -> int:
        return self.max_queries - self.queries

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = int(x.shape[0])
        if self.queries + n > self.max_queries:
            raise QueryBudgetExceeded(
                f"query budget of {self.max_queries} reached ({self.queries} used, {n} more asked): "
                "raise the budget (threat_model.budgets) or attack fewer points"
            )
        self.queries += n
        return self.target(x)


def model_target(
    loaded: Any,
    *,
    kind: str = "scores",
    device: str | torch.device | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> QueryTarget:
    """A query target for a :class:`~bastion.models.loaded.LoadedModel` of any form: its torch
    module, or its predict function for gradient-free models. ``transform`` maps each query
    into the model's input space first (e.g. from a normalised attack space)."""
    num_classes = loaded.capabilities.num_classes
    if kind == "scores" and loaded.capabilities.output == "labels":
        raise TargetError(f"{loaded.name} answers labels only: use a labels target")
    if loaded.module is not None and transform is None:
        return ModuleTarget(loaded.module, kind=kind, num_classes=num_classes, device=device)
    base = loaded.scores
    fn = base if transform is None else (lambda x: base(transform(x)))
    return CallableTarget(fn, kind=kind, num_classes=num_classes)


def as_target(model: nn.Module | QueryTarget | Callable, *, kind: str = "scores") -> QueryTarget:
    """A query target for ``model``: targets pass through, modules and functions are wrapped."""
    if isinstance(model, nn.Module):
        return ModuleTarget(model, kind=kind)
    if isinstance(model, (BaseTarget, QueryBudget)) or hasattr(model, "kind"):
        return model  # type: ignore[return-value]
    if callable(model):
        return CallableTarget(model, kind=kind)
    raise AttackError(f"cannot query a {type(model).__name__}: pass an nn.Module or a QueryTarget")


@dataclass(frozen=True)
class BlackBoxResult:
    """What a black-box attack returns, per point: the adversarial inputs, whether each one
    fools the target (by the target's own answer), and the queries spent on it.
    ``exhausted`` is True when a :class:`QueryBudget` stopped the attack early."""

    x_adv: torch.Tensor
    success: torch.Tensor
    queries: torch.Tensor
    exhausted: bool = False

    def distance(self, x: torch.Tensor, norm: str = "2") -> torch.Tensor:
        """Per-point ‖x_adv − x‖ in the given norm (``"2"`` or ``"inf"``)."""
        diff = (self.x_adv - x).flatten(1)
        return diff.abs().amax(1) if str(norm).lstrip("lL") == "inf" else diff.norm(dim=1)


def is_adversarial(answer: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """Whether each answer is adversarial for label ``y`` (the target class when ``targeted``);
    a refused answer never is."""
    labels = as_labels(answer)
    hit = labels == y if targeted else labels != y
    return hit & (labels != REFUSED)
