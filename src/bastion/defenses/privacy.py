"""DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy") through Opacus.

We wrap the user's model, optimizer and loader with Opacus rather than clipping and noising
by hand. Poisson sampling is kept (Opacus' ``DPDataLoader``), because the accountant's
amplification-by-sampling analysis assumes it; settings that would make the reported ε
wrong are refused: fixed-size or weighted samplers (Opacus computes the sampling rate as
``1 / len(loader)``, which a ``WeightedRandomSampler`` makes silently wrong: Opacus issue
#813) and starting from weights that were trained on the same data without privacy.

Layers Opacus cannot compute per-sample gradients for (BatchNorm mixes samples) are replaced
by ``ModuleValidator.fix`` (BatchNorm → GroupNorm) and the replacements are reported. The ε
in the result is the one the accountant actually spent, for the δ used (default 1/n).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import (
    DataLoader,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from bastion.data.dataset import Dataset
from bastion.errors import ConfigError, ModelError
from bastion.models.resume import load_checkpoint, restoring
from bastion.progress import task

log = logging.getLogger(__name__)
DP_CHECKPOINT_KEYS = (
    "model",
    "optimizer",
    "accountant",
    "loader_gen",
    "noise_gen",
    "noise_multiplier",
    "result",
)
Accountant = Literal["rdp", "prv", "gdp"]
SAMPLERS = ("poisson",)


@dataclass
class DPResult:
    """What DP-SGD spent and did. ``epsilon`` comes from the accountant after training."""

    epsilon: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    epochs_run: int
    target_epsilon: float | None = None
    accountant: str = "rdp"
    module_fixes: list[str] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    epsilons: list[float] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0


def fix_module(module: nn.Module) -> tuple[nn.Module, list[str]]:
    """Return a DP-compatible module and what was replaced. ``ModuleValidator.fix`` copies
    the module before fixing (BatchNorm → GroupNorm, ...); anything still unsupported
    raises ModelError listing every problem at once."""
    from opacus.validators import ModuleValidator

    was_training = module.training
    module.train()
    problems = [str(e) for e in ModuleValidator.validate(module, strict=False)]
    if not problems:
        module.train(was_training)
        return module, []
    before = {n: type(m).__name__ for n, m in module.named_modules()}
    fixed = ModuleValidator.fix(module)
    after = {n: type(m).__name__ for n, m in fixed.named_modules()}
    fixes = [
        f"{n}: {before[n]} → {after[n]}" for n in after if n in before and before[n] != after[n]
    ]
    remaining = [str(e) for e in ModuleValidator.validate(fixed, strict=False)]
    if remaining:
        raise ModelError(
            "the model has layers DP-SGD cannot train (no per-sample gradients) even after "
            f"Opacus' ModuleValidator.fix: {'; '.join(remaining)}"
        )
    log.warning("DP-SGD: Opacus ModuleValidator replaced unsupported layers: %s", "; ".join(fixes))
    return fixed, fixes


def check_loader(loader: DataLoader) -> None:
    """Refuse a DataLoader whose sampling breaks the accountant (Opacus issue #813): the
    privacy analysis needs uniform (Poisson) sampling over the whole dataset, and Opacus
    derives the rate from ``1 / len(loader)``."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, WeightedRandomSampler):
        raise ConfigError(
            "a WeightedRandomSampler breaks DP accounting: Opacus computes the sampling rate as "
            "1/len(loader), which a weighted sampler makes wrong, so ε would be silently invalid "
            "(Opacus issue #813). Use uniform Poisson sampling (the default) and reweight the "
            "loss instead"
        )
    if not isinstance(sampler, (RandomSampler, SequentialSampler)):
        raise ConfigError(
            f"sampler {type(sampler).__name__} is not supported for DP-SGD: Poisson sampling "
            "replaces it and the accountant assumes uniform sampling over the whole dataset"
        )
    if isinstance(sampler, RandomSampler) and (
        sampler.replacement or sampler.num_samples != len(loader.dataset)
    ):
        raise ConfigError(
            "a RandomSampler drawing with replacement or a subset of the data breaks DP "
            "accounting: the sampling rate would not be batch_size/n"
        )


def _validate(target_epsilon, noise_multiplier, delta, max_grad_norm, sampler, n) -> float:
    if sampler not in SAMPLERS:
        raise ConfigError(
            f"sampler {sampler!r} breaks DP accounting: Opacus' accountant assumes Poisson "
            "sampling (each sample joins a batch independently with rate batch_size/n); weighted "
            "or fixed-size samplers make the reported ε wrong (Opacus issue #813). "
            "Use sampler: poisson"
        )
    if (target_epsilon is None) == (noise_multiplier is None):
        raise ConfigError("DP-SGD needs exactly one of target_epsilon or noise_multiplier")
    if target_epsilon is not None and not (0 < target_epsilon < math.inf):
        raise ConfigError(
            f"target_epsilon must be a finite number > 0, got {target_epsilon} "
            "(for ε = ∞ train without DP: recipe 'standard')"
        )
    if noise_multiplier is not None and noise_multiplier <= 0:
        raise ConfigError(f"noise_multiplier must be > 0, got {noise_multiplier}")
    if max_grad_norm <= 0:
        raise ConfigError(f"max_grad_norm must be > 0, got {max_grad_norm}")
    delta = 1.0 / n if delta is None else delta
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta} (default 1/n = {1 / n:.2e})")
    return delta


