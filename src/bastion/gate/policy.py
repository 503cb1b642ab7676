"""Release policies: YAML lists of rules over report metrics and the risk register.

.. code-block:: yaml

    name: release
    rules:
      - rule: robust_accuracy(attack=ensemble, eps=0.1) >= 0.70
        name: robust under the ensemble at ε=0.1
      - membership.tpr_at_fpr(0.001) <= 0.01     # a bare string is a rule too
      - rule: dp.epsilon <= 8
        if_missing: skip                          # default: fail
      - count(risks, priority=high, status=open) == 0
      - sanity_warnings == 0
      - score <= 40

The grammar is in :mod:`bastion.gate.grammar`, the metrics in :mod:`bastion.gate.metrics`
(docs/gate.md documents both). Every rule is parsed when the policy loads; all problems are
reported at once, each naming the rule and the valid choices.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bastion.config import read_yaml, validate
from bastion.gate.grammar import Comparison, PolicyError, RuleSyntaxError, parse_rule
from bastion.gate.metrics import Measure, resolve

IfMissing = Literal["fail", "skip"]


class RuleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: str = Field(description="e.g. `robust_accuracy(attack=pgd, eps=0.1) >= 0.7`")
    name: str | None = None
    description: str = ""
    if_missing: IfMissing = "fail"


class PolicyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "release-policy"
    description: str = ""
    rules: list[RuleConfig] = Field(min_length=1)

    @field_validator("rules", mode="before")
    @classmethod
    def _strings(cls, rules: object) -> object:
        if isinstance(rules, list):
            return [{"rule": r} if isinstance(r, str) else r for r in rules]
        return rules


@dataclass(frozen=True)
class Rule:
    """A parsed, validated rule ready to evaluate."""

    name: str
    text: str
    comparison: Comparison
    measure: Measure
    if_missing: IfMissing = "fail"
    description: str = ""


@dataclass(frozen=True)
class Policy:
    name: str
    rules: tuple[Rule, ...]
    config: PolicyConfig
    source: str = "<policy>"

    @property
    def sha256(self) -> str:
        """Hash of the policy's canonical JSON form (what the attestation records)."""
        canon = json.dumps(self.config.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(canon).hexdigest()


def compile_rule(text: str) -> tuple[Comparison, Measure]:
    comparison = parse_rule(text)
    return comparison, resolve(comparison.metric)


def compile_policy(config: PolicyConfig, source: str = "<policy>") -> Policy:
    """Parse every rule; raise one PolicyError listing every broken rule."""
    rules, problems, names = [], [], set()
    for i, rc in enumerate(config.rules):
        text = rc.rule.strip()
        try:
            comparison, measure = compile_rule(text)
        except RuleSyntaxError as exc:
            problems.append(f"rules[{i}] `{text}`: {exc} (column {exc.column})")
            continue
        except PolicyError as exc:
            problems.append(f"rules[{i}] `{text}`: {exc}")
            continue
        name = rc.name or text
        if name in names:
            problems.append(
                f"rules[{i}]: the name {name!r} is used twice; rule names must be unique"
            )
        names.add(name)
        rules.append(Rule(name, text, comparison, measure, rc.if_missing, rc.description))
    if problems:
        raise PolicyError(f"{source}: " + "; ".join(problems))
    return Policy(config.name, tuple(rules), config, source)


def policy_from_data(data: object, source: str = "<policy>") -> Policy:
    """Build a policy from parsed YAML: a mapping with ``rules:`` or a bare list of rules."""
    if data is None:
        raise PolicyError(f"{source}: the policy is empty: add `rules:` with at least one rule")
    if isinstance(data, list):
        data = {"rules": data}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: a policy is a mapping with `rules:` (or a list of rules)")
    return compile_policy(validate(PolicyConfig, data, source), source)


def load_policy(path: str | Path) -> Policy:
    return policy_from_data(read_yaml(path), str(path))
