"""Recipes: names, YAML forms, composition rules and clear errors."""

import pytest

from bastion.defenses.recipes import (
    DPSGDConfig,
    SanitizeConfig,
    StandardConfig,
    TradesConfig,
    parse_recipe,
)
from bastion.defenses.runner import resolve
from bastion.errors import ConfigError


def test_name_alias_and_composition():
    r = parse_recipe("sanitize+TRADES")
    assert [s.name for s in r.steps] == ["sanitize", "trades"]
    assert isinstance(r.training, TradesConfig) and r.training.beta == 6.0
    assert parse_recipe("madry").name == "pgd_at"
    assert parse_recipe("fast-at").name == "fast_at"


def test_sanitize_alone_retrains_naturally():
    r = parse_recipe("sanitize")
    assert isinstance(r.steps[0], SanitizeConfig) and isinstance(r.training, StandardConfig)


def test_yaml_forms(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("- sanitize: {method: spectral}\n- name: trades\n  beta: 0\n  epochs: 3\n")
    r = parse_recipe(str(path))
    assert r.steps[0].method == "spectral"
    assert r.training.beta == 0 and r.training.epochs == 3
    path.write_text("steps: [{dp_sgd: {target_epsilon: 2, max_grad_norm: 0.5}}]\n")
    dp = parse_recipe(path).training
    assert isinstance(dp, DPSGDConfig) and dp.target_epsilon == 2 and dp.max_grad_norm == 0.5
    assert parse_recipe({"name": "dp_sgd", "noise_multiplier": 1.1}).training.target_epsilon is None


def test_describe_keeps_every_parameter_and_resolve_fills_threat_defaults():
    r = resolve(parse_recipe("sanitize+pgd_at"), eps=0.2, poison_rate=0.1)
    steps = r.describe()
    assert steps[1]["eps"] == 0.2 and steps[1]["steps"] == 7 and "select_n" in steps[1]
    assert steps[0]["expected_rate"] == 0.1
    # training at a larger ε still selects the model on robust accuracy at the threat's ε
    wide = resolve(parse_recipe([{"fast_at": {"eps": 0.3}}]), eps=0.1, poison_rate=0.05)
    assert wide.training.eps == 0.3 and wide.training.select_eps == 0.1


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("adversarial", r"unknown recipe 'adversarial': choose from dp_sgd, fast_at, pgd_at"),
        ([{"trades": {"betta": 1}}], r"betta: unknown key"),
        ([{"trades": {"beta": -1}}], r"beta: Input should be greater than or equal to 0"),
        ("trades+pgd_at", "a recipe trains once, but trades and pgd_at both train"),
        ("trades+sanitize", "put data steps .sanitize. before the training step trades"),
        ("sanitize+sanitize", "a data step appears twice"),
        ([{"dp_sgd": {"init": "parent"}}], "dp_sgd cannot start from the parent's weights"),
        (
            [{"dp_sgd": {"target_epsilon": 1, "noise_multiplier": 1}}],
            "exactly one of target_epsilon",
        ),
        ([{"fast_at": 3}], "parameters of 'fast_at' must be a mapping"),
        ([], "the recipe is empty"),
        (42, "a recipe must be a name, a list of steps or a mapping"),
    ],
)
def test_bad_recipes_are_clear_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_recipe(spec)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        parse_recipe(str(tmp_path / "missing.yaml"))
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="the recipe file is empty"):
        parse_recipe(empty)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- trades: {beta: [1,\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        parse_recipe(bad)
