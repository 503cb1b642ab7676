"""TorchScript and ONNX model files, loaded without unpickling arbitrary Python.

TorchScript archives go through ``torch.jit.load`` (TorchScript code and tensors, no
arbitrary globals). An ONNX graph is converted to a torch module by ``onnx2torch`` (white-box,
differentiable) once its outputs agree with onnxruntime's on random inputs; otherwise, or on
request, onnxruntime answers queries as a black box. This module sits below
``bastion.attacks``: the onnxruntime runner here is deliberately minimal.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from bastion.errors import ModelError
from bastion.models.loaded import Capabilities, LoadedModel, artifact, artifacts_sha256

OnnxMode = Literal["auto", "torch", "runtime"]
TORCHSCRIPT_SUFFIXES = {".ts", ".torchscript", ".jit"}
ONNX_EXTRA = "pip install 'bastion-ml[onnx]'"
ONNX2TORCH_INSTALL = "pip install --no-deps onnx2torch==1.5.15"
VERIFY_TOL = 1e-4


# --- TorchScript ---------------------------------------------------------------------------


def is_torchscript(path: Path) -> bool:
    """True when ``path`` is a zip archive holding TorchScript code (``code/`` + constants)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    has_code = any("/code/" in n or n.startswith("code/") for n in names)
    return has_code and any(n.endswith("constants.pkl") for n in names)


def load_torchscript(path: Path) -> LoadedModel:
    """A TorchScript archive as a differentiable (not retrainable) module."""
    if not is_torchscript(path):
        raise ModelError(
            f"{path}: not a TorchScript archive (save one with torch.jit.save(torch.jit.script(m)))"
        )
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{path}: torch.jit.load cannot read it ({first})") from None
    module.eval()
    artifacts = [artifact(path, "torchscript")]
    return LoadedModel(
        name=path.stem,
        sha256=artifacts_sha256(artifacts),
        form="torchscript",
        module=module,
        capabilities=Capabilities(gradients=True, retrainable=False),
        artifacts=artifacts,
        path=path,
        notes=["TorchScript: differentiable; no architecture to retrain from"],
    )


# --- ONNX ----------------------------------------------------------------------------------


def _needs_torchvision(*_: Any, **__: Any) -> Any:
    raise ModelError(
        "this ONNX graph uses NonMaxSuppression/RoiAlign, which needs torchvision "
        "(pip install torchvision), or load it with onnx_mode='runtime'"
    )


def import_onnx2torch() -> types.ModuleType:
    """Import onnx2torch; when torchvision is absent, a stub stands in during the import only
    (two node converters, NMS and RoiAlign, import it; they raise ModelError if ever used)."""
    loaded = sys.modules.get("onnx2torch")
    if loaded is not None:
        return loaded
    if importlib.util.find_spec("onnx2torch") is None:
        raise ModelError(f"converting ONNX to torch needs onnx2torch: {ONNX2TORCH_INSTALL}")
    if importlib.util.find_spec("torchvision") is not None:
        import onnx2torch

        return onnx2torch
    stub, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.nms = ops.box_convert = ops.roi_align = _needs_torchvision  # type: ignore[attr-defined]
    stub.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = stub, ops
    try:
        import onnx2torch
    finally:
        for name in ("torchvision.ops", "torchvision"):
            if sys.modules.get(name) in (stub, ops):
                del sys.modules[name]
    return onnx2torch