def dp_train(
    module: nn.Module,
    data: Dataset,
    *,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    delta: float | None = None,
    max_grad_norm: float = 1.0,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: Literal["adam", "sgd"] = "adam",
    momentum: float = 0.9,
    sampler: str = "poisson",
    accountant: Accountant = "rdp",
    seed: int = 0,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    description: str = "DP-SGD",
) -> tuple[nn.Module, DPResult]:
    """Train ``module`` with DP-SGD (Opacus) on all of ``data`` to ``target_epsilon`` (or with
    a given ``noise_multiplier``) at ``delta`` (default 1/n). Returns the trained module (a
    fixed copy when ``ModuleValidator`` had to replace layers) and a :class:`DPResult`
    holding the ε the accountant spent. With ``checkpoint`` a rerun resumes after the last
    finished epoch, accountant state included."""
    from opacus import PrivacyEngine
    from opacus.accountants.utils import get_noise_multiplier

    n = len(data)
    delta = _validate(target_epsilon, noise_multiplier, delta, max_grad_norm, sampler, n)
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError("epochs and batch_size must be >= 1 and lr > 0")
    if batch_size >= n:
        raise ConfigError(f"batch_size {batch_size} must be smaller than the dataset ({n})")
    if isinstance(module, torch.jit.ScriptModule):
        raise ModelError(
            "dp_sgd is not applicable to a TorchScript model: Opacus computes per-sample "
            "gradients only for Python nn.Module layers. Harden the model through its entry point "
            "(--entry-point module:function with its weights) to train it with DP-SGD"
        )
    torch.manual_seed(seed)
    module, fixes = fix_module(module)
    module.to(device).train()
    loader_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    loader = DataLoader(
        TensorDataset(data.x, data.y), batch_size=batch_size, shuffle=True, generator=loader_gen
    )
    check_loader(loader)
    sample_rate = 1.0 / len(loader)
    ckpt = Path(checkpoint) if checkpoint else None
    settings = {
        "target_epsilon": target_epsilon,
        "noise_multiplier": noise_multiplier,
        "delta": delta,
        "max_grad_norm": max_grad_norm,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "n": n,
        "seed": seed,
    }
    state = _load(ckpt, settings)
    if state is not None:
        with restoring(ckpt):
            sigma = float(state["noise_multiplier"])
    elif noise_multiplier is not None:
        sigma = float(noise_multiplier)
    else:
        sigma = get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            epochs=epochs,
            accountant=accountant,
        )
    params = [p for p in module.parameters() if p.requires_grad]
    base_opt = (
        torch.optim.Adam(params, lr=lr)
        if optimizer == "adam"
        else torch.optim.SGD(params, lr=lr, momentum=momentum)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns about secure_mode; we seed on purpose
        engine = PrivacyEngine(accountant=accountant)
        try:
            private, opt, dp_loader = engine.make_private(
                module=module,
                optimizer=base_opt,
                data_loader=loader,
                noise_multiplier=sigma,
                max_grad_norm=max_grad_norm,
                poisson_sampling=True,
                noise_generator=noise_gen,
            )
        except NotImplementedError as exc:  # Opacus: a layer without per-sample gradients
            raise ModelError(
                f"DP-SGD cannot train this model: {str(exc).strip() or 'unsupported layer'}"
            ) from None
    result = DPResult(
        epsilon=0.0,
        delta=delta,
        noise_multiplier=sigma,
        max_grad_norm=max_grad_norm,
        sample_rate=sample_rate,
        steps=0,
        epochs_run=0,
        target_epsilon=target_epsilon,
        accountant=accountant,
        module_fixes=fixes,
    )
    if state is not None:
        with restoring(ckpt):
            module.load_state_dict(state["model"])
            opt.original_optimizer.load_state_dict(state["optimizer"])
            engine.accountant.load_state_dict(state["accountant"])
            loader_gen.set_state(state["loader_gen"])
            noise_gen.set_state(state["noise_gen"])
            result = DPResult(**{**state["result"], "module_fixes": fixes})
        result.resumed_from = result.epochs_run
        log.info("resuming %s from epoch %d", description, result.epochs_run)
    start = time.perf_counter() - result.seconds
    with task(description, epochs * len(loader)) as advance:
        advance(result.epochs_run * len(loader))
        for _epoch in range(result.epochs_run, epochs):
            private.train()
            total, seen = 0.0, 0
            for xb, yb in _quiet(dp_loader):
                xb, yb = xb.to(device), yb.to(device)
                opt.zero_grad(set_to_none=True)
                if len(yb) == 0:  # an empty Poisson batch: a pure-noise step, as accounted
                    loss = private(xb).sum() * 0.0
                else:
                    loss = F.cross_entropy(private(xb), yb)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(yb)
                seen += len(yb)
                result.steps += 1
                advance()
            result.train_loss.append(total / max(1, seen))
            result.epochs_run += 1
            result.epsilon = float(engine.get_epsilon(delta))
            result.epsilons.append(result.epsilon)
            result.seconds = time.perf_counter() - start
            if ckpt:
                _save(ckpt, module, opt, engine, loader_gen, noise_gen, result, settings)
    module.eval()
    result.epsilon = float(engine.get_epsilon(delta)) if result.steps else 0.0
    result.seconds = time.perf_counter() - start
    _unwrap(private)
    return module, result


def _quiet(loader: DataLoader):
    """Iterate ``loader`` silencing torch's full-backward-hook notice (Opacus' hooks on
    inputs that need no gradient: harmless)."""
    for batch in loader:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            yield batch


def _load(ckpt: Path | None, settings: dict) -> dict | None:
    if ckpt is None or not ckpt.exists():
        return None
    state = load_checkpoint(ckpt, keys=DP_CHECKPOINT_KEYS)
    if state.get("settings") != settings:
        log.warning("checkpoint %s was made with other DP settings: starting afresh", ckpt)
        return None
    return state


def _save(
    ckpt: Path, module, opt, engine, loader_gen, noise_gen, result: DPResult, settings
) -> None:
    from dataclasses import asdict

    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt.with_suffix(".tmp")
    torch.save(
        {
            "model": module.state_dict(),
            "optimizer": opt.original_optimizer.state_dict(),
            "accountant": engine.accountant.state_dict(),
            "loader_gen": loader_gen.get_state(),
            "noise_gen": noise_gen.get_state(),
            "noise_multiplier": result.noise_multiplier,
            "result": asdict(result),
            "settings": settings,
        },
        tmp,
    )
    tmp.replace(ckpt)


def _unwrap(private: nn.Module) -> None:
    """Remove Opacus' hooks and per-sample attributes: the module is a plain nn.Module again."""
    to_standard = getattr(private, "to_standard_module", None)
    if to_standard is not None:
        to_standard()
