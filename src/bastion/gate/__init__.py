"""Release gate: policy-as-code rules over the assessment and the register, JUnit output,
and signed in-toto attestations of what was measured."""

from bastion.gate.evaluate import GateDecision, RuleResult, evaluate
from bastion.gate.grammar import PolicyError
from bastion.gate.policy import Policy, load_policy, policy_from_data

__all__ = [
    "GateDecision",
    "Policy",
    "PolicyError",
    "RuleResult",
    "evaluate",
    "load_policy",
    "policy_from_data",
]
