"""Bastion: security-first assurance for PyTorch models.

risk → assess → harden → gate → guard → audit. See DESIGN.md in the docs.
"""

__version__ = "0.1.0"

from bastion import assess  # callable: bastion.assess(model, data, threat=...)

__all__ = ["__version__", "assess"]
