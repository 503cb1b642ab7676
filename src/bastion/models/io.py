"""Safe model I/O: :func:`load_model` detects the form of ``--model PATH`` and dispatches.

A model directory holds ``spec.json`` (zoo name + params), ``model.safetensors`` and
optionally ``provenance.json``. Pickled ``.pt``/``.pth`` files are loaded only through
``torch.load(weights_only=True)`` (an allowlist of tensor types) and only as state dicts;
anything needing arbitrary unpickling is refused. A user's own architecture can come from
a ``module:function`` entry point, which executes that user code on purpose. Single files
(TorchScript, ONNX: :mod:`bastion.models.forms_torch`; skops, XGBoost, LightGBM:
:mod:`bastion.models.forms_trees`) are read by their own safe loaders, never unpickled.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bastion.errors import ModelError
from bastion.models import forms_torch, forms_trees
from bastion.models.forms_torch import OnnxMode
from bastion.models.loaded import (
    Capabilities,
    LoadedModel,
    artifact,
    artifacts_sha256,
    file_sha256,
)
from bastion.models.safe_pickle import load_tensors
from bastion.models.zoo import ModelSpec, build_model
from bastion.scan.engine import require_clean

WEIGHTS = "model.safetensors"
SPEC = "spec.json"
PROVENANCE = "provenance.json"
WEIGHT_SUFFIXES = {".safetensors", ".pt", ".pth", ".bin"}
ACCEPTED = (
    "a model directory (spec.json + weights), --entry-point module:function with "
    ".pt/.pth/.safetensors weights, TorchScript (.pt/.pth/.ts/.torchscript/.jit), ONNX (.onnx), "
    "scikit-learn skops (.skops), XGBoost (.json/.ubj) or LightGBM (.txt/.lgb)"
)


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
        require_clean(path)  # the header only
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            reason = " ".join(str(exc).split())[:200]
            raise ModelError(f"{path}: not a valid safetensors file ({reason})") from None
    if path.suffix in {".pt", ".pth", ".bin"}:
        # a pickle outside the tensor allowlist is refused with what it held, never with
        # PyTorch's advice to load it unrestricted
        obj = load_tensors(path, what="checkpoint")
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ModelError(f"{path}: expected a state_dict of tensors, got {type(obj).__name__}")
        return obj
    raise ModelError(
        f"{path}: unsupported weight format {path.suffix!r}: use .safetensors, .pt or .pth"
    )


@contextmanager
def _cwd_on_path() -> Iterator[None]:
    """The working directory first on the import path (if missing) while user code runs."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _build_entry_point(target: str, **kwargs: Any) -> tuple[nn.Module, ModuleType]:
    """Import ``package.module:function``, call it, and return the module it built and the
    Python module it came from. The working directory is on the import path meanwhile."""
    if ":" not in target:
        raise ModelError(f"entry point {target!r} must look like 'package.module:function'")
    mod_name, fn_name = target.split(":", 1)
    with _cwd_on_path():
        importlib.invalidate_caches()  # a module written since the last import
        try:
            mod = importlib.import_module(mod_name)
            fn = getattr(mod, fn_name)
        except (ImportError, AttributeError) as exc:
            raise ModelError(
                f"cannot import entry point {target!r}: {exc} (run from the directory holding "
                "the module, or put its package on PYTHONPATH)"
            ) from None
        module = fn(**kwargs)
    if not isinstance(module, nn.Module):
        raise ModelError(
            f"entry point {target!r} returned {type(module).__name__}, not an nn.Module"
        )
    return module, mod


def load_entry_point(target: str, **kwargs: Any) -> nn.Module:
    """Import ``package.module:function`` and call it to build an ``nn.Module``.
    This executes the user's code: only use entry points you trust."""
    return _build_entry_point(target, **kwargs)[0]


def _source_file(mod: ModuleType) -> Path | None:
    """The ``.py`` file a module was imported from, if any."""
    try:
        src = inspect.getsourcefile(mod)
    except TypeError:  # a built-in module
        return None
    return Path(src) if src and Path(src).is_file() else None


def _entry_point_model(
    entry_point: str, path: Path | None, weights: str | Path | None
) -> LoadedModel:
    """The user's architecture from ``entry_point`` with weights from ``weights``, a weights
    file given as ``path``, or ``model.safetensors`` in the directory ``path``."""
    module, mod = _build_entry_point(entry_point)
    wfile = Path(weights) if weights else None
    if wfile is None and path is not None:
        if path.is_dir():
            wfile = path / WEIGHTS if (path / WEIGHTS).exists() else None
        elif path.is_file() and path.suffix in WEIGHT_SUFFIXES:
            wfile = path
        elif path.is_file():
            raise ModelError(
                f"{path}: with --entry-point the model path must be a weights file "
                f"({', '.join(sorted(WEIGHT_SUFFIXES))}) or a directory holding {WEIGHTS}"
            )
        else:
            raise ModelError(f"weights not found: {path}")
    artifacts = []
    if wfile is not None:
        if not wfile.is_file():
            raise ModelError(f"weights not found: {wfile}")
        _apply_state(module, _load_state(wfile), wfile)
        artifacts.append(artifact(wfile, "weights"))
    notes = []
    source = _source_file(mod)
    if source is not None:
        artifacts.append(artifact(source, "source"))
    else:
        notes.append("the entry point's source file could not be found: not hashed")
    module.eval()
    return LoadedModel(
        name=entry_point,
        sha256=artifacts_sha256(artifacts),
        form="entry-point",
        module=module,
        capabilities=Capabilities(gradients=True, retrainable=True),
        path=path,
        artifacts=artifacts,
        provenance={"state_sha256": state_sha256(module)},
        rebuild=lambda: load_entry_point(entry_point),
        entry_point=entry_point,
        notes=notes,
    )


