"""Hardened children of every model form: copies of the parent to train, how a child records
the parent's architecture, and how it loads back.

``bastion harden`` trains (or refits) a copy of the parent and writes it as a model directory
``CHILD/`` holding ``spec.json`` (how to rebuild the architecture), the model file(s) and
``provenance.json``:

=====================  ======================================================================
parent form            child directory
=====================  ======================================================================
model-dir (zoo)        ``spec.json`` (the zoo spec), ``model.safetensors``
entry-point            ``spec.json`` = ``{"name": "entry-point", "params": {"entry_point",
                       "source", "source_sha256"}}``, ``model.safetensors``
torchscript,           ``spec.json`` = ``{"name": "torchscript", "params": {"file": "model.ts",
onnx-torch, module     "how": "script" | "trace"}}``, ``model.ts``: the trained child as a
                       TorchScript archive (architecture and weights; ``torch.jit.load`` runs
                       no pickled Python)
skops                  ``spec.json`` = ``{"name": "skops", "params": {"file": "model.skops"}}``
xgboost                ``spec.json`` = ``{"name": "xgboost", "params": {"file": "model.json"}}``
=====================  ======================================================================

:func:`~bastion.models.children.load_child` reads every one of them from ``CHILD/``
(``bastion.models.io.load_model`` dispatches a model directory whose spec names one of
:data:`CHILD_FORMS` there). The existing single-form
loaders read them too, with the same SHA-256: ``--model CHILD --entry-point mod:fn``,
``--model CHILD/model.ts``, ``--model CHILD/model.skops``, ``--model CHILD/model.json``.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from bastion.errors import ModelError
from bastion.models.children import (
    CHILD_FORMS,
    FILES,
    PROVENANCE,
    SPEC,
    TORCHSCRIPT_FILE,
    WEIGHTS,
    child_spec,
    load_child,
    load_hardened,
)
from bastion.models.loaded import LoadedModel
from bastion.models.zoo import ModelSpec

log = logging.getLogger(__name__)

TRACE_TOL = 1e-5


# --- copies to train ------------------------------------------------------------------------


def is_script(module: nn.Module) -> bool:
    return isinstance(module, torch.jit.ScriptModule)


def clone_module(module: nn.Module) -> nn.Module:
    """An independent copy of ``module`` whose parameters are leaves an optimizer can train.
    ``copy.deepcopy`` of a TorchScript module returns non-leaf parameter clones, so those
    are copied through ``torch.jit.save``/``torch.jit.load`` instead."""
    if is_script(module):
        buf = io.BytesIO()
        torch.jit.save(module, buf)
        buf.seek(0)
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        return torch.jit.load(buf, map_location=device)
    return copy.deepcopy(module)


def _kaiming(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """PyTorch's default init of Linear and Conv layers (``reset_parameters``)."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in = weight[0].numel() if weight.ndim > 1 else 1
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(bias, -bound, bound)


_NORMS = ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm")
_WEIGHTED = ("Linear", "Bilinear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose")


@torch.no_grad()
def _reset_script_layer(layer: nn.Module, kind: str) -> bool:
    """Re-initialise one TorchScript layer by its original class name; False if unknown."""
    params = dict(layer.named_parameters(recurse=False))
    if kind.startswith(_WEIGHTED) and "weight" in params:
        _kaiming(params["weight"], params.get("bias"))
        return True
    if kind.startswith(_NORMS):
        if "weight" in params:
            params["weight"].fill_(1.0)
        if "bias" in params:
            params["bias"].zero_()
        for name, buf in layer.named_buffers(recurse=False):
            if name == "running_mean":
                buf.zero_()
            elif name == "running_var":
                buf.fill_(1.0)
            elif name == "num_batches_tracked":
                buf.zero_()
        return True
    if kind == "Embedding" and "weight" in params:
        nn.init.normal_(params["weight"])
        return True
    return not params


def reinitialise(module: nn.Module, seed: int) -> nn.Module:
    """A re-initialised copy of ``module``'s architecture, seeded: every layer's
    ``reset_parameters`` for Python modules (zoo, entry-point, converted ONNX graphs); for
    TorchScript, PyTorch's default init by each layer's original class (Linear, Conv,
    normalisation, Embedding). A TorchScript layer of another kind that holds parameters
    cannot be re-initialised: ModelError says to fine-tune from the parent instead."""
    torch.manual_seed(seed)
    new = clone_module(module)
    if is_script(new):
        unknown = [
            f"{name or '<root>'} ({getattr(m, 'original_name', type(m).__name__)})"
            for name, m in new.named_modules()
            if not _reset_script_layer(m, str(getattr(m, "original_name", "")))
        ]
        if unknown:
            raise ModelError(
                "cannot re-initialise the TorchScript layer(s) "
                + ", ".join(unknown)
                + " (no known default init): train from the parent's weights with init: parent"
            )
        return new.train()
    kept = []
    for name, m in new.named_modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
        elif any(True for _ in m.parameters(recurse=False)):
            kept.append(name or "<root>")
    if kept:
        log.warning("layers without reset_parameters keep the parent's values: %s", kept)
    return new.train()


