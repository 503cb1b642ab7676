"""Poisoning benchmark on Fashion-MNIST: BadNets (Gu et al. 2017) at 1 % and 5 % poisoning,
and random label flipping, each against a clean model trained with the same recipe.

Every model is the same small CNN trained on the full 60 000-image training split with the
same seed and recipe (``--epochs``, Adam, 10 % validation split for model selection), so
the only difference between runs is the poisoned rows. The BadNets trigger is a white
3×3 patch in the bottom-right corner, target class ``--target``; attack success is measured
on the triggered test images whose true class is not the target.

    nice python benchmarks/bench_poisoning.py           # ~3 CPU-minutes
    nice python benchmarks/bench_poisoning.py --quick   # 10 000 training images
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch

from bastion.attacks.poisoning import backdoor_success_rate, flip_labels, poison_dataset
from bastion.data import load_dataset
from bastion.data.dataset import Dataset
from bastion.models.train import accuracy, train_model
from bastion.models.zoo import build_model, zoo_spec
from bastion.progress import set_progress

log = logging.getLogger("bench_poisoning")
RESULTS = Path(__file__).parent / "results" / "privacy_poisoning.jsonl"


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def rates(text: str) -> list[float]:
    return [float(r) for r in text.split(",") if r.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--badnets-rates", type=rates, default=[0.01, 0.05])
    ap.add_argument("--flip-rates", type=rates, default=[0.2])
    ap.add_argument("--target", type=int, default=0)
    ap.add_argument("--patch-size", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--train-size", type=int, default=None, help="default: all 60 000")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="10 000 training images")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    if args.quick:
        args.train_size = 10_000
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.nice(5)
    torch.set_num_threads(args.threads)
    set_progress(False)

    data = load_dataset("fashion-mnist", root=args.data_root)
    train = data.train if args.train_size is None else data.train.head(args.train_size)
    spec = zoo_spec("cnn", train.shape, train.num_classes, width=args.width, hidden=8 * args.width)
    x, y = data.test.x, data.test.y
    trigger = {"target": args.target, "patch_size": args.patch_size}

    def fit(dataset: Dataset) -> tuple[torch.nn.Module, float]:
        torch.manual_seed(args.seed)
        model = build_model(spec)
        start = time.process_time()
        train_model(model, dataset, epochs=args.epochs, batch_size=64, lr=1e-3, seed=args.seed)
        return model, time.process_time() - start

    setting = {
        "bench": "poisoning",
        "dataset": "fashion-mnist",
        "train_size": len(train),
        "epochs": args.epochs,
        "model": f"cnn(width={args.width})",
        "seed": args.seed,
    }
    clean, cpu = fit(train)
    clean_acc = accuracy(clean, x, y)
    rows = [
        {
            "attack": "clean",
            "rate": 0.0,
            "n_poisoned": 0,
            "clean_accuracy": clean_acc,
            "accuracy_change": 0.0,
            "attack_success_rate": backdoor_success_rate(clean, x, y, **trigger),
            "cpu_s": cpu,
        }
    ]
    log.info("%s", rows[-1])
    gen = torch.Generator().manual_seed(args.seed)
    for rate in args.badnets_rates:
        poisoned = poison_dataset(train, rate=rate, generator=gen, **trigger)
        model, cpu = fit(poisoned.dataset)
        acc = accuracy(model, x, y)
        rows.append(
            {
                "attack": "badnets",
                "rate": rate,
                "n_poisoned": len(poisoned.indices),
                "clean_accuracy": acc,
                "accuracy_change": acc - clean_acc,
                "attack_success_rate": backdoor_success_rate(model, x, y, **trigger),
                "cpu_s": cpu,
            }
        )
        log.info("%s", rows[-1])
    for rate in args.flip_rates:
        flipped = flip_labels(train, rate=rate, generator=gen)
        model, cpu = fit(flipped.dataset)
        acc = accuracy(model, x, y)
        rows.append(
            {
                "attack": "label-flip",
                "rate": rate,
                "n_poisoned": len(flipped.indices),
                "clean_accuracy": acc,
                "accuracy_change": acc - clean_acc,
                "attack_success_rate": None,
                "cpu_s": cpu,
            }
        )
        log.info("%s", rows[-1])

    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as f:
        for r in rows:
            f.write(json.dumps({**setting, **r}) + "\n")
    print(f"\nFashion-MNIST poisoning: {setting}, trigger {trigger}")
    print(
        f"{'attack':11} {'rate':>6} {'rows':>6} {'clean acc':>9} {'Δ acc':>7} {'success':>8} {'CPU s':>6}"
    )
    for r in rows:
        print(
            f"{r['attack']:11} {r['rate']:6.2%} {r['n_poisoned']:6d} {r['clean_accuracy']:9.4f} "
            f"{r['accuracy_change']:+7.4f} {_num(r['attack_success_rate']):>8} {r['cpu_s']:6.1f}"
        )


if __name__ == "__main__":
    main()