def load_model(
    path: str | Path | None,
    *,
    entry_point: str | None = None,
    weights: str | Path | None = None,
    onnx_mode: OnnxMode = "auto",
    trusted: list[str] | None = None,
) -> LoadedModel:
    """Load any supported model form, detected from ``path``.

    A model directory (spec.json + weights); an ``entry_point`` (``module:function``) with
    optional weights (``weights``, or ``path`` naming a .pt/.pth/.safetensors file); a
    TorchScript archive; an ONNX graph (``onnx_mode``: ``auto`` converts to torch and falls
    back to onnxruntime, ``torch`` or ``runtime`` force one); a skops file (``trusted`` names
    types outside skops' allowlist); an XGBoost .json/.ubj or LightGBM .txt/.lgb booster."""
    path = Path(path) if path else None
    if entry_point:
        return _entry_point_model(entry_point, path, weights)
    if path is None or not path.exists():
        raise ModelError(f"model not found: {path}: pass {ACCEPTED}")
    if path.is_dir():
        return _load_model_dir(path, weights, trusted)
    require_clean(path)  # bastion scan first: refuses code-carrying files before loading
    suffix = path.suffix.lower()
    if suffix in {".pt", ".pth"}:
        if forms_torch.is_torchscript(path):
            return forms_torch.load_torchscript(path)
        _load_state(path)  # refuses a pickle outside the tensor allowlist
        raise ModelError(
            f"{path} holds a state dict (weights only): pass --entry-point module:function "
            "naming a function that builds the architecture"
        )
    if suffix in forms_torch.TORCHSCRIPT_SUFFIXES:
        return forms_torch.load_torchscript(path)
    if suffix == ".onnx":
        return forms_torch.load_onnx(path, onnx_mode)
    if suffix == ".skops":
        return forms_trees.load_skops(path, trusted)
    if suffix == ".ubj" or (suffix == ".json" and forms_trees.is_xgboost_json(path)):
        return forms_trees.load_xgboost(path)
    if suffix == ".lgb" or (suffix == ".txt" and forms_trees.lightgbm_header(path) is not None):
        return forms_trees.load_lightgbm(path)
    if suffix in WEIGHT_SUFFIXES:
        raise ModelError(
            f"{path} holds weights only: pass --entry-point module:function to build the "
            f"architecture, or put it in a model directory with {SPEC}"
        )
    raise ModelError(f"{path}: unrecognised model file ({suffix or 'no suffix'}): pass {ACCEPTED}")


def _load_model_dir(
    path: Path, weights: str | Path | None, trusted: list[str] | None = None
) -> LoadedModel:
    """A directory written by ``bastion train``: spec.json, weights, provenance.json."""
    if not (path / SPEC).exists():
        raise ModelError(f"{path}: no {SPEC}; use --entry-point module:function for a custom model")
    try:
        spec = ModelSpec.model_validate_json((path / SPEC).read_text())
    except ValueError as exc:
        detail = " ".join(" ".join(str(exc).splitlines()[:3]).split())[:300]
        raise ModelError(f"{path / SPEC}: invalid spec ({detail})") from None
    from bastion.models.children import CHILD_FORMS, load_child

    if spec.name in CHILD_FORMS:  # bastion harden's child of an entry-point/TorchScript/... parent
        return load_child(path, spec, weights=weights, trusted=trusted)
    module = build_model(spec)
    wfile = weights and Path(weights)
    if not wfile:
        candidates = [path / WEIGHTS, path / "model.pt", path / "model.pth"]
        wfile = next((c for c in candidates if c.exists()), None)
        if wfile is None:
            raise ModelError(f"{path}: no weights ({WEIGHTS}, model.pt or model.pth)")
    _apply_state(module, _load_state(wfile), wfile)
    module.eval()
    provenance = read_provenance(path / PROVENANCE)
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


def read_provenance(file: Path) -> dict[str, Any]:
    """``provenance.json`` as a mapping ({} when absent); ModelError when it is not one."""
    if not file.exists():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{file}: not readable JSON ({exc}): restore or delete it") from None
    if not isinstance(data, dict):
        raise ModelError(f"{file}: must be a JSON object, got {type(data).__name__}")
    return data


def _apply_state(module: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"{source}: weights do not match the architecture ({first})") from None
