"""Shared CLI pieces: consoles, device choice, model/data loading from options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console

from bastion.errors import ConfigError

console = Console()
err_console = Console(stderr=True)

# Options several commands share (Typer reads the help from the alias).
DATA_HELP = "digits | fashion-mnist | mnist | file.npz | file.csv"
DataOpt = Annotated[str | None, typer.Option(help=DATA_HELP)]
DataRootOpt = Annotated[str | None, typer.Option(help="folder holding IDX files")]
ThreatOpt = Annotated[Path | None, typer.Option(help="threat-model YAML")]
EpsListOpt = Annotated[list[float] | None, typer.Option(help="ε (repeat for several)")]
NEvalOpt = Annotated[int | None, typer.Option(help="test points to attack")]


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
