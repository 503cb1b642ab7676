"""A small model zoo built from a spec (name + params) that is saved beside the weights."""

from __future__ import annotations

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


def build_model(spec: ModelSpec) -> nn.Module:
    """Instantiate a zoo model; unknown names or parameters raise ModelError."""
    if spec.name not in _ZOO:
        raise ModelError(f"unknown model {spec.name!r}: choose one of {', '.join(MODEL_NAMES)}")
    params = dict(spec.params)
    if "input_shape" in params:
        params["input_shape"] = tuple(params["input_shape"])
    try:
        return _ZOO[spec.name](**params)
    except TypeError as exc:
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
