"""The threat catalogue: threats as data (``catalogue.yaml`` in this package), validated.

A catalogue entry says where a threat lives in the life cycle, which MITRE ATLAS
techniques it covers, which NIST AI RMF subcategories it serves, which controls treat it,
which Bastion probe measures it and how the system profile sets its initial scores.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bastion.config import validate
from bastion.errors import ConfigError
from bastion.risk.system import FACTOR_VALUES, Layer

Mapping = Literal["rate", "backdoor", "membership", "fidelity", "drop"]
ATLAS_ID = re.compile(r"^AML\.(T|M)\d{4}(\.\d{3})?$")


class Control(BaseModel):
    """A treatment: an ATLAS mitigation id (AML.Mxxxx) or a ``bastion:`` control."""

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    state: Literal["planned", "implemented", "verified"] = "planned"


class ScoreRule(BaseModel):
    """A 1–10 score from the system profile: the highest matching entry, else ``default``."""

    model_config = ConfigDict(extra="forbid")

    default: int = Field(ge=1, le=10)
    by: dict[str, dict[str, int]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _flatten(cls, data: object) -> object:
        # YAML writes `{default: 5, exposure: {public_api: 6}}`; gather factor keys under `by`.
        if isinstance(data, dict) and "by" not in data:
            data = dict(data)
            by = {k: data.pop(k) for k in list(data) if k != "default"}
            data["by"] = by
        return data

    @field_validator("by")
    @classmethod
    def _known(cls, by: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        for factor, table in by.items():
            if factor not in FACTOR_VALUES:
                raise ValueError(
                    f"unknown profile factor {factor!r}: use one of {', '.join(FACTOR_VALUES)}"
                )
            for value, score in table.items():
                if str(value) not in FACTOR_VALUES[factor]:
                    raise ValueError(
                        f"{factor}: unknown value {value!r}: use one of "
                        f"{', '.join(FACTOR_VALUES[factor])}"
                    )
                if not 1 <= score <= 10:
                    raise ValueError(f"{factor}.{value}: scores are 1–10, got {score}")
        return {f: {str(v): s for v, s in t.items()} for f, t in by.items()}

    def score(self, factors: dict[str, list[str]]) -> tuple[int, str]:
        """The score for a profile and the reason (which factor set it)."""
        best: tuple[int, str] | None = None
        for factor, table in self.by.items():
            for value in factors.get(factor, []):
                if value in table and (best is None or table[value] > best[0]):
                    best = (table[value], f"{factor}={value}")
        return best if best is not None else (self.default, "catalogue default")


class EvidenceSpec(BaseModel):
    """Which report metric sets a threat's occurrence (see ``bastion.risk.evidence``)."""

    model_config = ConfigDict(extra="forbid")

    probe: str
    metric: str
    mapping: Mapping
    attack: str | None = None


class Threat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Z]{2,5}-\d{2}$")
    title: str
    description: str = ""
    layer: Layer
    atlas: list[str] = Field(min_length=1)
    nist_ai_rmf: list[str] = Field(default_factory=list)
    controls: list[Control] = Field(default_factory=list)
    probe: str | None = None
    applies_when: dict[str, list[str]] = Field(default_factory=dict)
    severity: ScoreRule
    occurrence: ScoreRule
    detection: ScoreRule
    evidence: EvidenceSpec | None = None
    detectors: list[str] = Field(default_factory=list)

    @field_validator("atlas")
    @classmethod
    def _atlas(cls, ids: list[str]) -> list[str]:
        bad = [i for i in ids if not ATLAS_ID.match(i) or not i.startswith("AML.T")]
        if bad:
            raise ValueError(f"not ATLAS technique ids (AML.Txxxx[.yyy]): {', '.join(bad)}")
        return ids

    @field_validator("applies_when")
    @classmethod
    def _applies(cls, rules: dict[str, list[str]]) -> dict[str, list[str]]:
        for factor, values in rules.items():
            if factor not in FACTOR_VALUES:
                raise ValueError(f"unknown profile factor {factor!r} in applies_when")
            bad = [v for v in values if str(v) not in FACTOR_VALUES[factor]]
            if bad:
                raise ValueError(f"applies_when.{factor}: unknown value(s) {bad}")
        return rules

    def applies(self, factors: dict[str, list[str]]) -> str | None:
        """None when the threat applies to the profile, else the reason it does not."""
        for factor, allowed in self.applies_when.items():
            have = factors.get(factor, [])
            if not any(v in allowed for v in have):
                return f"{factor} is {', '.join(have) or 'unset'} (applies to {', '.join(allowed)})"
        return None


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str
    threats: list[Threat]

    @model_validator(mode="after")
    def _unique(self) -> Catalogue:
        ids = [t.id for t in self.threats]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate threat ids: {', '.join(dupes)}")
        return self

    def get(self, threat_id: str) -> Threat:
        for t in self.threats:
            if t.id == threat_id:
                return t
        raise ConfigError(
            f"unknown threat {threat_id!r}: the catalogue has {', '.join(t.id for t in self.threats)}"
        )


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """The packaged catalogue, or a custom one from ``path`` (same format)."""
    if path is None:
        return _packaged()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"catalogue not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None
    return validate(Catalogue, data, str(path))


@cache
def _packaged() -> Catalogue:
    text = resources.files("bastion.risk").joinpath("catalogue.yaml").read_text()
    return validate(Catalogue, yaml.safe_load(text), "bastion/risk/catalogue.yaml")
