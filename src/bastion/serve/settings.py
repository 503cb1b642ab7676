"""Gateway settings: ``serve.yaml`` validated by pydantic, then CLI flags on top.

Nothing is built at import. :func:`load_settings` reads the YAML (one-line errors naming
the key) and applies overrides; routes read the settings through the :func:`get_settings`
dependency, which tests replace with ``app.dependency_overrides``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import Request
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from bastion.config import read_yaml, validate
from bastion.data.loaders import DataOptions
from bastion.errors import ConfigError
from bastion.serve.output import OutputPolicy


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RateLimitSettings(_Section):
    """Token buckets per API key: ``*_per_s`` is the refill rate, ``*_burst`` the capacity."""

    enabled: bool = True
    requests_per_s: float = Field(50.0, gt=0)
    requests_burst: float = Field(100.0, ge=1)
    samples_per_s: float = Field(500.0, gt=0)
    samples_burst: float = Field(1000.0, ge=1)
    on_redis_error: Literal["deny", "allow"] = "deny"


class LimitSettings(_Section):
    """What one request may carry."""

    max_batch: int = Field(64, ge=1, le=100_000)
    max_body_bytes: int = Field(2_000_000, ge=1024)
    # slack beyond each feature's bounds, times max(1, the feature's range); also how far
    # an integer feature may be from a whole number
    bounds_tolerance: float = Field(1e-4, ge=0)


class GuardSettings(_Section):
    """Runtime detectors (``bastion guard fit`` writes them beside the model)."""

    enabled: bool = True
    required: bool = False  # refuse to start when no fitted guard is found
    # a guard that is there but unusable (or a named dir without one) stops the start-up;
    # this serves without it instead (with a warning)
    allow_unguarded: bool = False
    dir: Path | None = None  # default: the model directory, or <model file>.guard/


class DataSettings(_Section):
    """The training data whose input spec (shape, per-feature bounds, integer features)
    requests are validated against, for a model whose provenance and guard record none
    (``bastion serve --data train.csv`` plus the data flags it was read with)."""

    path: str
    root: str | None = None
    seed: int = 0
    options: DataOptions = Field(default_factory=DataOptions)


class ReviewSettings(_Section):
    escalate_after_s: float = Field(300.0, gt=0)
    check_every_s: float = Field(5.0, gt=0)


class AuditSettings(_Section):
    """The tamper-evident log every decision, review and key change goes to."""

    enabled: bool = True
    url: str | None = None  # default: the store's database (db_url)
    key_file: Path | None = None  # Ed25519 PEM (mode 0600); default $BASTION_AUDIT_KEY
    checkpoint_every: int = Field(1000, ge=0)  # sign a tree head every N entries (0: never)
    max_batch: int = Field(512, ge=1)  # group commit: most entries per transaction
    max_delay_ms: float = Field(0.0, ge=0)  # wait for company when idle (0: commit at once;
    # under load, entries arriving during a commit still form the next batch)


MIN_BLOCK_S = 0.001  # a block's shortest life (a shorter one would lapse as it is made)
MAX_BLOCK_S = 100 * 365 * 86400.0  # the longest a block may be set to last (100 years)


class BlockSettings(_Section):
    """Clients blocked by the guard's verdict: how long a block lasts (None: until removed)."""

    expire_after_s: float | None = Field(
        3600.0, ge=MIN_BLOCK_S, le=MAX_BLOCK_S, allow_inf_nan=False
    )


class AuthSettings(_Section):
    enabled: bool = True
    cache_ttl_s: float = Field(2.0, ge=0)  # how long a looked-up key is trusted in memory


class DashboardSettings(_Section):
    """The web dashboard's login sessions (server-side; the browser holds a random token)."""

    enabled: bool = True
    session_idle_s: float = Field(8 * 3600.0, gt=0, allow_inf_nan=False)  # idle expiry
    session_max_s: float = Field(24 * 3600.0, gt=0, allow_inf_nan=False)  # since login
    # the monitor page: each detector's latest scores kept (0: none), and how often the
    # drift p-value is sampled for its history while requests arrive
    score_history: int = Field(2000, ge=0, le=1_000_000)
    drift_sample_s: float = Field(10.0, ge=0.5, le=86_400, allow_inf_nan=False)
    # the trusted Ed25519 public key (PEM) the overview verifies attestations with
    attestation_key: Path | None = None


class SharedStateSettings(_Section):
    """The guard's stateful monitors shared by replicas through Redis (with ``redis_url``;
    see bastion.guard.shared): the stream's length and how long a Redis call may take."""

    enabled: bool = True
    max_entries: int = Field(50_000, ge=100)  # observations (batches) the stream keeps
    timeout_s: float = Field(2.0, gt=0, le=60, allow_inf_nan=False)


class ServeSettings(_Section):
    """Everything ``bastion serve`` needs; the YAML mirrors these sections."""

    model_dir: Path | None = Field(
        None,
        validation_alias=AliasChoices("model_dir", "model"),
        description="the model: a directory, or a file of any form `bastion assess` reads",
    )
    entry_point: str | None = None  # module:function building the architecture (runs it)
    weights: Path | None = None  # weights for entry_point
    onnx_mode: Literal["auto", "torch", "runtime"] = "auto"
    trust: list[str] = Field(default_factory=list)  # skops types to trust when loading
    data: DataSettings | None = None  # where the input spec comes from, failing the others
    db_url: str | None = None
    redis_url: str | None = None
    # the namespace of this deployment's Redis keys (rate limits, shared guard state)
    redis_prefix: str = Field("bastion", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    shared_state: SharedStateSettings = Field(default_factory=SharedStateSettings)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    torch_threads: int = Field(1, ge=1, le=256)
    # gateway processes on one socket (bastion.serve.workers); > 1 needs redis_url
    workers: int = Field(1, ge=1, le=64)
    batch_max_samples: int = Field(64, ge=1)  # micro-batching: most samples in one pass
    inline_max_samples: int = Field(8, ge=0)  # passes up to this run on the event loop
    # a pass waits at most this long for predict requests already in but not yet queued
    batch_wait_ms: float = Field(2.0, ge=0.0, le=100.0)
    recent_decisions: int = Field(200, ge=0)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    reviews: ReviewSettings = Field(default_factory=ReviewSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    blocks: BlockSettings = Field(default_factory=BlockSettings)
    output: OutputPolicy = Field(default_factory=OutputPolicy)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    risk_register: Path | None = None  # register JSON (`bastion risk init`) for /v1/risks

    @model_validator(mode="after")
    def _tls_pair(self) -> ServeSettings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together: give both or neither")
        if self.rate_limit.enabled and self.rate_limit.samples_burst < self.limits.max_batch:
            raise ValueError(
                f"rate_limit.samples_burst ({self.rate_limit.samples_burst:g}) is below "
                f"limits.max_batch ({self.limits.max_batch}): a full batch could never pass"
            )
        return self


def load_settings(config: str | Path | None = None, **overrides: Any) -> ServeSettings:
    """Settings from ``config`` (YAML) with ``overrides`` (CLI flags; None means unset)."""
    data: dict[str, Any] = {}
    if config is not None:
        raw = read_yaml(config)
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"{config}: expected a mapping of settings, got {type(raw).__name__}")
        data = dict(raw or {})
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
    settings = validate(ServeSettings, data, str(config) if config else "serve settings")
    for path in (settings.ssl_certfile, settings.ssl_keyfile):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"TLS file not found: {path}")
    return settings


def get_settings(request: Request) -> ServeSettings:
    """Dependency: the settings the app was created with (tests override it)."""
    return request.app.state.settings
