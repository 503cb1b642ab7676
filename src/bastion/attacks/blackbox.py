"""Black-box evasion: what an attacker can do with query access only.

One place to import from: query targets and the budget (:mod:`bastion.attacks.targets`,
:mod:`bastion.attacks.http_target`), the score-based Square attack
(:mod:`bastion.attacks.square`) and the decision-based HopSkipJump
(:mod:`bastion.attacks.hopskipjump`). Every attack takes a query target (or an
``nn.Module``, wrapped in a :class:`ModuleTarget`) and never touches gradients.
"""

from bastion.attacks.hopskipjump import hopskipjump
from bastion.attacks.http_target import HttpTarget
from bastion.attacks.square import margin_loss, square_attack
from bastion.attacks.targets import (
    REFUSED,
    BlackBoxResult,
    CallableTarget,
    ModuleTarget,
    OnnxTarget,
    QueryBudget,
    QueryTarget,
    as_labels,
    as_target,
    is_adversarial,
    refused,
)

__all__ = [
    "REFUSED",
    "BlackBoxResult",
    "CallableTarget",
    "HttpTarget",
    "ModuleTarget",
    "OnnxTarget",
    "QueryBudget",
    "QueryTarget",
    "as_labels",
    "as_target",
    "hopskipjump",
    "is_adversarial",
    "margin_loss",
    "refused",
    "square_attack",
]
