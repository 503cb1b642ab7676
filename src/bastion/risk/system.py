"""The system profile: what the model decides, who reaches it, where its data comes from.

``bastion risk init --system system.yaml`` reads one of these (see examples/system.yaml and
docs/risk.md) and builds a register from the threat catalogue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bastion.config import load_yaml_model

Exposure = Literal["public_api", "partner_api", "internal", "on_device"]
DataSource = Literal["own", "scraped", "third_party", "user_contributed"]
Cost = Literal["negligible", "minor", "moderate", "major", "critical"]
AttackerAccess = Literal["none", "labels", "scores", "white_box"]
Sensitivity = Literal["none", "low", "personal", "sensitive"]
Value = Literal["low", "medium", "high"]
Layer = Literal["data", "training", "model", "deployment", "monitoring"]
Kind = Literal["classifier", "llm_application"]


class SystemProfile(BaseModel):
    """Design-time facts about the ML system; each field drives one scoring factor."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="system name, e.g. 'cheque-digit-reader'")
    description: str = ""
    decision: str = Field(description="what the model decides, in one sentence")
    kind: Kind = Field(
        "classifier",
        description="classifier (a model that labels inputs) or llm_application (a chat "
        "endpoint with a system prompt, tools and retrieval; adds the OWASP LLM threats)",
    )
    exposure: Exposure = Field(
        description="who can reach the model: public_api, partner_api, internal, on_device"
    )
    data_sources: list[DataSource] = Field(
        min_length=1, description="where training data comes from"
    )
    wrong_answer_cost: Cost = Field(description="what one wrong answer costs")
    safety_critical: bool = Field(False, description="a wrong answer can hurt a person")
    attacker_access: AttackerAccess = Field(
        "labels", description="what an outside attacker sees: none, labels, scores, white_box"
    )
    training_data_sensitivity: Sensitivity = Field(
        "none", description="personal or sensitive records in the training data"
    )
    model_value: Value = Field("medium", description="value of the model as IP")
    third_party_artifacts: bool = Field(
        False, description="pretrained weights, checkpoints or datasets from outside"
    )
    owners: dict[Layer | Literal["default"], str] = Field(
        default_factory=dict, description="risk owner per life-cycle layer (or 'default')"
    )

    def factors(self) -> dict[str, list[str]]:
        """The profile as factor → values, the vocabulary of the catalogue's rules."""
        return {
            "kind": [self.kind],
            "exposure": [self.exposure],
            "data_sources": list(self.data_sources),
            "wrong_answer_cost": [self.wrong_answer_cost],
            "safety_critical": [str(self.safety_critical).lower()],
            "attacker_access": [self.attacker_access],
            "training_data_sensitivity": [self.training_data_sensitivity],
            "model_value": [self.model_value],
            "third_party_artifacts": [str(self.third_party_artifacts).lower()],
        }

    def owner_for(self, layer: str) -> str:
        return self.owners.get(layer) or self.owners.get("default") or "unassigned"  # type: ignore[call-overload]


FACTOR_VALUES: dict[str, list[str]] = {
    "exposure": list(Exposure.__args__),
    "data_sources": list(DataSource.__args__),
    "wrong_answer_cost": list(Cost.__args__),
    "safety_critical": ["true", "false"],
    "attacker_access": list(AttackerAccess.__args__),
    "training_data_sensitivity": list(Sensitivity.__args__),
    "model_value": list(Value.__args__),
    "third_party_artifacts": ["true", "false"],
    "kind": list(Kind.__args__),
}


def load_system(path: str | Path) -> SystemProfile:
    return load_yaml_model(SystemProfile, path)
