"""Typed records of an assessment: the threat model, findings and the report.json contract.

report.json (see DESIGN.md): ``model`` (name, sha256), ``dataset`` (name, sha256, n),
``threat_model``, ``findings[]`` (probe, attack, params, metrics, severity 0–10, seconds),
``score`` (0–100). Extra fields are additive; ``schema_version`` changes on breaking edits.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from bastion import __version__

SCHEMA_VERSION = "1.0"
Access = Literal["white_box", "scores", "labels"]
MAX_BUDGET = 10**9  # more points, steps, queries or models than any assessment can spend
Count = Annotated[int, Field(ge=1, le=MAX_BUDGET)]


def attack_names() -> list[str]:
    """The white-box evasion attacks a threat model may name (the attack registry)."""
    from bastion.attacks.evasion import ATTACKS

    return sorted(ATTACKS)


def probe_names() -> list[str]:
    """The probes a threat model may choose or skip (the probe registry)."""
    from bastion.assess.registry import PROBES

    return list(PROBES)


def _known(names: list[str], valid: list[str], what: str) -> list[str]:
    unknown = [n for n in names if n not in valid]
    if unknown:
        listed = ", ".join(repr(n) for n in unknown)
        raise ValueError(f"unknown {what} {listed}: choose from {', '.join(valid)}")
    return names


class Budgets(BaseModel):
    """How much work an attacker (and the assessment) may spend."""

    model_config = ConfigDict(extra="forbid")

    n_eval: Count = Field(500, description="test points attacked per evasion finding")
    pgd_steps: Count = 20
    apgd_steps: Count = Field(100, description="iterations per APGD run (AutoAttack: 100)")
    restarts: Count = 1
    queries: Count = Field(1000, description="query budget per point for black-box evasion")
    n_blackbox: Count = Field(100, description="test points attacked by black-box evasion")
    extraction_queries: list[Count] = Field(
        default_factory=lambda: [100, 1000, 10000], min_length=1
    )
    shadow_models: Count = Field(8, description="LiRA shadow models")
    reference_models: Count = Field(2, description="RMIA reference models (offline)")


class ThreatModel(BaseModel):
    """What the attacker can see and do; decides which probes run. Every name (attacks,
    curve attack, probes, skipped probes) is checked against its registry when the threat
    model is read, so an unknown one is refused with the valid ones listed, in a YAML file
    as on the command line or through :func:`bastion.assess`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    access: Access = "white_box"
    norm: Literal["inf", "2"] = "inf"
    eps: list[float] = Field(default_factory=lambda: [0.1])
    eps_mode: Literal["absolute", "relative"] | None = Field(
        None,
        description="absolute (input units) or relative to each feature's range; default: "
        "relative for tabular data, absolute for images",
    )
    min_clean_accuracy: float | None = Field(
        None,
        ge=0,
        le=1,
        description="refuse to assess a model whose clean accuracy is below this (default: "
        "the majority-class rate + 0.05)",
    )
    curve_eps: list[float] | None = Field(
        None, description="ε values for the robustness curve (default: 10 points up to 2·max ε)"
    )
    curve_attack: str = Field(
        "apgd-ce",
        description="attack for the robustness curve (one APGD-CE run per ε costs a tenth of the ensemble)",
    )
    attacks: list[str] = Field(
        default_factory=lambda: ["fgsm", "pgd", "ensemble"],
        description="white-box evasion attacks for the evasion probe",
    )
    budgets: Budgets = Field(default_factory=Budgets)
    can_poison: bool = Field(False, description="attacker can contribute training data")
    poison_rate: float = Field(0.05, gt=0, lt=1)
    probes: list[str] | None = Field(
        None, description="run only these probes (default: all that fit)"
    )
    skip: list[str] = Field(default_factory=list, description="probes not to run")

    @field_validator("norm", mode="before")
    @classmethod
    def _norm(cls, v: object) -> object:
        return str(v).lower().lstrip("l") if isinstance(v, (str, int)) else v

    @field_validator("curve_eps")
    @classmethod
    def _curve_eps(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not v:
            raise ValueError("give at least one curve ε (or leave curve_eps out)")
        if v is not None and any(not math.isfinite(e) or e < 0 for e in v):
            raise ValueError("curve ε values must be finite numbers >= 0")
        return v

    @field_validator("attacks")
    @classmethod
    def _attacks(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"give at least one attack: choose from {', '.join(attack_names())}")
        return _known(v, attack_names(), "attack(s)")

    @field_validator("curve_attack")
    @classmethod
    def _curve_attack(cls, v: str) -> str:
        return _known([v], attack_names(), "curve attack")[0]

    @field_validator("probes", "skip")
    @classmethod
    def _probes(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _known(v, probe_names(), "probe(s)")

    @field_validator("eps")
    @classmethod
    def _eps(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one ε")
        if any(not math.isfinite(e) for e in v):
            raise ValueError("ε values must be finite numbers")
        if any(e < 0 for e in v):
            raise ValueError("ε values must be >= 0")
        return sorted(v)


class LLMThreatModel(BaseModel):
    """What an LLM-application assessment assumed (``bastion llm assess``): a black-box
    attacker who sends chat messages to the application and reads its replies (text and
    tool calls), and who can plant text in what the application retrieves (documents) and
    in tool results when those probes ran; no weights, logits or system prompt."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["llm_application"]
    access: Literal["black_box_chat"] = "black_box_chat"
    target: str = Field(description="the target's form: openai-chat or hf-causal-lm")
    plants_in: list[str] = Field(
        default_factory=list, description="channels the attacker writes into besides chat"
    )
    probes: list[str] = Field(default_factory=list, description="the probes that ran")
    attempts: dict[str, int] = Field(default_factory=dict, description="attempts sent per probe")
    mutations_per_template: int = Field(ge=1, description="the profile's `attempts`")
    seed: int = Field(ge=0)
    oracles: dict[str, str] = Field(default_factory=dict, description="oracle kind per probe")
    judge: str | None = Field(None, description="the judge endpoint, when one graded outputs")
    temperature: float = 0.0
    max_tokens: int | None = None


def _threat_kind(v: object) -> str:
    kind = v.get("kind") if isinstance(v, dict) else getattr(v, "kind", None)
    return "LLMThreatModel" if kind == "llm_application" else "ThreatModel"


# a classifier's threat model, or an LLM application's (``kind: llm_application``); the
# tags are the class names so that validation errors read ``threat_model.eps: …``
AnyThreatModel = Annotated[
    Annotated[ThreatModel, Tag("ThreatModel")] | Annotated[LLMThreatModel, Tag("LLMThreatModel")],
    Discriminator(_threat_kind),
]


class Finding(BaseModel):
    """One probe result: what was run, what it measured, how bad it is. Non-finite metric
    values (e.g. an ε never reached) are written as the JSON strings "Infinity"/"NaN"."""

    model_config = ConfigDict(ser_json_inf_nan="strings")
    probe: str
    attack: str
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    severity: float = Field(ge=0, le=10)
    seconds: float = 0.0
    series: dict[str, list[float]] = Field(
        default_factory=dict, description="curves for plots (e.g. eps/robust_accuracy, fpr/tpr)"
    )
    artifacts: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    @property
    def key(self) -> str:
        """Identity used for resuming: probe, attack and parameters."""
        items = ",".join(f"{k}={self.params[k]}" for k in sorted(self.params))
        return f"{self.probe}/{self.attack}/{items}"


class Skipped(BaseModel):
    """A probe that did not run. ``not_applicable``: it cannot apply to this model or data
    (the reason says why); ``not_measured``: it could, but what it needs is missing (e.g.
    the model's training members); ``excluded``: the threat model left it out. None of them
    is evidence: the score, the gate and the risk register treat them as not measured."""

    probe: str
    reason: str
    status: Literal["not_applicable", "not_measured", "excluded"] = "not_applicable"


class SanityWarning(BaseModel):
    """A gradient-masking or evaluation-quality warning (Carlini et al. 2019)."""

    check: str
    message: str
    probe: str = "evasion"


class ModelRef(BaseModel):
    name: str
    sha256: str
    path: str | None = None
    spec: dict[str, Any] | None = None
    form: str = "model-dir"
    capabilities: dict[str, Any] = Field(default_factory=dict)
    artifacts: list[dict[str, str]] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class DatasetRef(BaseModel):
    name: str
    sha256: str
    n: int
    split: str = "test"
    train_sha256: str | None = None
    manifest: dict[str, Any] = Field(default_factory=dict)


class Report(BaseModel):
    """The assessment report; serialized as report.json."""

    schema_version: str = SCHEMA_VERSION
    bastion_version: str = __version__
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    model: ModelRef
    dataset: DatasetRef
    threat_model: AnyThreatModel
    findings: list[Finding] = Field(default_factory=list)
    skipped: list[Skipped] = Field(default_factory=list)
    warnings: list[SanityWarning] = Field(default_factory=list)
    score: float = Field(0.0, ge=0, le=100)
    seconds: float = 0.0
    device: str = "cpu"
    resumed: int = Field(0, ge=0, description="findings taken from a killed run's checkpoint")

    def metric(self, name: str, **params: Any) -> list[float]:
        """Values of ``metrics[name]`` over findings whose params/attack/probe match ``params``."""
        out = []
        for f in self.findings:
            fields = {"probe": f.probe, "attack": f.attack, **f.params}
            if name in f.metrics and all(_same(fields.get(k), v) for k, v in params.items()):
                out.append(f.metrics[name])
        return out


def _same(a: object, b: object) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) < 1e-9
    return str(a) == str(b)
