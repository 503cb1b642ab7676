"""Safe model I/O.

A model directory holds ``spec.json`` (zoo name + params), ``model.safetensors`` and
optionally ``provenance.json``. Pickled ``.pt``/``.pth`` files are loaded only through
``torch.load(weights_only=True)`` (an allowlist of tensor types) and only as state dicts;
anything needing arbitrary unpickling is refused. A user's own architecture can come from
a ``module:function`` entry point, which executes that user code on purpose.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bastion.errors import ModelError, UnsafeModelError
from bastion.models.loaded import Capabilities, LoadedModel, artifact, file_sha256
from bastion.models.zoo import ModelSpec, build_model

WEIGHTS = "model.safetensors"
SPEC = "spec.json"
PROVENANCE = "provenance.json"


__all__ = ["LoadedModel", "file_sha256", "load_model", "save_model", "state_sha256"]


def state_sha256(module: nn.Module) -> str:
    """Hash of a module's parameters and buffers in key order."""
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_model(
    module: nn.Module, spec: ModelSpec, out: str | Path, *, provenance: dict[str, Any] | None = None
) -> Path:
    """Write ``spec.json``, ``model.safetensors`` (and ``provenance.json``) under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    (out / SPEC).write_text(spec.model_dump_json(indent=2))
    if provenance is not None:
        (out / PROVENANCE).write_text(json.dumps(provenance, indent=2, default=str))
    return out


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"{path}: not a valid safetensors file ({exc})") from None
    if path.suffix in {".pt", ".pth", ".bin"}:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafeModelError(
                f"{path}: refused: the pickle holds objects outside the tensor allowlist "
                f"(loading it would execute code). Re-save it as a state_dict or safetensors. "
                f"Detail: {str(exc).splitlines()[0]}"
            ) from None
        except (RuntimeError, EOFError, OSError) as exc:
            raise ModelError(f"{path}: cannot read the checkpoint ({exc})") from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ModelError(f"{path}: expected a state_dict of tensors, got {type(obj).__name__}")
        return obj
    raise ModelError(
        f"{path}: unsupported weight format {path.suffix!r}: use .safetensors, .pt or .pth"
    )


def load_entry_point(target: str, **kwargs: Any) -> nn.Module:
    """Import ``package.module:function`` and call it to build an ``nn.Module``.
    This executes the user's code: only use entry points you trust."""
    if ":" not in target:
        raise ModelError(f"entry point {target!r} must look like 'package.module:function'")
    mod_name, fn_name = target.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot import entry point {target!r}: {exc}") from None
    module = fn(**kwargs)
    if not isinstance(module, nn.Module):
        raise ModelError(
            f"entry point {target!r} returned {type(module).__name__}, not an nn.Module"
        )
    return module


def load_model(
    path: str | Path, *, entry_point: str | None = None, weights: str | Path | None = None
) -> LoadedModel:
    """Load a model directory (spec.json + weights), or an entry point with optional weights."""
    path = Path(path) if path else None
    if entry_point:
        module = load_entry_point(entry_point)
        wfile = Path(weights) if weights else None
        if wfile is None and path is not None and path.is_dir() and (path / WEIGHTS).exists():
            wfile = path / WEIGHTS
        if wfile is not None:
            _apply_state(module, _load_state(wfile), wfile)
        module.eval()
        return LoadedModel(
            name=entry_point,
            sha256=state_sha256(module),
            form="entry-point",
            module=module,
            capabilities=Capabilities(gradients=True, retrainable=True),
            path=path,
            artifacts=[artifact(wfile, "weights")] if wfile is not None else [],
            rebuild=lambda: load_entry_point(entry_point),
            entry_point=entry_point,
        )
    if path is None or not path.exists():
        raise ModelError(f"model not found: {path}: pass a directory written by `bastion train`")
    if path.is_file():
        raise ModelError(f"{path} is a file: pass the model directory holding {SPEC} and weights")
    if not (path / SPEC).exists():
        raise ModelError(f"{path}: no {SPEC}; use --entry-point module:function for a custom model")
    try:
        spec = ModelSpec.model_validate_json((path / SPEC).read_text())
    except ValueError as exc:
        raise ModelError(f"{path / SPEC}: invalid spec ({str(exc).splitlines()[0]})") from None
    module = build_model(spec)
    wfile = weights and Path(weights)
    if not wfile:
        candidates = [path / WEIGHTS, path / "model.pt", path / "model.pth"]
        wfile = next((c for c in candidates if c.exists()), None)
        if wfile is None:
            raise ModelError(f"{path}: no weights ({WEIGHTS}, model.pt or model.pth)")
    _apply_state(module, _load_state(wfile), wfile)
    module.eval()
    provenance = {}
    if (path / PROVENANCE).exists():
        provenance = json.loads((path / PROVENANCE).read_text())
    return LoadedModel(
        name=path.name,
        sha256=file_sha256(wfile),
        form="model-dir",
        module=module,
        capabilities=Capabilities(
            gradients=True,
            num_classes=spec.params.get("num_classes"),
            input_shape=list(spec.params["input_shape"]) if "input_shape" in spec.params else None,
            retrainable=True,
        ),
        artifacts=[artifact(wfile, "weights"), artifact(path / SPEC, "spec")],
        spec=spec,
        path=path,
        provenance=provenance,
        rebuild=lambda: build_model(spec),
    )


def _apply_state(module: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"{source}: weights do not match the architecture ({first})") from None
