"""Hardening: adversarial training (PGD-AT, TRADES, fast AT), DP-SGD through Opacus and
training-data sanitization, composed into recipes and compared before/after.

Submodules are imported on use (Opacus and scikit-learn load only when needed)."""

from bastion.defenses.recipes import RECIPES, Recipe, parse_recipe, recipe_names

__all__ = ["RECIPES", "Recipe", "parse_recipe", "recipe_names"]
