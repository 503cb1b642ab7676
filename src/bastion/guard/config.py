"""Guard configuration: which detectors, their parameters, the drift and extraction monitors
and the verdict policy. Written as YAML (``bastion guard fit --config guard.yaml``), validated
into :class:`GuardConfig` and saved beside the model in ``guard.json``.

The verdict policy (documented in docs/guard.md) maps the scores of one sample to a verdict:

* a detector *fires* when its score exceeds its calibrated threshold; it is *extreme* when
  the score exceeds ``extreme_factor`` × threshold;
* ``flag`` when at least ``flag_at`` detectors fire;
* ``hold`` when at least ``hold_at`` detectors fire, or any is extreme;
* ``block`` when at least ``block_at`` detectors are extreme (off by default);
* the client's extraction monitor adds ``extraction_action`` (PRADA or anomaly-rate alert)
  and ``volume_action`` (query-volume anomaly); the most severe verdict wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bastion.config import load_yaml_model

if TYPE_CHECKING:
    from bastion.data import Dataset

Action = Literal["allow", "flag", "hold", "block"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MahalanobisConfig(_Strict):
    """Class-conditional Gaussians with a tied covariance on hidden features (Lee et al. 2018):
    ``layers: penultimate`` (the last hidden layer only) or ``all`` (the feature ensemble)."""

    enabled: bool = True
    layers: Literal["all", "penultimate"] = "all"
    shrinkage: float = Field(0.001, ge=0.0, le=1.0)
    max_dim: int = Field(512, ge=8, description="largest per-view feature dimension")
    holdout: float = Field(0.2, gt=0.0, lt=1.0, description="share used to standardise views")
    conv_views: list[Literal["mean", "grid", "rmean", "rgrid"]] = Field(
        default_factory=lambda: ["mean", "grid", "rmean", "rgrid"],
        description="views of each conv layer: channel means / spatial grid, r = rectified",
    )
    tail: float = Field(0.99, gt=0.5, lt=1.0, description="held-out quantile that scales a view")


class ReconstructionConfig(_Strict):
    """A small fully connected autoencoder on the flattened input; score = mean (normalised)
    squared reconstruction error."""

    enabled: bool = True
    hidden: int = Field(256, ge=1)
    bottleneck: int = Field(32, ge=1)
    epochs: int = Field(150, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0.0)
    max_steps: int = Field(3000, ge=1, description="caps epochs × batches on large datasets")
    normalise: bool = Field(True, description="divide squared errors by their clean mean")
    min_var: float = Field(1e-4, gt=0.0)
    holdout: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 0


class ZScoreConfig(_Strict):
    """Per-input-dimension z-scores against the training data; score = mean squared z."""

    enabled: bool = True
    min_std: float = Field(0.01, gt=0.0)


class SqueezeConfig(_Strict):
    """Feature squeezing (Xu et al. 2018): bit-depth reduction and median smoothing."""

    enabled: bool = True
    bit_depth: int = Field(2, ge=1, le=16)
    median_size: int | Literal["auto"] | None = Field(
        "auto", description="median window; auto = 2 on images of side >= 16, else off"
    )

    @model_validator(mode="after")
    def _median(self) -> SqueezeConfig:
        if isinstance(self.median_size, int) and not 2 <= self.median_size <= 7:
            raise ValueError(f"median_size must be in [2, 7], got {self.median_size}")
        return self


class DetectorsConfig(_Strict):
    mahalanobis: MahalanobisConfig = Field(default_factory=MahalanobisConfig)
    reconstruction: ReconstructionConfig = Field(default_factory=ReconstructionConfig)
    zscore: ZScoreConfig = Field(default_factory=ZScoreConfig)
    squeeze: SqueezeConfig = Field(default_factory=SqueezeConfig)


class DriftConfig(_Strict):
    """Sliding-window KS tests on the top principal components of the penultimate features,
    Bonferroni-corrected."""

    enabled: bool = True
    components: int = Field(8, ge=1)
    window: int = Field(200, ge=10)
    min_samples: int = Field(50, ge=5)
    reference_size: int = Field(1000, ge=20)
    alpha: float = Field(0.01, gt=0.0, lt=1.0)


class ExtractionConfig(_Strict):
    """Per-client extraction monitoring: PRADA (Juuti et al. 2019), the client's rate of
    anomalous queries, and query volume."""

    enabled: bool = True
    delta: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Shapiro–Wilk threshold; None = calibrated on simulated benign clients",
    )
    delta_margin: float = Field(0.04, ge=0.0, description="margin below the benign minimum W")
    calibration_clients: int = Field(12, ge=1, description="simulated benign clients for δ")
    calibration_queries: int = Field(1000, ge=50, description="queries per simulated client")
    min_queries: int = Field(100, ge=20, description="distances needed before testing")
    test_every: int = Field(
        5, ge=1, description="run the Shapiro–Wilk test every N queries (it costs ~1 ms)"
    )
    history: int = Field(1000, ge=50, description="min distances kept per client (window)")
    growing_set: int = Field(200, ge=10, description="growing-set size kept per class")
    project_dim: int | None = Field(
        128, ge=8, description="random projection for PRADA distances on larger inputs"
    )
    sticky: bool = Field(True, description="an extraction alert stays until reset_client")
    max_clients: int = Field(1000, ge=1)
    anomaly_window: int = Field(50, ge=5)
    anomaly_rate: float | None = Field(
        0.3, gt=0.0, le=1.0, description="alert share of anomalous queries; None = off"
    )
    volume_window_s: float = Field(60.0, gt=0.0)
    max_queries_per_window: int = Field(6000, ge=1)


class SimilarityConfig(_Strict):
    """Blacklight-style near-duplicate detection of query-based attacks (Li et al. 2022),
    per client and across clients; see :mod:`bastion.guard.similarity`."""

    enabled: bool = True
    levels: int = Field(8, ge=2, le=256, description="quantisation levels per (scaled) feature")
    window: int | None = Field(
        None, ge=2, description="sliding-window length; None = D/8 clamped to [4, 20]"
    )
    top_k: int = Field(32, ge=4, le=256, description="hashes kept per query (its fingerprint)")
    match_threshold: int | None = Field(
        None, ge=1, description="shared hashes that make a near-duplicate; None = calibrated"
    )
    margin: float = Field(0.1, ge=0.0, le=1.0, description="× top_k above the benign maximum")
    min_share: float = Field(0.5, gt=0.0, le=1.0, description="lowest threshold, × top_k")
    stop_share: float = Field(
        0.02, gt=0.0, le=1.0, description="drop window hashes in more held-out queries than this"
    )
    min_hits: int = Field(2, ge=1, description="near-duplicates in the window that alert")
    window_queries: int = Field(100, ge=1, description="the client's last N queries counted")
    client_store: int = Field(64, ge=1, description="fingerprints kept per client")
    global_store: int = Field(10_000, ge=16, description="fingerprints kept across clients")
    max_clients: int = Field(1000, ge=1)
    sticky: bool = Field(True, description="an alert stays until reset_client")
    salt: int | None = Field(None, ge=0, description="hash key; None = a random secret per fit")


class CoverageConfig(_Strict):
    """Per-client coverage of the model's feature space (distinct k-means cells and the mean
    nearest-neighbour spread on the top principal components) and prediction entropy,
    against the envelope of simulated benign clients replaying held-out data; see
    :mod:`bastion.guard.coverage`."""

    enabled: bool = True
    components: int = Field(16, ge=1, description="principal components of the features")
    cells: int = Field(64, ge=2, le=4096, description="k-means cells (at most N/5 held-out)")
    min_queries: int = Field(20, ge=1, description="first query count tested")
    horizon: int = Field(
        1000, ge=10, description="last query count tested (at most the held-out rows)"
    )
    history: int = Field(256, ge=1, description="previous queries kept for the spread")
    calibration_clients: int = Field(300, ge=10, description="simulated benign clients")
    margin_cells: float = Field(2.0, ge=0.0, description="cells above the benign envelope")
    margin_spread: float = Field(0.1, ge=0.0, description="× the envelope's spread, above it")
    margin_bits: float = Field(0.05, ge=0.0, description="bits above the benign envelope")
    max_clients: int = Field(1000, ge=1)


class QueryConfig(_Strict):
    """Stateful detectors of query sequences beside PRADA (``extraction``)."""

    similarity: SimilarityConfig = Field(default_factory=SimilarityConfig)
    coverage: CoverageConfig = Field(default_factory=CoverageConfig)


class PolicyConfig(_Strict):
    flag_at: int = Field(1, ge=1)
    hold_at: int = Field(2, ge=1)
    extreme_factor: float = Field(3.0, gt=1.0)
    block_at: int | None = Field(None, ge=1)
    extraction_action: Action = "block"
    volume_action: Action = "flag"

    @model_validator(mode="after")
    def _ordered(self) -> PolicyConfig:
        if self.hold_at < self.flag_at:
            raise ValueError(f"hold_at ({self.hold_at}) must be >= flag_at ({self.flag_at})")
        return self


# -- calibration (issue 11 §2): thresholds and the drift reference on unseen rows ------------
CalibrationSplit = Literal["auto", "test", "train-non-members", "fit-holdout"]
CalibrationSource = Literal["test-split", "train-non-members", "file", "fit-holdout", "given"]


class CalibrationConfig(_Strict):
    """Where the thresholds and the drift reference are calibrated. A conformal threshold
    holds its false-positive rate only on data exchangeable with the traffic, i.e. rows the
    model never trained on. ``auto``: the train split's non-member rows when the model's
    training rows are known (``bastion train`` provenance, ``--members``) and there are
    enough of them, else ``test_fraction`` of the test split (kept out of the evaluation);
    ``test`` / ``train-non-members`` force one of those; ``fit-holdout`` is a share
    (``calibration_fraction``) of the fit data itself, which the model may have trained on."""

    split: CalibrationSplit = "auto"
    test_fraction: float = Field(
        0.5, gt=0.0, lt=1.0, description="share of the test split held out for calibration"
    )


class CalibrationRecord(BaseModel):
    """Which rows calibrated the guard, saved in its meta (``meta["calibration"]``).
    ``rows`` are the rows' numbers in their source (``Dataset.rows``) within ``data`` /
    ``split``; ``disjoint_from_training`` is True when the rows are known not to be training
    rows of the model, False when some are, None when the training rows are unknown;
    ``how_known`` says why."""

    model_config = ConfigDict(extra="forbid")

    source: CalibrationSource
    description: str
    data: str
    split: str
    n: int
    rows: list[int] = Field(default_factory=list)
    disjoint_from_training: bool | None = None
    how_known: str = ""
    excluded_training_rows: int = 0
    drift_reference: str = "the calibration rows"

    @classmethod
    def of(cls, rows: Dataset, *, split: str | None = None, **fields: Any) -> CalibrationRecord:
        """The record of the calibration rows ``rows``: their data set, split (``split``
        when given), count and row numbers; ``fields`` the rest (source, description…)."""
        return cls(
            data=rows.name,
            split=split or rows.split,
            n=len(rows),
            rows=[int(r) for r in rows.rows.tolist()],
            **fields,
        )


class GuardConfig(_Strict):
    """Everything ``fit_guard`` needs besides the model and the data."""

    target_fpr: float = Field(0.01, gt=0.0, lt=0.5)
    calibration_fraction: float = Field(
        0.3, gt=0.0, lt=1.0, description="share of the fit data held out to set thresholds"
    )
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    seed: int = 0
    detectors: DetectorsConfig = Field(default_factory=DetectorsConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    extraction: ExtractionConfig = Field(default_factory=ExtractionConfig)
    query: QueryConfig = Field(default_factory=QueryConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)


def load_guard_config(path: str | Path) -> GuardConfig:
    """Read a guard YAML file (one-line errors naming the key)."""
    return load_yaml_model(GuardConfig, path)
