"""A remote classifier behind HTTP(S) as a model to assess (black-box: no gradients).

The request/response mapping is :class:`~bastion.attacks.http_target.HttpTarget`'s: JSON
``{"inputs": [...]}`` or a bare list in; ``{"probabilities": ...}`` / ``{"predictions": ...}``
or a bare list of probability rows or labels out. The API key is read from the environment
variable named by ``api_key_env`` (never from the command line, where it would be logged).
"""

from __future__ import annotations

import hashlib
import os

import torch

from bastion.attacks.http_target import HttpTarget
from bastion.errors import ConfigError
from bastion.models.loaded import Capabilities, LoadedModel


def http_model(
    url: str,
    *,
    num_classes: int | None = None,
    output: str = "scores",
    body: str = "object",
    api_key_env: str | None = None,
    timeout: float = 10.0,
    batch_size: int = 64,
) -> LoadedModel:
    """A :class:`LoadedModel` answering through ``url`` (form ``http``)."""
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise ConfigError(
                f"environment variable {api_key_env} (the endpoint's API key) is not set"
            )
    target = HttpTarget(
        url,
        kind=output,
        num_classes=num_classes,
        api_key=key,
        timeout=timeout,
        batch_size=batch_size,
        body=body,
    )

    def answer(x: torch.Tensor) -> torch.Tensor:
        return target(x)

    return LoadedModel(
        name=url,
        sha256=hashlib.sha256(url.encode()).hexdigest(),
        form="http",
        predict_fn=answer,
        capabilities=Capabilities(gradients=False, output=output, num_classes=num_classes),
        notes=[f"remote endpoint {url}: black-box ({output}); every query is counted"],
    )
