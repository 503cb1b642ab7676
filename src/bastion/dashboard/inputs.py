"""A held request's samples as a reviewer sees them: an image as an inline PNG (a data URI,
rendered here with matplotlib), anything else as a feature table with the values outside
the model's input bounds, or at their very edge, marked."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np

from bastion.serve.validation import RequestSpec

EDGE_SHARE = 0.02  # a value within 2 % of the range from a bound is "at the edge"
MIN_IMAGE_PX = 112
MAX_FEATURES_SHOWN = 64


@dataclass(frozen=True)
class FeatureValue:
    name: str
    value: float
    lower: float
    upper: float
    out_of_range: bool
    at_edge: bool


@dataclass(frozen=True)
class RenderedSample:
    """One sample: ``image`` (a data URI) or ``features`` (the first few, and how many more)."""

    image: str | None = None
    image_px: int = 0
    features: tuple[FeatureValue, ...] = ()
    features_hidden: int = 0
    out_of_range: int = 0


def _png_data_uri(img: np.ndarray, lo: float, hi: float) -> tuple[str, int]:
    from matplotlib.image import imsave

    scale = max(1, -(-MIN_IMAGE_PX // max(img.shape[0], img.shape[1])))
    big = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    buf = io.BytesIO()
    if big.ndim == 2:
        imsave(buf, big, cmap="gray", vmin=lo, vmax=hi, format="png")
    else:
        imsave(buf, np.clip((big - lo) / max(hi - lo, 1e-12), 0.0, 1.0), format="png")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return uri, int(big.shape[1])


def _image(sample: np.ndarray, spec: RequestSpec) -> RenderedSample | None:
    arr = np.asarray(sample, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[0] in (1, 3):
        arr = arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 2:
        return None
    lo, hi = spec.bounds
    uri, px = _png_data_uri(arr, lo, hi)
    return RenderedSample(image=uri, image_px=px)


def _features(sample: np.ndarray, spec: RequestSpec) -> RenderedSample:
    flat = np.asarray(sample, dtype=np.float64).reshape(-1)
    n = flat.size
    lower = spec.lower if spec.lower is not None else np.full(n, spec.bounds[0])
    upper = spec.upper if spec.upper is not None else np.full(n, spec.bounds[1])
    rows: list[FeatureValue] = []
    outside = 0
    for i in range(n):
        lo, hi, v = float(lower[i]), float(upper[i]), float(flat[i])
        span = max(hi - lo, 1e-12)
        out = v < lo or v > hi
        outside += out
        edge = not out and (v - lo < EDGE_SHARE * span or hi - v < EDGE_SHARE * span)
        name = spec.feature_names[i] if spec.feature_names else f"x{i}"
        rows.append(FeatureValue(name, v, lo, hi, out, edge))
    # the marked values first, so a long row still shows what matters
    rows.sort(key=lambda r: (not r.out_of_range, not r.at_edge))
    shown = tuple(rows[:MAX_FEATURES_SHOWN])
    return RenderedSample(
        features=shown, features_hidden=max(0, n - len(shown)), out_of_range=outside
    )


def render_sample(sample: np.ndarray, spec: RequestSpec) -> RenderedSample:
    """``sample`` (one sample of the model's sample shape) for the review page."""
    if spec.modality == "image":
        image = _image(sample, spec)
        if image is not None:
            return image
    return _features(sample, spec)
