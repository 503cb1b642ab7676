"""The adversarial examples an evasion finding kept (:mod:`bastion.assess.examples`), as the
report shows them:

- images: one small PNG per example with the original, the adversarial example and the
  change (amplified to be visible), titled with the label and the prediction change;
- tabular data: the features the attack changed most, as a share of each feature's range,
  averaged over the kept examples, beside each example's prediction change.

The examples file is read only from inside the run directory (a report.json naming a path
outside it, or a file that does not validate, gives no gallery and a warning).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from pydantic import ValidationError

from bastion.assess.examples import ARTIFACT, Example, ExampleSet
from bastion.assess.schema import Report
from bastion.report.plots import to_data_uri

log = logging.getLogger(__name__)
TOP_FEATURES = 8
MAX_BYTES = 5_000_000


@dataclass(frozen=True)
class ImageExample:
    uri: str
    label: str
    before: str
    after: str


@dataclass(frozen=True)
class FeatureChange:
    name: str
    mean_change: float  # mean |x_adv − x| as a share of the feature's range
    max_change: float


@dataclass(frozen=True)
class Gallery:
    attack: str
    eps: float
    norm: str
    eps_mode: str
    modality: str
    images: list[ImageExample] = field(default_factory=list)
    features: list[FeatureChange] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)  # "label → prediction" per example

    @property
    def budget(self) -> str:
        norm = {"inf": "L∞", "2": "L2"}.get(self.norm, self.norm)
        return f"ε={self.eps:g} {norm} ({self.eps_mode})"


def load_examples(report: Report, run_dir: Path) -> ExampleSet | None:
    """The first kept example set a finding names, read from inside ``run_dir``."""
    root = Path(run_dir).resolve()
    for f in report.findings:
        rel = f.artifacts.get(ARTIFACT)
        if not rel:
            continue
        path = (root / rel).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            log.warning("examples %s: not a file inside the run directory: no gallery", rel)
            return None
        if path.stat().st_size > MAX_BYTES:
            log.warning("examples %s: larger than %d bytes: no gallery", rel, MAX_BYTES)
            return None
        try:
            return ExampleSet.model_validate_json(path.read_text())
        except (ValidationError, UnicodeDecodeError):
            log.warning("examples %s: not an example set: no gallery", rel)
            return None
    return None


def _name(classes: list[str] | None, k: int) -> str:
    return classes[k] if classes and 0 <= k < len(classes) else str(k)


def _as_hwc(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[0] in (1, 3):
        arr = np.transpose(arr, (1, 2, 0))
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return arr


def _scaled(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((arr - lo) / (hi - lo), 0, 1) if hi > lo else arr * 0


def _image_uri(e: Example, s: ExampleSet, title: str) -> str:
    shape = s.shape
    x = np.asarray(e.x, dtype=np.float32).reshape(shape)
    xa = np.asarray(e.x_adv, dtype=np.float32).reshape(shape)
    lo = min(s.lower) if s.lower else float(min(x.min(), xa.min()))
    hi = max(s.upper) if s.upper else float(max(x.max(), xa.max()))
    diff = xa - x
    amp = float(np.abs(diff).max()) or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(4.2, 1.7))
    gray = "gray" if _as_hwc(x).ndim == 2 else None
    panels = [
        (_scaled(_as_hwc(x), lo, hi), "original", gray),
        (_scaled(_as_hwc(xa), lo, hi), "adversarial", gray),
        (_as_hwc(diff) / (2 * amp) + 0.5, "change (amplified)", gray),
    ]
    for ax, (img, name, cmap) in zip(axes, panels, strict=True):
        ax.imshow(np.clip(img, 0, 1), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    return to_data_uri(fig)


def _feature_changes(s: ExampleSet) -> list[FeatureChange]:
    x = np.asarray([e.x for e in s.examples], dtype=np.float64)
    xa = np.asarray([e.x_adv for e in s.examples], dtype=np.float64)
    d = x.shape[1]
    lo = np.asarray(s.lower if len(s.lower) == d else s.lower * d, dtype=np.float64)
    hi = np.asarray(s.upper if len(s.upper) == d else s.upper * d, dtype=np.float64)
    width = np.where(hi > lo, hi - lo, 1.0)
    rel = np.abs(xa - x) / width
    mean, peak = rel.mean(0), rel.max(0)
    names = s.feature_names if s.feature_names and len(s.feature_names) == d else None
    order = [i for i in np.argsort(-mean) if mean[i] > 0][:TOP_FEATURES]
    return [
        FeatureChange(names[i] if names else f"feature {i}", float(mean[i]), float(peak[i]))
        for i in order
    ]


def build_gallery(report: Report, run_dir: Path | None) -> Gallery | None:
    """The gallery of the run's kept examples, or None when there are none."""
    if run_dir is None:
        return None
    s = load_examples(report, run_dir)
    if s is None or not s.examples:
        return None
    changes = [
        f"true {_name(s.class_names, e.label)}: predicted {_name(s.class_names, e.clean_prediction)}"
        f" → {_name(s.class_names, e.adversarial_prediction)}"
        for e in s.examples
    ]
    g = Gallery(s.attack, s.eps, s.norm, s.eps_mode, s.modality, changes=changes)
    if s.modality == "image":
        for e, text in zip(s.examples, changes, strict=True):
            before = _name(s.class_names, e.clean_prediction)
            after = _name(s.class_names, e.adversarial_prediction)
            g.images.append(ImageExample(_image_uri(e, s, text), text, before, after))
    else:
        g.features.extend(_feature_changes(s))
    return g
