"""Tree and scikit-learn models: skops files, XGBoost and LightGBM boosters.

None of these is unpickled: skops rebuilds an estimator from an allowlist of types (a type
outside it must be trusted by name), XGBoost reads its JSON/UBJSON model format and LightGBM
its text format. They answer probabilities through ``predict_fn``, without gradients.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bastion.errors import ModelError, UnsafeModelError
from bastion.models.loaded import Capabilities, LoadedModel, artifact, artifacts_sha256

MODELS_EXTRA = "pip install 'bastion-ml[models]'"


def _as_2d(x: torch.Tensor) -> np.ndarray:
    """A batch as a float64 (N, D) array (float32 inputs are upcast exactly)."""
    return x.detach().cpu().double().reshape(x.shape[0], -1).numpy()


def _binary_or_multi(p: np.ndarray) -> torch.Tensor:
    """P(class 1) (N,) -> (N, 2); (N, K) passes through; float32 tensor either way."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    return torch.from_numpy(p).float()


def _record(path: Path, form: str, role: str, **kwargs: Any) -> LoadedModel:
    artifacts = [artifact(path, role)]
    return LoadedModel(
        name=path.stem,
        sha256=artifacts_sha256(artifacts),
        form=form,  # type: ignore[arg-type]
        artifacts=artifacts,
        path=path,
        **kwargs,
    )


# --- skops (scikit-learn) ------------------------------------------------------------------


def load_skops(path: Path, trusted: list[str] | None = None) -> LoadedModel:
    """A scikit-learn estimator from a skops file; types outside skops' allowlist must be
    named in ``trusted`` (``--trust TYPE``) or the file is refused."""
    try:
        import skops.io as sio
    except ImportError:
        raise ModelError(f"skops files need skops: {MODELS_EXTRA}") from None
    try:
        untrusted = list(sio.get_untrusted_types(file=path))
    except Exception as exc:  # skops raises zipfile/json/KeyError on a bad file
        raise ModelError(f"{path}: not a valid skops file ({exc})") from None
    allowed = set(trusted or [])
    refused = [t for t in untrusted if t not in allowed]
    if refused:
        flags = " ".join(f"--trust {t}" for t in refused)
        raise UnsafeModelError(
            f"{path}: refused: it holds types outside skops' allowlist: {', '.join(refused)}. "
            f"If you trust the file's author, pass {flags} (trusted=[...] in Python)"
        )
    try:
        est = sio.load(path, trusted=untrusted or None)
    except Exception as exc:  # skops raises its own and sklearn's errors
        raise ModelError(f"{path}: skops cannot load it ({exc})") from None
    if not hasattr(est, "predict"):
        raise ModelError(f"{path}: holds a {type(est).__name__}, not an estimator with predict")
    classes = getattr(est, "classes_", None)
    if classes is None:
        raise ModelError(f"{path}: {type(est).__name__} is not a fitted classifier (no classes_)")
    classes = np.asarray(classes)
    has_proba = hasattr(est, "predict_proba")

    def predict_fn(x: torch.Tensor) -> torch.Tensor:
        arr = _as_2d(x)
        if has_proba:
            return torch.from_numpy(np.asarray(est.predict_proba(arr), dtype=np.float32))
        labels = np.asarray(est.predict(arr))
        return torch.from_numpy(np.searchsorted(classes, labels)).long()

    n_features = getattr(est, "n_features_in_", None)
    return _record(
        path,
        "skops",
        "skops",
        predict_fn=predict_fn,
        estimator=est,
        capabilities=Capabilities(
            gradients=False,
            output="scores" if has_proba else "labels",
            num_classes=len(classes),
            input_shape=[int(n_features)] if n_features is not None else None,
            retrainable=True,
        ),
        notes=[
            f"scikit-learn {type(est).__name__} (skops): no gradients; "
            "retrain with sklearn.base.clone(estimator).fit(...)",
            *([f"trusted types: {', '.join(untrusted)}"] if untrusted else []),
        ],
    )


# --- XGBoost -------------------------------------------------------------------------------


