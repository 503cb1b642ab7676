"""Guard fixtures: a guard fitted once per session on the shared digits model (a short
autoencoder run keeps it to a few seconds), and PGD examples against that model."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.evasion import pgd
from bastion.guard import GuardConfig, fit_guard


def fast_config(**extraction: object) -> GuardConfig:
    cfg = GuardConfig()
    cfg.detectors.reconstruction.epochs = 60
    for key, value in extraction.items():
        setattr(cfg.extraction, key, value)
    return cfg


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread():
    """On the shared 2-core machine two intra-op threads thrash under load (10× slower);
    these small models run best on one. Restored when the guard tests end."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def guard_module(digits_model_dir):
    """The shared digits model, loaded once for the package-wide guard (tests that need a
    module of their own use the per-test ``digits_module``: same weights)."""
    from bastion.models.io import load_model

    return load_model(digits_model_dir).module


@pytest.fixture(scope="package")
def fitted_guard(_one_torch_thread, guard_module, digits):
    torch.manual_seed(0)
    return fit_guard(guard_module, digits.train, config=fast_config())


@pytest.fixture(scope="package")
def pgd_examples(_one_torch_thread, guard_module, digits):
    """Successful PGD L∞ ε=0.1 examples on the first 200 test points."""
    x, y = digits.test.x[:200], digits.test.y[:200]
    adv = pgd(guard_module, x, y, eps=0.1, steps=20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ok = (guard_module(x).argmax(1) == y) & (guard_module(adv).argmax(1) != y)
    return adv[ok]


@pytest.fixture(scope="package")
def noise_inputs(digits):
    gen = torch.Generator().manual_seed(1)
    x = digits.test.x[:200]
    return (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
