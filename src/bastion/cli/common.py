"""Shared CLI pieces: consoles, device choice, model/data loading from options."""

from __future__ import annotations

import torch
from rich.console import Console

from bastion.errors import ConfigError

console = Console()
err_console = Console(stderr=True)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for but no CUDA GPU is available: use --device cpu")
    return device