def is_xgboost_json(path: Path) -> bool:
    """A JSON file whose top level has XGBoost's ``learner`` key."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, dict) and "learner" in doc


def load_xgboost(path: Path) -> LoadedModel:
    """An XGBoost classifier booster from its JSON or UBJSON model file."""
    try:
        import xgboost as xgb
    except ImportError:
        raise ModelError(f"XGBoost models need xgboost: {MODELS_EXTRA}") from None
    try:
        booster = xgb.Booster(model_file=str(path))
        config = json.loads(booster.save_config())
    except xgb.core.XGBoostError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"{path}: XGBoost cannot read it ({first})") from None
    learner = config["learner"]
    objective = learner["objective"]["name"]
    num_class = int(learner["learner_model_param"].get("num_class", "0") or 0)
    if objective in ("multi:softprob", "multi:softmax"):
        k, kind = num_class, "multi"
    elif objective in ("binary:logistic", "binary:logitraw", "reg:logistic"):
        k, kind = 2, "binary"
    elif objective == "binary:hinge":
        k, kind = 2, "labels"
    else:
        raise ModelError(
            f"{path}: objective {objective!r} is not a classifier: Bastion assesses "
            "binary:logistic, binary:logitraw, binary:hinge, multi:softprob or multi:softmax models"
        )

    raw = objective in ("binary:logitraw", "multi:softmax")  # these answer margins / labels

    def predict_fn(x: torch.Tensor) -> torch.Tensor:
        arr = _as_2d(x)
        if kind == "labels":
            return torch.from_numpy(np.asarray(booster.inplace_predict(arr))).long()
        out = np.asarray(
            booster.inplace_predict(arr, predict_type="margin" if raw else "value"), np.float64
        )
        if kind == "binary":
            out = out.reshape(-1)
            return _binary_or_multi(1.0 / (1.0 + np.exp(-out)) if raw else out)
        out = out.reshape(arr.shape[0], k)
        if raw:  # margins: softmax them into probabilities
            e = np.exp(out - out.max(axis=1, keepdims=True))
            out = e / e.sum(axis=1, keepdims=True)
        return _binary_or_multi(out)

    return _record(
        path,
        "xgboost",
        "xgboost",
        predict_fn=predict_fn,
        capabilities=Capabilities(
            gradients=False,
            output="labels" if kind == "labels" else "scores",
            num_classes=k,
            input_shape=[int(booster.num_features())],
            retrainable=False,
        ),
        notes=[
            f"XGBoost booster ({objective}): no gradients; not retrainable here "
            "(the model file holds no training data; params are in booster.save_config())"
        ],
    )


# --- LightGBM ------------------------------------------------------------------------------


def lightgbm_header(path: Path) -> dict[str, str] | None:
    """The ``key=value`` header of a LightGBM text model, or None if it is not one."""
    header: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline().strip()
            if first != "tree" and not first.startswith("version=v"):
                return None
            for line in f:
                line = line.strip()
                if line.startswith("Tree=") or line == "end of trees":
                    break
                if "=" in line:
                    key, value = line.split("=", 1)
                    header[key] = value
    except (OSError, UnicodeDecodeError):
        return None
    return header


def load_lightgbm(path: Path) -> LoadedModel:
    """A LightGBM classifier booster from its text model file."""
    try:
        import lightgbm as lgb
    except ImportError:
        raise ModelError(f"LightGBM models need lightgbm: {MODELS_EXTRA}") from None
    header = lightgbm_header(path)
    if header is None:
        raise ModelError(f"{path}: not a LightGBM text model (save one with booster.save_model)")
    try:
        booster = lgb.Booster(model_file=str(path))
    except lgb.basic.LightGBMError as exc:
        raise ModelError(f"{path}: LightGBM cannot read it ({exc})") from None
    objective = header.get("objective", "").split(" ")[0]
    if objective in ("multiclass", "softmax", "multiclassova", "ova"):
        k = int(header.get("num_class", booster.num_model_per_iteration()))
    elif objective in ("binary", "cross_entropy", "xentropy"):
        k = 2
    else:
        raise ModelError(
            f"{path}: objective {objective!r} is not a classifier: Bastion assesses binary, "
            "multiclass and multiclassova LightGBM models"
        )
    ova = objective in ("multiclassova", "ova")

    def predict_fn(x: torch.Tensor) -> torch.Tensor:
        p = np.asarray(booster.predict(_as_2d(x)), dtype=np.float64)
        if ova:  # one-vs-all scores do not sum to one
            p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
        return _binary_or_multi(p)

    predict: Callable[[torch.Tensor], torch.Tensor] = predict_fn
    return _record(
        path,
        "lightgbm",
        "lightgbm",
        predict_fn=predict,
        capabilities=Capabilities(
            gradients=False,
            num_classes=k,
            input_shape=[int(booster.num_feature())],
            retrainable=False,
        ),
        notes=[f"LightGBM booster ({objective}): no gradients; not retrainable here"],
    )