# --- TorchScript export of a trained child ---------------------------------------------------


def to_torchscript(module: nn.Module, example: torch.Tensor) -> tuple[nn.Module, str]:
    """``module`` as TorchScript: itself if it already is, else ``torch.jit.script``, else
    ``torch.jit.trace`` on ``example`` (checked on a batch of another size, so no shape was
    baked in). Raises ModelError when neither reproduces the module's outputs."""
    module = module.cpu().eval()
    if is_script(module):
        return module, "script"
    check = torch.cat([example, example[:1]]) if len(example) > 1 else torch.cat([example] * 3)
    with torch.no_grad():
        want = module(check)
    errors = []
    for how in ("script", "trace"):
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings: the outputs are checked below
                ts = (
                    torch.jit.script(module)
                    if how == "script"
                    else torch.jit.trace(
                        module, example[: max(1, len(example) // 2)], check_trace=False
                    )
                )
                got = ts(check)
        except Exception as exc:  # torch.jit raises many types (RuntimeError, NotSupportedError)
            errors.append(f"{how}: {str(exc).strip().splitlines()[0] if str(exc) else exc!r}")
            continue
        if got.shape == want.shape and bool(torch.allclose(got, want, atol=TRACE_TOL, rtol=1e-4)):
            return ts, how
        errors.append(f"{how}: outputs differ from the trained module's")
    raise ModelError(
        "cannot save the hardened model as TorchScript (" + "; ".join(errors) + "): "
        "harden the model through its entry point (--entry-point module:function) instead"
    )


# --- writing a child -------------------------------------------------------------------------


def _with_architecture(provenance: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
    return {**provenance, "architecture": spec.model_dump()}


def _write_common(out: Path, spec: ModelSpec, provenance: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / SPEC).write_text(spec.model_dump_json(indent=2))
    text = json.dumps(_with_architecture(provenance, spec), indent=2, default=str)
    (out / PROVENANCE).write_text(text)


def _clear_other_forms(out: Path, keep: str) -> None:
    """Remove model files of another form a previous run left in ``out``."""
    for name in (WEIGHTS, TORCHSCRIPT_FILE, *FILES.values()):
        if name != keep and (out / name).is_file():
            (out / name).unlink()


def save_module_child(
    parent: LoadedModel,
    module: nn.Module,
    out: Path,
    provenance: dict[str, Any],
    *,
    example: torch.Tensor,
    num_classes: int,
) -> ModelSpec:
    """Write the trained child of a differentiable parent; returns the spec written."""
    from bastion.models.io import save_model

    shape = [int(s) for s in example.shape[1:]]
    module = module.cpu().eval()
    if parent.spec is not None:  # a zoo model: the zoo spec rebuilds it
        _clear_other_forms(out, WEIGHTS)
        save_model(module, parent.spec, out, provenance=_with_architecture(provenance, parent.spec))
        return parent.spec
    if parent.entry_point is not None and not is_script(module):
        source = next((a for a in parent.artifacts if a.role == "source"), None)
        spec = ModelSpec(
            name="entry-point",
            params={
                "entry_point": parent.entry_point,
                "source": Path(source.path).name if source else None,
                "source_sha256": source.sha256 if source else None,
                "input_shape": shape,
                "num_classes": num_classes,
            },
        )
        _clear_other_forms(out, WEIGHTS)
        _write_common(out, spec, provenance)
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(out / WEIGHTS))
        return spec
    ts, how = to_torchscript(module, example.cpu())
    spec = ModelSpec(
        name="torchscript",
        params={
            "file": TORCHSCRIPT_FILE,
            "how": how,
            "parent_form": parent.form,
            "input_shape": shape,
            "num_classes": num_classes,
        },
    )
    _clear_other_forms(out, TORCHSCRIPT_FILE)
    _write_common(out, spec, provenance)
    torch.jit.save(ts, str(out / TORCHSCRIPT_FILE))
    return spec


def save_estimator_child(
    form: str,
    save: Callable[[Path], None],
    out: Path,
    provenance: dict[str, Any],
    *,
    input_shape: list[int],
    num_classes: int,
) -> ModelSpec:
    """Write the refitted child of a gradient-free parent in the parent's own format."""
    if form not in FILES:
        raise ModelError(f"no child format for a {form} model")
    spec = ModelSpec(
        name=form,
        params={"file": FILES[form], "input_shape": input_shape, "num_classes": num_classes},
    )
    _clear_other_forms(out, FILES[form])
    _write_common(out, spec, provenance)
    save(out / FILES[form])
    return spec


__all__ = [
    "CHILD_FORMS",
    "child_spec",
    "clone_module",
    "load_child",
    "load_hardened",
    "reinitialise",
    "save_estimator_child",
    "save_module_child",
    "to_torchscript",
]
