"""A small model zoo built from a spec (name + params) that is saved beside the weights."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, Field
from torch import nn

from bastion.errors import ModelError


class ModelSpec(BaseModel):
    """What to build: a zoo name and its keyword parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


def mlp(
    *, input_shape: tuple[int, ...], num_classes: int, hidden: int = 128, depth: int = 2
) -> nn.Module:
    """A ReLU multilayer perceptron over flattened inputs."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(torch.tensor(input_shape).prod())
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(
    *, input_shape: tuple[int, ...], num_classes: int, width: int = 32, hidden: int = 128
) -> nn.Module:
    """A small CNN: two conv blocks (the second with a 2×2 max-pool per block on 28×28 inputs,
    one pool on 8×8 inputs), then a hidden dense layer. The penultimate layer is ``features``."""
    channels, height, _ = input_shape
    pools = 2 if height >= 16 else 1
    blocks: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
    if pools == 2:
        blocks.append(nn.MaxPool2d(2))
    blocks += [nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    side = height // (2**pools)
    return nn.Sequential(
        *blocks,
        nn.Flatten(),
        nn.Linear(2 * width * side * side, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


_ZOO: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": cnn}
MODEL_NAMES = sorted(_ZOO)


MAX_PARAMETERS = 10**8  # 400 MB of float32 weights: far above any zoo model Bastion trains
_SIZES = ("num_classes", "width", "hidden", "depth")


def _sizes(name: str, params: dict[str, Any]) -> None:
    """Refuse sizes that are not positive whole numbers, or a network too large to build
    (a spec.json is user input: ``hidden: 10**9`` must not allocate terabytes)."""
    shape = params.get("input_shape")
    if shape is not None and (
        not isinstance(shape, (list, tuple))
        or not 1 <= len(shape) <= 3
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
    ):
        raise ModelError(f"bad parameters for model {name!r}: input_shape {shape!r}")
    for key in _SIZES:
        v = params.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ModelError(f"bad parameters for model {name!r}: {key} must be >= 1, got {v!r}")
    if shape is None or not isinstance(params.get("num_classes"), int):
        return  # the builder names what is missing
    if name == "cnn" and len(shape) != 3:
        raise ModelError(f"bad parameters for model 'cnn': input_shape must be C,H,W, got {shape}")
    d, k = math.prod(shape), params["num_classes"]
    if name == "mlp":
        h, depth = params.get("hidden", 128), params.get("depth", 2)
        n = d * h + (depth - 1) * h * h + h * k
    else:
        w, h, side = params.get("width", 32), params.get("hidden", 128), shape[1] // 2
        n = 9 * shape[0] * w + 18 * w * w + 2 * w * side * side * h + h * k
    if n > MAX_PARAMETERS:
        raise ModelError(
            f"bad parameters for model {name!r}: about {n:.3g} weights, more than the "
            f"{MAX_PARAMETERS:.0e} a zoo model may have"
        )


def build_model(spec: ModelSpec) -> nn.Module:
    """Instantiate a zoo model; unknown names, bad or oversized parameters raise ModelError."""
    if spec.name not in _ZOO:
        raise ModelError(f"unknown model {spec.name!r}: choose one of {', '.join(MODEL_NAMES)}")
    params = dict(spec.params)
    _sizes(spec.name, params)
    if "input_shape" in params:
        params["input_shape"] = tuple(params["input_shape"])
    try:
        return _ZOO[spec.name](**params)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"bad parameters for model {spec.name!r}: {exc}") from None


def zoo_spec(name: str, input_shape: tuple[int, ...], num_classes: int, **params: Any) -> ModelSpec:
    return ModelSpec(
        name=name, params={"input_shape": list(input_shape), "num_classes": num_classes, **params}
    )


def penultimate(model: nn.Module) -> nn.Module:
    """The sub-network up to the last hidden layer of a zoo ``nn.Sequential`` (for detectors)."""
    if isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Linear):
        return model[:-1]
    raise ModelError("feature extraction needs an nn.Sequential ending in nn.Linear")
