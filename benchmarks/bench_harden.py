"""Hardening benchmarks: adversarial training, DP-SGD and sanitization.

Suites (``--suite``, repeatable; default all):

- ``fashion``: Fashion-MNIST, L∞ ε=0.1: PGD-AT, TRADES and fast AT from scratch; clean
  accuracy on the full test set, robust accuracy under Bastion's standard ensemble
  (APGD-CE → APGD-T, ``bastion.attacks.evasion.robust_mask(attack="ensemble")``) on the
  first ``--n-eval`` test points, and training time.
- ``digits``: the same on digits (target ≥ 98 % clean, ≥ 95 % robust).
- ``dp``: DP-SGD on digits (``--dp-data fashion-mnist`` for Fashion-MNIST) at ε ∈ {1, 4, 8, ∞}:
  clean accuracy and LiRA TPR at 0.1 % FPR, with shadow models trained by the same recipe.
- ``sanitize``: BadNets at 5 % on digits: attack success before and after sanitize +
  retrain, with the flags' precision and recall, per sanitization method.

Every result is appended as one JSON line to ``--results`` (default
``benchmarks/results/harden.jsonl``) as soon as it is measured, so a long run killed half
way keeps what it finished; ``--table`` prints the table of a results file.

    python benchmarks/bench_harden.py --quick               # a few minutes
    python benchmarks/bench_harden.py --suite fashion --full
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch

from bastion.attacks.evasion import robust_mask
from bastion.attacks.inference import membership_metrics
from bastion.attacks.poisoning import backdoor_success_rate, poison_dataset
from bastion.data import load_dataset
from bastion.data.dataset import Dataset
from bastion.defenses.membership import RecipeLiRA
from bastion.defenses.recipes import parse_recipe
from bastion.defenses.runner import apply_recipe
from bastion.models.train import accuracy
from bastion.models.zoo import build_model, zoo_spec

log = logging.getLogger("bench_harden")
RESULTS = Path(__file__).parent / "results" / "harden.jsonl"


def record(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    log.info("%s", row)


def ensemble_accuracy(
    model, data: Dataset, *, eps: float, n: int, steps: int, seed: int = 0
) -> float:
    x, y = data.x[:n], data.y[:n]
    mask = robust_mask(
        model,
        x,
        y,
        attack="ensemble",
        eps=eps,
        norm="inf",
        bounds=data.bounds,
        steps=steps,
        generator=torch.Generator().manual_seed(seed),
    )
    return float(mask.float().mean())


def adversarial_suite(args, name: str, recipes: dict[str, str], spec_params: dict) -> None:
    bundle = load_dataset(name)
    spec = zoo_spec("cnn", bundle.train.shape, bundle.train.num_classes, **spec_params)
    parent = build_model(spec)
    for label, recipe in recipes.items():
        start = time.perf_counter()
        train_eps = args.train_eps or args.eps
        res = apply_recipe(
            parse_recipe(recipe), parent, bundle.train, eps=train_eps, seed=args.seed
        )
        seconds = time.perf_counter() - start
        model = res.module
        clean = accuracy(model, bundle.test.x, bundle.test.y)
        robust = ensemble_accuracy(
            model, bundle.test, eps=args.eps, n=args.n_eval, steps=args.apgd_steps
        )
        n_clean = accuracy(model, bundle.test.x[: args.n_eval], bundle.test.y[: args.n_eval])
        record(
            args.results,
            {
                "suite": name,
                "recipe": label,
                "spec": recipe,
                "model": spec.params,
                "eps": args.eps,
                "train_eps": train_eps,
                "clean_accuracy": clean,
                "clean_accuracy_eval_subset": n_clean,
                "robust_accuracy": robust,
                "attack": f"ensemble (APGD-CE + APGD-T, {args.apgd_steps} steps)",
                "n_eval": args.n_eval,
                "train_seconds": round(res.train_seconds, 1),
                "seconds_total": round(seconds, 1),
                "epochs_run": res.train.epochs_run if res.train else None,
                "best_epoch": res.train.best_epoch if res.train else None,
                "notes": res.notes,
                "threads": torch.get_num_threads(),
            },
        )


def dp_suite(args, name: str, spec_params: dict, epochs: int, eps_list: list[float]) -> None:
    """DP-SGD clean accuracy and LiRA (online, shadows trained by the same recipe)."""
    bundle = load_dataset(name)
    spec = zoo_spec("cnn", bundle.train.shape, bundle.train.num_classes, **spec_params)
    parent = build_model(spec)
    n_pop = min(args.lira_population, len(bundle.train) + len(bundle.test))
    pool = _concat(bundle.train, bundle.test)
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(args.seed))[:n_pop]
    population = pool.subset(perm, split="population")
    for target in eps_list:
        if math.isinf(target):
            recipe = f"standard: {{epochs: {epochs}, val_fraction: 0, lr: {args.dp_lr}}}"
        else:
            recipe = (
                f"dp_sgd: {{target_epsilon: {target}, epochs: {epochs}, lr: {args.dp_lr}, "
                f"batch_size: {args.dp_batch}, max_grad_norm: {args.dp_clip}}}"
            )
        parsed = parse_recipe(_yaml(recipe))
        start = time.perf_counter()
        res = apply_recipe(parsed, parent, bundle.train, seed=args.seed)
        seconds = time.perf_counter() - start
        clean = accuracy(res.module, bundle.test.x, bundle.test.y)
        lira = RecipeLiRA(parsed, n_shadow=args.shadows, seed=args.seed).fit(population, parent)
        scores, members = lira.evaluate()
        m = membership_metrics(scores, members, fprs=[0.001, 0.01])
        record(
            args.results,
            {
                "suite": f"dp-{name}",
                "target_epsilon": target,
                "epsilon_spent": res.dp.epsilon if res.dp else math.inf,
                "delta": res.dp.delta if res.dp else None,
                "noise_multiplier": res.dp.noise_multiplier if res.dp else 0.0,
                "clean_accuracy": clean,
                "lira_tpr_at_0.1%_fpr": m.tpr_at_fpr[0.001],
                "lira_tpr_at_1%_fpr": m.tpr_at_fpr[0.01],
                "lira_auc": m.auc,
                "shadows": args.shadows,
                "population": n_pop,
                "epochs": epochs,
                "train_seconds": round(res.train_seconds, 1),
                "seconds_total": round(seconds, 1),
            },
        )


def sanitize_suite(args) -> None:
    bundle = load_dataset("digits")
    spec = zoo_spec("cnn", bundle.train.shape, 10)
    trig = {"target": args.bd_target, "patch_size": 3}
    for seed in range(args.sanitize_seeds):
        gen = torch.Generator().manual_seed(seed)
        poisoned = poison_dataset(bundle.train, rate=0.05, generator=gen, **trig)
        torch.manual_seed(seed)
        base = apply_recipe(parse_recipe("standard"), build_model(spec), bundle.train, seed=seed)
        bad = apply_recipe(parse_recipe("standard"), build_model(spec), poisoned.dataset, seed=seed)
        x, y = bundle.test.x, bundle.test.y
        row = {
            "suite": "sanitize",
            "seed": seed,
            "rate": 0.05,
            **trig,
            "clean_model_asr": backdoor_success_rate(base.module, x, y, **trig),
            "clean_model_accuracy": accuracy(base.module, x, y),
            "poisoned_asr": backdoor_success_rate(bad.module, x, y, **trig),
            "poisoned_accuracy": accuracy(bad.module, x, y),
        }
        in_class = len(poisoned.indices) / int((poisoned.dataset.y == args.bd_target).sum())
        for method in args.sanitize_methods or ["activation", "spectral", "both"]:
            step = {"method": method}
            if (
                method == "spectral-oracle"
            ):  # spectral with ε = the true poisoned share of the class
                step = {"method": "spectral", "expected_rate": round(in_class, 4)}
            recipe = parse_recipe([{"sanitize": step}, "standard"])
            res = apply_recipe(
                recipe,
                bad.module,
                poisoned.dataset,
                feature_model=bad.module,
                poisoned=poisoned.indices,
                seed=seed,
            )
            q = res.sanitize.quality
            record(
                args.results,
                {
                    **row,
                    "method": method,
                    "precision": q.precision,
                    "recall": q.recall,
                    "n_flagged": q.n_flagged,
                    "n_poisoned": q.n_poisoned,
                    "poisoned_classes": res.sanitize.poisoned_classes,
                    "asr_after": backdoor_success_rate(res.module, x, y, **trig),
                    "accuracy_after": accuracy(res.module, x, y),
                    "seconds": round(res.seconds, 1),
                },
            )


def _yaml(text: str) -> object:
    import yaml

    return yaml.safe_load(text)


def _concat(a: Dataset, b: Dataset) -> Dataset:
    return Dataset(
        name=a.name,
        x=torch.cat([a.x, b.x]),
        y=torch.cat([a.y, b.y]),
        class_names=a.class_names,
        bounds=a.bounds,
        source=a.source,
        split="all",
    )


def table(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in rows:
        keys = [k for k in r if k not in {"notes", "model", "spec"}]
        print(
            " | ".join(
                f"{k}={r[k]:.4g}" if isinstance(r[k], float) else f"{k}={r[k]}" for k in keys
            )
        )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--suite", action="append", choices=["fashion", "digits", "dp", "sanitize"])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="few epochs, small evaluation (default)")
    mode.add_argument("--full", action="store_true", help="the issue's settings (hours on CPU)")
    p.add_argument("--recipe", action="append", help="only these adversarial recipes (labels)")
    p.add_argument("--fashion-epochs", type=int)
    p.add_argument("--digits-epochs", type=int)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--train-eps", type=float, help="training ε (default: --eps)")
    p.add_argument("--width", type=int, help="CNN width (default: 32 Fashion, 64 digits)")
    p.add_argument("--hidden", type=int, help="CNN hidden units (default: 128 Fashion, 256 digits)")
    p.add_argument("--n-eval", type=int)
    p.add_argument("--apgd-steps", type=int, default=100)
    p.add_argument("--shadows", type=int)
    p.add_argument("--lira-population", type=int, default=1797)
    p.add_argument("--dp-epochs", type=int)
    p.add_argument("--dp-lr", type=float, default=3e-3)
    p.add_argument("--dp-batch", type=int, default=64)
    p.add_argument("--dp-clip", type=float, default=1.0)
    p.add_argument("--dp-eps", type=float, action="append")
    p.add_argument(
        "--dp-data",
        action="append",
        choices=["digits", "fashion-mnist"],
        help="datasets for the dp suite (default: digits)",
    )
    p.add_argument("--bd-target", type=int, default=0)
    p.add_argument("--sanitize-seeds", type=int)
    p.add_argument(
        "--sanitize-methods",
        action="append",
        choices=["activation", "spectral", "both", "spectral-oracle"],
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--table", type=Path, help="print a results file and exit")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.table:
        table(args.table)
        return
    torch.set_num_threads(args.threads)
    full = args.full
    args.n_eval = args.n_eval or (1000 if full else 500)
    args.shadows = args.shadows or (16 if full else 8)
    args.sanitize_seeds = args.sanitize_seeds or (5 if full else 2)
    fe = args.fashion_epochs or (15 if full else 2)
    de = args.digits_epochs or (60 if full else 30)
    suites = args.suite or ["digits", "sanitize", "dp", "fashion"]
    for suite in suites:
        if suite in ("fashion", "digits"):
            e = fe if suite == "fashion" else de
            size = {} if suite == "fashion" else {"width": 64, "hidden": 256}
            if args.width:
                size["width"] = args.width
            if args.hidden:
                size["hidden"] = args.hidden
            recipes = {
                "pgd_at": f"pgd_at: {{epochs: {e}, steps: 7}}",
                "trades": f"trades: {{epochs: {e}, beta: 6, steps: 7}}",
                "fast_at": f"fast_at: {{epochs: {e}}}",
            }
            recipes = {
                k: _yaml(v) for k, v in recipes.items() if not args.recipe or k in args.recipe
            }
            name = "fashion-mnist" if suite == "fashion" else "digits"
            adversarial_suite(args, name, recipes, size)
        elif suite == "dp":
            eps_list = args.dp_eps or [1.0, 4.0, 8.0, math.inf]
            for name in args.dp_data or ["digits"]:
                epochs = args.dp_epochs or ((40 if full else 20) if name == "digits" else 3)
                dp_suite(args, name, {}, epochs, eps_list)
        elif suite == "sanitize":
            sanitize_suite(args)


if __name__ == "__main__":
    main()