class OnnxRunner:
    """A minimal onnxruntime session: float input, first suitable output, softmax if logits."""

    def __init__(self, path: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError(f"ONNX models need onnxruntime: {ONNX_EXTRA}") from None
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own error types
            raise ModelError(f"{path}: onnxruntime cannot load it ({exc})") from None
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        shape = list(first.shape or [])
        self.fixed_batch = (
            shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None
        )
        rest = shape[1:]
        self.input_shape = [int(d) for d in rest] if all(isinstance(d, int) for d in rest) else None
        self.input_float = first.type in ("tensor(float)", "tensor(double)", "tensor(float16)")
        outs = self.session.get_outputs()
        self.output_index = next(
            (i for i, o in enumerate(outs) if o.type == "tensor(float)" and len(o.shape) == 2), 0
        )
        out = outs[self.output_index]
        self.labels = out.type != "tensor(float)" and len(out.shape) == 1
        self.num_classes = (
            int(out.shape[1]) if len(out.shape) == 2 and isinstance(out.shape[1], int) else None
        )
        self.dtype = np.float64 if first.type == "tensor(double)" else np.float32

    # pickled (to a Ray worker, say) with the graph's bytes, not a session: the worker may
    # not see the file, and an onnxruntime session does not pickle
    def __getstate__(self) -> dict[str, object]:
        state = {k: v for k, v in self.__dict__.items() if k != "session"}
        state["_onnx_bytes"] = self.path.read_bytes()
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        import onnxruntime as ort

        data = state.pop("_onnx_bytes")
        self.__dict__.update(state)
        self.session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The chosen graph output for a batch (padded to a fixed batch size if needed)."""
        arr = x.detach().cpu().numpy().astype(self.dtype, copy=False)
        n = arr.shape[0]
        if self.fixed_batch is not None and n < self.fixed_batch:
            pad = np.zeros((self.fixed_batch - n, *arr.shape[1:]), dtype=arr.dtype)
            arr = np.concatenate([arr, pad])
        try:
            out = self.session.run(None, {self.input_name: arr})[self.output_index]
        except Exception as exc:  # onnxruntime raises its own error types
            raise ModelError(f"onnxruntime failed on a batch of shape {arr.shape}: {exc}") from None
        return torch.from_numpy(np.asarray(out))[:n]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, K) as float32, or labels (N,) as int64."""
        out = self.raw(x)
        if self.labels or (out.ndim == 1 and not torch.is_floating_point(out)):
            return out.long()
        if out.ndim != 2:
            raise ModelError(f"ONNX output has shape {tuple(out.shape)}: expected (N, classes)")
        out = out.float()
        return out if is_distribution(out) else torch.softmax(out, dim=1)


def is_distribution(out: torch.Tensor) -> bool:
    """Every row non-negative and summing to one (probabilities rather than logits)."""
    return bool((out >= -1e-6).all() and ((out.sum(1) - 1).abs() < 1e-3).all())


class _FirstOutput(nn.Module):
    """The first tensor a converted graph returns; log-probabilities if it ends in softmax,
    so that ``softmax(module(x))`` are the graph's probabilities either way."""

    def __init__(self, inner: nn.Module, log_probs: bool) -> None:
        super().__init__()
        self.inner = inner
        self.log_probs = log_probs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return torch.log(out.clamp_min(1e-12)) if self.log_probs else out


def _convert(path: Path, runner: OnnxRunner) -> tuple[nn.Module, list[str]]:
    """onnx2torch's module, checked against onnxruntime; raises ModelError saying why not."""
    try:
        import onnx
    except ImportError:
        raise ModelError(f"ONNX models need the onnx package: {ONNX_EXTRA}") from None
    if runner.labels:
        raise ModelError("the graph outputs labels, not scores: nothing to differentiate")
    if not runner.input_float:
        raise ModelError("the graph input is not a float tensor: nothing to differentiate")
    if runner.input_shape is None:
        raise ModelError("the graph input has symbolic dimensions after the batch")
    o2t = import_onnx2torch()
    try:
        graph = onnx.load(str(path))
        inner = o2t.convert(graph)
    except ModelError:
        raise
    except Exception as exc:  # onnx2torch raises NotImplementedError and others
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"onnx2torch cannot convert it ({first})") from None
    inner.eval()
    gen = torch.Generator().manual_seed(0)
    n = runner.fixed_batch or 4
    x = torch.rand(n, *runner.input_shape, generator=gen)
    x = torch.cat([x, torch.randn(n, *runner.input_shape, generator=gen)])
    notes = []
    conv_parts, rt_parts = [], []
    with torch.no_grad():
        for xb in x.split(n):
            out = inner(xb.to(torch.float64 if runner.dtype == np.float64 else torch.float32))
            conv_parts.append((out[0] if isinstance(out, (tuple, list)) else out).float())
            rt_parts.append(runner.raw(xb).float())
    conv, rt = torch.cat(conv_parts), torch.cat(rt_parts)
    if conv.shape != rt.shape:
        raise ModelError(f"converted output shape {tuple(conv.shape)} != {tuple(rt.shape)}")
    diff = (torch.softmax(conv, 1) - torch.softmax(rt, 1)).abs().max().item()
    if not diff < VERIFY_TOL:
        raise ModelError(f"converted outputs differ from onnxruntime's (max diff {diff:.2e})")
    log_probs = is_distribution(rt)
    if log_probs:
        notes.append("the graph outputs probabilities: the module returns their logarithm")
    return _FirstOutput(inner, log_probs).eval(), notes


def load_onnx(path: Path, mode: OnnxMode = "auto") -> LoadedModel:
    """An ONNX graph as a white-box torch module (``auto``/``torch``) or a black box (``runtime``)."""
    if mode not in ("auto", "torch", "runtime"):
        raise ModelError(f"unknown onnx_mode {mode!r}: use 'auto', 'torch' or 'runtime'")
    runner = OnnxRunner(path)
    artifacts = [artifact(path, "onnx")]
    common: dict[str, Any] = {
        "name": path.stem,
        "sha256": artifacts_sha256(artifacts),
        "artifacts": artifacts,
        "path": path,
    }
    why = "onnx_mode='runtime' was asked for"
    if mode != "runtime":
        try:
            module, notes = _convert(path, runner)
        except ModelError as exc:
            if mode == "torch":
                raise ModelError(f"{path}: cannot use it as a torch module: {exc}") from None
            why = f"onnx2torch route unavailable: {exc}"
        else:
            return LoadedModel(
                form="onnx-torch",
                module=module,
                capabilities=Capabilities(
                    gradients=True,
                    num_classes=runner.num_classes,
                    input_shape=runner.input_shape,
                ),
                notes=[
                    "converted by onnx2torch: white-box "
                    f"(outputs match onnxruntime's within {VERIFY_TOL:g})",
                    *notes,
                ],
                **common,
            )
    predict: Callable[[torch.Tensor], torch.Tensor] = runner
    return LoadedModel(
        form="onnx-runtime",
        predict_fn=predict,
        capabilities=Capabilities(
            gradients=False,
            output="labels" if runner.labels else "scores",
            num_classes=runner.num_classes,
            input_shape=runner.input_shape,
        ),
        notes=[f"run by onnxruntime as a black box (no gradients): {why}"],
        **common,
    )
