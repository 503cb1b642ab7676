"""Shared CLI pieces: consoles, device choice, model/data loading from options."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console

from bastion.cli.validate import choice_check, count_check, number_check
from bastion.errors import ConfigError

console = Console()
err_console = Console(stderr=True)

# Options several commands share (Typer reads the help from the alias).
DATA_HELP = "digits | fashion-mnist | mnist | file.npz | file.csv (see the --modality … options)"
DataOpt = Annotated[str | None, typer.Option(help=DATA_HELP)]
DataRootOpt = Annotated[str | None, typer.Option(help="folder holding IDX files")]
ThreatOpt = Annotated[Path | None, typer.Option(help="threat-model YAML")]
EpsListOpt = Annotated[
    list[float] | None,
    typer.Option(
        help="ε, a finite number >= 0 (repeat for several)",
        callback=number_check(ge=0, what="ε values"),
    ),
]
NEvalOpt = Annotated[
    int | None, typer.Option(help="test points to attack (>= 1)", callback=count_check())
]


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


def _device_check(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> Any:
    if value is not None and value != "cpu":
        try:
            pick_device(value)
        except ConfigError as exc:
            raise typer.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


DeviceOpt = Annotated[str, typer.Option(help="cpu | cuda | cuda:N | auto", callback=_device_check)]


def _int_list(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(
            f"{what}: expected comma-separated feature indices, got {text!r}"
        ) from None


def _float_list(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated numbers, got {text!r}") from None


DATA_FLAGS = (
    "modality",
    "shape",
    "layout",
    "scale",
    "lower",
    "upper",
    "bounds",
    "integer",
    "frozen",
    "label_column",
)


def data_options_from(params: Mapping[str, Any], fallback: Any = None) -> Any:
    """:class:`~bastion.data.loaders.DataOptions` from a command's data flags (pass its
    ``locals()``: only the :data:`DATA_FLAGS` names are read). With no data flag given,
    ``fallback`` (a profile's ``data_options``) when there is one."""
    given = {k: params[k] for k in DATA_FLAGS if params.get(k) is not None}
    if not given and fallback is not None:
        return fallback
    return data_options(**given)


def data_options(
    *,
    modality: str | None = None,
    shape: str | None = None,
    layout: str | None = None,
    scale: float | None = None,
    lower: str | None = None,
    upper: str | None = None,
    bounds: Path | None = None,
    integer: str | None = None,
    frozen: str | None = None,
    label_column: str | None = None,
):
    """:class:`~bastion.data.loaders.DataOptions` from the CLI's data flags (validated)."""
    from bastion.config import read_yaml, validate
    from bastion.data.loaders import DataOptions

    fields: dict = {}
    if bounds is not None:
        table = read_yaml(bounds)
        if not isinstance(table, dict) or not {"lower", "upper"} <= set(table):
            raise ConfigError(f"{bounds}: a bounds file needs `lower:` and `upper:` lists")
        fields["lower"], fields["upper"] = table["lower"], table["upper"]
    for key, val in (
        ("lower", _float_list(lower, "--lower")),
        ("upper", _float_list(upper, "--upper")),
    ):
        if val is not None:
            fields[key] = val
    if integer is not None:
        fields["integer"] = (
            integer if integer in ("auto", "none") else _int_list(integer, "--integer")
        )
    if frozen is not None:
        fields["frozen"] = _int_list(frozen, "--frozen")
    if shape is not None:
        fields["shape"] = _int_list(shape, "--shape")
    for key, val in (
        ("modality", modality),
        ("layout", layout),
        ("scale", scale),
        ("label_column", label_column),
    ):
        if val is not None:
            fields[key] = val
    return validate(DataOptions, fields, "data options")


ModalityOpt = Annotated[
    str | None,
    typer.Option(
        help="auto | image | tabular (how to read a .npz/CSV)",
        callback=choice_check(("auto", "image", "tabular"), "modality"),
    ),
]
ShapeOpt = Annotated[
    str | None, typer.Option(help="sample shape for flat rows read as images, e.g. 1,8,8")
]
LayoutOpt = Annotated[
    str | None,
    typer.Option(
        help="auto | NCHW | NHWC for 4-D image arrays",
        callback=choice_check(("auto", "NCHW", "NHWC"), "layout"),
    ),
]
ScaleOpt = Annotated[
    float | None,
    typer.Option(
        help="divide every value by this (e.g. 255); never implied", callback=number_check(gt=0)
    ),
]
LowerOpt = Annotated[
    str | None, typer.Option(help="lower bound(s): one value or one per feature, comma-separated")
]
UpperOpt = Annotated[str | None, typer.Option(help="upper bound(s): one value or one per feature")]
BoundsOpt = Annotated[
    Path | None, typer.Option(help="YAML/JSON file with `lower:` and `upper:` lists")
]
IntegerOpt = Annotated[str | None, typer.Option(help="integer features: auto | none | i,j,k")]
FrozenOpt = Annotated[str | None, typer.Option(help="features an attacker cannot change: i,j,k")]
LabelColumnOpt = Annotated[
    str | None, typer.Option(help="CSV label column: a header name or index")
]


# Model options shared by assess, harden, guard, serve and attest (each command words its
# own --model help).
EntryPointOpt = Annotated[
    str | None, typer.Option(help="module:function returning an nn.Module (runs that code)")
]
WeightsOpt = Annotated[
    Path | None, typer.Option(help="weights for --entry-point (.safetensors/.pt)")
]
ONNX_MODES = ("auto", "torch", "runtime")
OnnxModeOpt = Annotated[
    str,
    typer.Option(
        help="ONNX: auto (convert for gradients, else onnxruntime) | torch | runtime",
        callback=choice_check(ONNX_MODES, "ONNX mode"),
    ),
]
TrustOpt = Annotated[
    list[str] | None, typer.Option(help="skops: a type to trust when loading (repeat)")
]
EPS_MODES = ("absolute", "relative")
EpsModeOpt = Annotated[
    str | None,
    typer.Option(
        help="absolute | relative (to each feature's range; tabular default)",
        callback=choice_check(EPS_MODES, "ε mode"),
    ),
]
