"""Training-data sanitization: find suspected poisoned samples from a model's activations.

- Spectral signatures (Tran, Li and Madry 2018, "Spectral Signatures in Backdoor Attacks"):
  per class, centre the learned representations, take the top singular vector and score each
  sample by its squared projection on it; a backdoor leaves a strong direction, so poisons
  score high. The ``removal_factor · expected_rate`` highest-scoring share of each class is
  flagged (the paper removes 1.5 ε).
- Activation clustering (Chen et al. 2018, "Detecting Backdoor Attacks on Deep Neural
  Networks by Activation Clustering"): per class, reduce the last hidden layer's
  activations to a few dimensions and split them into two clusters; a class whose smaller
  cluster is small (relative size ≤ ``size_threshold``) and well separated (silhouette ≥
  ``min_silhouette``) is deemed poisoned and that cluster flagged.

Both are estimators (scikit-learn habit): parameters in ``__init__``, ``fit(features,
labels)`` returns self, learned attributes end in ``_`` (``scores_``, ``flagged_``), and
``score(features, labels)`` scores new samples with what was learned.

What the detectors read (:func:`detector_features`): the last hidden layer of a torch model
that exposes one (an ``nn.Sequential`` ending in ``nn.Linear``: zoo models and most
entry-point MLPs/CNNs); otherwise, and for gradient-free models (trees, boosting), the inputs
themselves, each feature scaled by its range in the input spec (:func:`input_features`), so
a feature measured in thousands does not drown the others.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from bastion.data.dataset import Dataset
from bastion.errors import ConfigError, ModelError, NotFittedError
from bastion.models.predict import predict_labels as batched_labels
from bastion.models.zoo import penultimate

log = logging.getLogger(__name__)


def _check(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if features.ndim != 2:
        raise ConfigError(f"features must have shape (N, D), got {tuple(features.shape)}")
    if labels.ndim != 1 or len(labels) != len(features):
        raise ConfigError(f"labels must have shape ({len(features)},), got {tuple(labels.shape)}")
    return features.detach().float().cpu()


class SpectralSignatures:
    """Tran et al. 2018: flag the ``removal_factor · expected_rate`` share of each class with
    the largest squared projection on the class's top singular direction."""

    def __init__(self, *, expected_rate: float = 0.05, removal_factor: float = 1.5) -> None:
        self.expected_rate = expected_rate
        self.removal_factor = removal_factor

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> SpectralSignatures:
        if not 0 < self.expected_rate < 1:
            raise ConfigError(f"expected_rate must be in (0, 1), got {self.expected_rate}")
        if self.removal_factor <= 0:
            raise ConfigError(f"removal_factor must be > 0, got {self.removal_factor}")
        feats = _check(features, labels)
        labels = labels.cpu()
        self.means_: dict[int, torch.Tensor] = {}
        self.directions_: dict[int, torch.Tensor] = {}
        self.thresholds_: dict[int, float] = {}
        self.scores_ = torch.zeros(len(feats))
        self.flagged_ = torch.zeros(len(feats), dtype=torch.bool)
        share = min(1.0, self.removal_factor * self.expected_rate)
        for c in labels.unique().tolist():
            idx = (labels == c).nonzero().flatten()
            centred = feats[idx] - feats[idx].mean(0)
            self.means_[c] = feats[idx].mean(0)
            if len(idx) < 2:
                self.directions_[c] = torch.zeros(feats.shape[1])
                self.thresholds_[c] = math.inf
                continue
            _, _, vh = torch.linalg.svd(centred, full_matrices=False)
            self.directions_[c] = vh[0]
            scores = (centred @ vh[0]) ** 2
            self.scores_[idx] = scores
            k = min(len(idx), math.ceil(share * len(idx) - 1e-9))
            top = scores.topk(k).indices
            self.flagged_[idx[top]] = True
            self.thresholds_[c] = float(scores[top].min())
        return self

    def score(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Outlier scores of new samples against each class's fitted direction."""
        if not hasattr(self, "directions_"):
            raise NotFittedError(self)
        feats = _check(features, labels)
        out = torch.zeros(len(feats))
        for c, v in self.directions_.items():
            m = labels.cpu() == c
            out[m] = ((feats[m] - self.means_[c]) @ v) ** 2
        return out


class ActivationClustering:
    """Chen et al. 2018: per class, reduce activations to ``n_components`` dimensions (the
    top principal directions) and split them into two clusters (k-means). The smaller
    cluster of each class is a candidate; ``flagged_`` holds the candidates of classes where
    it is small (≤ ``size_threshold``) and well separated (silhouette ≥ ``min_silhouette``),
    the paper's relative-size analysis. :func:`exclusionary_reclassification` is the
    paper's stronger test, and :meth:`flag_classes` removes a margin around the confirmed
    clusters (Tran et al.'s 1.5 × the estimated poisoned share)."""

    def __init__(
        self,
        *,
        n_components: int = 10,
        size_threshold: float = 0.35,
        min_silhouette: float = 0.15,
        seed: int = 0,
    ) -> None:
        self.n_components = n_components
        self.size_threshold = size_threshold
        self.min_silhouette = min_silhouette
        self.seed = seed

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> ActivationClustering:
        from sklearn.cluster import KMeans
        from sklearn.metrics import silhouette_score

        if self.n_components < 1:
            raise ConfigError(f"n_components must be >= 1, got {self.n_components}")
        if not 0 < self.size_threshold < 0.5:
            raise ConfigError(f"size_threshold must be in (0, 0.5), got {self.size_threshold}")
        feats = _check(features, labels)
        labels = labels.cpu()
        self.labels_ = labels
        self.projections_: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.centroids_: dict[int, torch.Tensor] = {}
        self.small_: dict[int, int] = {}
        self.relative_sizes_: dict[int, torch.Tensor] = {}
        self.silhouettes_: dict[int, float] = {}
        self.candidates_: dict[int, torch.Tensor] = {}
        self.scores_ = torch.zeros(len(feats))
        self.flagged_ = torch.zeros(len(feats), dtype=torch.bool)
        for c in labels.unique().tolist():
            idx = (labels == c).nonzero().flatten()
            if len(idx) < 4:
                continue
            mean = feats[idx].mean(0)
            k = min(self.n_components, len(idx) - 1, feats.shape[1])
            _, _, vh = torch.linalg.svd(feats[idx] - mean, full_matrices=False)
            basis = vh[:k].T
            reduced = (feats[idx] - mean) @ basis
            km = KMeans(n_clusters=2, n_init=10, random_state=self.seed).fit(reduced.numpy())
            assign = torch.as_tensor(km.labels_, dtype=torch.long)
            sizes = torch.bincount(assign, minlength=2).float() / len(idx)
            small = int(sizes.argmin())
            centroids = torch.as_tensor(km.cluster_centers_, dtype=torch.float32)
            dist = torch.cdist(reduced, centroids)
            sil = float(silhouette_score(reduced.numpy(), km.labels_)) if sizes.min() > 0 else 0.0
            self.projections_[c] = (mean, basis)
            self.centroids_[c], self.small_[c] = centroids, small
            self.relative_sizes_[c], self.silhouettes_[c] = sizes, sil
            # margin towards the small cluster: > 0 inside it, larger = deeper inside
            self.scores_[idx] = dist[:, 1 - small] - dist[:, small]
            if sizes[small] <= self.size_threshold:
                self.candidates_[c] = idx[assign == small]
                if sil >= self.min_silhouette:
                    self.flagged_[idx[assign == small]] = True
        return self

    def flag_classes(self, classes: list[int], *, removal_factor: float = 1.5) -> torch.Tensor:
        """Mask flagging, in each of ``classes``, the ``removal_factor × (relative size of its
        small cluster)`` share of the class deepest towards that cluster: a margin so that
        poisons sitting near the cluster's edge go too."""
        if not hasattr(self, "centroids_"):
            raise NotFittedError(self)
        flagged = torch.zeros(len(self.labels_), dtype=torch.bool)
        for c in classes:
            if c not in self.relative_sizes_:
                continue
            idx = (self.labels_ == c).nonzero().flatten()
            share = min(1.0, removal_factor * float(self.relative_sizes_[c].min()))
            k = min(len(idx), math.ceil(share * len(idx) - 1e-9))
            flagged[idx[self.scores_[idx].topk(k).indices]] = True
        return flagged

    def score(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Margin of new samples towards the small cluster of their class (higher: more
        suspect; > 0 means inside it)."""
        if not hasattr(self, "centroids_"):
            raise NotFittedError(self)
        feats = _check(features, labels)
        out = torch.zeros(len(feats))
        for c, (mean, basis) in self.projections_.items():
            m = labels.cpu() == c
            if m.any():
                dist = torch.cdist((feats[m] - mean) @ basis, self.centroids_[c])
                out[m] = dist[:, 1 - self.small_[c]] - dist[:, self.small_[c]]
        return out


#: Trains a fresh model on a Dataset; returns a torch module (logits) or a function mapping
#: inputs to predicted labels (a gradient-free model).
Predictor = nn.Module | Callable[[torch.Tensor], torch.Tensor]
TrainFn = Callable[[Dataset], Predictor]


@torch.no_grad()
def predict_labels(model: Predictor, x: torch.Tensor) -> torch.Tensor:
    """Labels (N,) from a torch module (argmax of its logits) or a labels function."""
    if isinstance(model, nn.Module):
        param = next(model.parameters(), None)
        device = param.device if param is not None else x.device
        return batched_labels(model, x.to(device)).cpu()
    return torch.as_tensor(model(x)).long().cpu()


def exclusionary_reclassification(
    data: Dataset, candidates: dict[int, torch.Tensor], train_fn: TrainFn
) -> dict[int, float]:
    """Chen et al. 2018, §4 "exclusionary reclassification": train a model without the
    candidate clusters, then classify them. A legitimate cluster is mostly classified as its
    own label; a poisoned one (relabelled samples of other classes) as its source classes.
    Returns, per class, the share of its candidate cluster classified as its label. One
    model is trained without all candidates at once (cheaper than one per cluster)."""
    if not candidates:
        return {}
    keep = torch.ones(len(data), dtype=torch.bool)
    for idx in candidates.values():
        keep[idx] = False
    model = train_fn(data.subset(keep.nonzero().flatten(), split="sanitize-reclassify"))
    agreement = {}
    for c, idx in candidates.items():
        pred = predict_labels(model, data.x[idx])
        agreement[c] = float((pred == c).float().mean())
    return agreement


@torch.no_grad()
def extract_features(
    model: nn.Module, x: torch.Tensor, *, batch_size: int = 512, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Last-hidden-layer activations of a zoo model (what both detectors read)."""
    body = penultimate(model)
    was = model.training
    model.eval()
    out = torch.cat(
        [
            body(x[i : i + batch_size].to(device)).flatten(1).cpu()
            for i in range(0, len(x), batch_size)
        ]
    )
    model.train(was)
    return out


def input_features(data: Dataset) -> torch.Tensor:
    """The inputs as detector features (N, D): each feature mapped to [0, 1] by its range in
    the input spec (features of zero range to 0); images in [0, 1] are their pixels."""
    from bastion.assess.space import AttackSpace

    return AttackSpace.build(data.input_spec, "relative").to_z(data.x).flatten(1).float()


def detector_features(
    model: nn.Module | None, data: Dataset, *, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, str]:
    """What the detectors read and where it came from: ``("penultimate")`` activations of a
    model that exposes its last hidden layer, else ``("input")`` range-scaled inputs."""
    if model is not None:
        try:
            penultimate(model)
        except ModelError:
            pass
        else:
            return extract_features(model, data.x, device=device), "penultimate"
    return input_features(data), "input"


@dataclass(frozen=True)
class FlagQuality:
    """Precision and recall of the flags against the known poisoned indices."""

    precision: float
    recall: float
    true_positives: int
    n_flagged: int
    n_poisoned: int


def flag_quality(flagged: torch.Tensor, poisoned: torch.Tensor) -> FlagQuality:
    """``flagged``: boolean mask over the dataset; ``poisoned``: indices of the true poisons."""
    truth = torch.zeros(len(flagged), dtype=torch.bool)
    truth[poisoned.long().cpu()] = True
    tp = int((flagged.cpu() & truth).sum())
    nf, np_ = int(flagged.sum()), int(truth.sum())
    return FlagQuality(
        precision=tp / nf if nf else (1.0 if np_ == 0 else 0.0),
        recall=tp / np_ if np_ else 1.0,
        true_positives=tp,
        n_flagged=nf,
        n_poisoned=np_,
    )


METHODS = ("spectral", "activation", "both")


@dataclass
class SanitizeResult:
    """What sanitization kept and dropped; ``quality`` only when ground truth was given.
    ``reclassification`` maps each candidate class to the share of its suspect cluster a
    model trained without the suspects still gives its label (Chen et al.'s test)."""

    kept: Dataset
    flagged: torch.Tensor
    method: str
    per_class: dict[int, int] = field(default_factory=dict)
    poisoned_classes: list[int] = field(default_factory=list)
    reclassification: dict[int, float] = field(default_factory=dict)
    quality: FlagQuality | None = None
    features: str = "penultimate"  # what the detectors read: penultimate | input

    @property
    def n_flagged(self) -> int:
        return int(self.flagged.sum())


def sanitize(
    model: nn.Module | None,
    data: Dataset,
    *,
    method: str = "activation",
    expected_rate: float = 0.05,
    removal_factor: float = 1.5,
    margin_factor: float = 2.0,
    n_components: int = 10,
    size_threshold: float = 0.35,
    min_silhouette: float = 0.15,
    reclassify_threshold: float = 0.5,
    train_fn: TrainFn | None = None,
    poisoned: torch.Tensor | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    features: torch.Tensor | None = None,
) -> SanitizeResult:
    """Flag suspected poisons of ``data`` from the activations of ``model`` (a model trained
    on ``data``) and drop them. The detectors read ``features`` when given, else
    :func:`detector_features` (``model`` may be None: the range-scaled inputs).

    - ``activation``: activation clustering; with ``train_fn`` (trains a fresh model on a
      Dataset) the candidate clusters go through exclusionary reclassification, and in each
      class whose cluster keeps its label less than ``reclassify_threshold`` of the time the
      ``margin_factor × cluster share`` most suspect samples are flagged (the cluster can
      under-count the poisons; the ranking is what matters). Without
      ``train_fn`` the relative-size/silhouette analysis decides.
    - ``spectral``: spectral signatures, removing ``removal_factor × expected_rate`` of each
      class (``expected_rate``: an upper bound on the poisoned share *within* a class).
    - ``both``: the union of the two.

    With the true ``poisoned`` indices (e.g. from the BadNets probe) the result holds the
    flags' precision and recall."""
    if method not in METHODS:
        raise ConfigError(f"unknown sanitize method {method!r}: choose from {', '.join(METHODS)}")
    source = "given"
    if features is None:
        features, source = detector_features(model, data, device=device)
    feats = features
    flagged = torch.zeros(len(data), dtype=torch.bool)
    poisoned_classes: list[int] = []
    agreement: dict[int, float] = {}
    if method in ("spectral", "both"):
        ss = SpectralSignatures(expected_rate=expected_rate, removal_factor=removal_factor)
        flagged |= ss.fit(feats, data.y).flagged_
    if method in ("activation", "both"):
        ac = ActivationClustering(
            n_components=n_components,
            size_threshold=size_threshold,
            min_silhouette=min_silhouette,
            seed=seed,
        ).fit(feats, data.y)
        if train_fn is not None:
            agreement = exclusionary_reclassification(data, ac.candidates_, train_fn)
            poisoned_classes = sorted(c for c, a in agreement.items() if a < reclassify_threshold)
            flagged |= ac.flag_classes(poisoned_classes, removal_factor=margin_factor)
        else:
            flagged |= ac.flagged_
            poisoned_classes = sorted(int(c) for c in data.y[ac.flagged_].unique().tolist())
    counts = torch.bincount(data.y[flagged], minlength=data.num_classes).tolist()
    quality = flag_quality(flagged, poisoned) if poisoned is not None else None
    keep = (~flagged).nonzero().flatten()
    log.info("sanitize (%s): dropped %d of %d samples", method, int(flagged.sum()), len(data))
    return SanitizeResult(
        kept=data.subset(keep),
        flagged=flagged,
        method=method,
        per_class={c: k for c, k in enumerate(counts) if k},
        poisoned_classes=poisoned_classes,
        reclassification=agreement,
        quality=quality,
        features=source,
    )
