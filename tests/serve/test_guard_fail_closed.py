"""The guard fails closed: a guard that is there but cannot be used (corrupt, truncated or
empty guard.json, a missing weights file, fitted for other weights) stops the start-up with
one line, unless ``guard.allow_unguarded`` (``bastion serve --allow-unguarded``)."""

from __future__ import annotations

import logging
import shutil

import pytest

from bastion.errors import ConfigError
from bastion.serve.runtime import Runtime
from bastion.serve.settings import ServeSettings


@pytest.fixture(scope="module")
def guarded_dir(digits, digits_model_dir, tmp_path_factory):
    """The digits model with a quickly fitted guard beside it (copied per test)."""
    from bastion.guard.config import GuardConfig
    from bastion.guard.guard import fit_guard
    from bastion.models.io import load_model

    out = tmp_path_factory.mktemp("guarded") / "model"
    shutil.copytree(digits_model_dir, out)
    config = GuardConfig.model_validate({"detectors": {"reconstruction": {"epochs": 1}}})
    fit_guard(load_model(out).module, digits.train, config=config).save(out)
    return out


@pytest.fixture()
def model(guarded_dir, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(guarded_dir, out)
    return out


def _settings(model, **guard) -> ServeSettings:
    return ServeSettings(model_dir=model, guard=guard)


def test_a_sound_guard_loads(model):
    assert Runtime.from_settings(_settings(model)).guard is not None


def _empty(m):
    (m / "guard.json").write_text("")


def _truncated(m):
    text = (m / "guard.json").read_text()
    (m / "guard.json").write_text(text[: len(text) // 2])


def _corrupt(m):
    (m / "guard.json").write_bytes(b"\x00\xff not json at all")


def _not_an_object(m):
    (m / "guard.json").write_text("[1, 2, 3]")


def _no_weights(m):
    (m / "guard.safetensors").unlink()


def _no_meta(m):
    (m / "guard.json").unlink()


def _weights_garbage(m):
    (m / "guard.safetensors").write_bytes(b"garbage")


def _other_weights(m):
    import json

    doc = json.loads((m / "guard.json").read_text())
    doc["meta"]["state_sha256"] = "0" * 64
    (m / "guard.json").write_text(json.dumps(doc))


BROKEN = [
    _empty,
    _truncated,
    _corrupt,
    _not_an_object,
    _no_weights,
    _no_meta,
    _weights_garbage,
    _other_weights,
]


@pytest.mark.parametrize("damage", BROKEN, ids=lambda f: f.__name__.strip("_"))
def test_a_broken_guard_refuses_to_start(model, damage):
    damage(model)
    with pytest.raises(ConfigError, match="--allow-unguarded") as info:
        Runtime.from_settings(_settings(model))
    message = str(info.value)
    assert "\n" not in message and "guard" in message and str(model) in message


@pytest.mark.parametrize("damage", [_truncated, _no_weights], ids=["truncated", "no_weights"])
def test_allow_unguarded_serves_without_it_and_says_so(model, damage, caplog):
    damage(model)
    with caplog.at_level(logging.WARNING, logger="bastion.serve.runtime"):
        runtime = Runtime.from_settings(_settings(model, allow_unguarded=True))
    assert runtime.guard is None
    assert any("WITHOUT a guard" in r.getMessage() for r in caplog.records)


def test_no_guard_at_all_is_a_warning_unless_required(digits_model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="bastion.serve.runtime"):
        assert Runtime.from_settings(_settings(digits_model_dir)).guard is None
    assert any("WITHOUT a guard" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match=r"guard\.required"):
        Runtime.from_settings(_settings(digits_model_dir, required=True))


def test_a_named_guard_dir_without_a_guard_refuses(digits_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="--allow-unguarded"):
        Runtime.from_settings(_settings(digits_model_dir, dir=tmp_path / "nowhere"))
    ok = Runtime.from_settings(_settings(digits_model_dir, dir=tmp_path, allow_unguarded=True))
    assert ok.guard is None
