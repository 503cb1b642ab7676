"""Model-extraction benchmark on Fashion-MNIST: fidelity against the query budget for
Bastion's three query sources, side by side with IBM ART 1.20.1's CopycatCNN and
KnockoffNets (random sampling) at equal budgets.

The victim is the cached CNN of ``bench_blackbox.py``. The test split is shuffled (seeded)
and halved: 5 000 images form the attacker's pool, the other 5 000 measure fidelity
(agreement with the victim) and accuracy. Every surrogate is the victim's architecture,
trained from scratch; the victim answers probabilities (``use_probability=True`` for ART).

Fair-comparison choices: ART gets exactly the query images of Bastion's ``pool`` source at
each budget (held-out pool, then augmented copies past 5 000), the same number of optimizer
steps (its ``nb_epochs`` is set to match), batch size 64 and Adam; both train on the
probabilities (ART 1.20 passes probability labels to the cross-entropy). What differs is
the training recipe (ART: constant learning rate ``--art-lr``; Bastion: cosine schedule
from 3e-3, nested budgets continuing one surrogate) and the query sources.

    nice python benchmarks/bench_extraction.py                              # ~15 CPU-minutes
    nice python benchmarks/bench_extraction.py --budgets 100,1000 --seeds 0  # quick
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bastion.attacks.extraction import (
    draw_queries,
    extraction_curve,
    predict_labels,
    transfer_attack,
)
from bastion.attacks.targets import ModuleTarget
from bastion.data import load_dataset
from bastion.models.io import load_model
from bastion.models.zoo import build_model
from bastion.progress import set_progress
from bench_blackbox import art_classifier, load_victim

log = logging.getLogger("bench_extraction")
RESULTS = Path(__file__).parent / "results" / "extraction.jsonl"
# Bastion's surrogate training (library defaults): epochs, min/max optimizer steps, lr.
EPOCHS, MIN_STEPS, MAX_STEPS, LR = 10, 200, 1500, 3e-3


def steps_for(budget: int) -> int:
    return min(MAX_STEPS, max(MIN_STEPS, EPOCHS * math.ceil(budget / 64)))


def art_extract(
    method: str, victim: nn.Module, build, queries: torch.Tensor, budget: int, lr: float
):
    """Run ART's CopycatCNN or KnockoffNets on ``queries``; returns the surrogate module."""
    from art.attacks.extraction import CopycatCNN, KnockoffNets
    from art.estimators.classification import PyTorchClassifier

    shape = tuple(queries.shape[1:])
    # the victim answers probabilities, as Bastion's targets do (ART would pass logits as
    # soft labels to the thief's cross-entropy otherwise)
    victim_clf = art_classifier(nn.Sequential(victim, nn.Softmax(dim=1)).eval(), shape, 10)
    surrogate = build()
    thief = PyTorchClassifier(
        model=surrogate,
        loss=nn.CrossEntropyLoss(),
        input_shape=shape,
        nb_classes=10,
        optimizer=torch.optim.Adam(surrogate.parameters(), lr=lr),
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    epochs = max(1, math.ceil(steps_for(budget) / math.ceil(budget / 64)))
    common = {
        "batch_size_fit": 64,
        "batch_size_query": 256,
        "nb_epochs": epochs,
        "nb_stolen": budget,
        "use_probability": True,
    }
    if method == "copycat":
        attack = CopycatCNN(victim_clf, **common)
    else:
        attack = KnockoffNets(victim_clf, sampling_strategy="random", verbose=False, **common)
    attack.extract(queries.numpy(), thieved_classifier=thief)
    return surrogate.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--budgets", type=lambda s: [int(b) for b in s.split(",")], default=[100, 1000, 10000]
    )
    ap.add_argument("--sources", default="pool,transformed,jacobian")
    ap.add_argument(
        "--art",
        default="knockoff",
        help="ART methods: knockoff,copycat ('' to skip); on an exact-size query set "
        "both pick the same samples and train the same way",
    )
    ap.add_argument("--art-lr", type=float, default=1e-3)
    ap.add_argument("--eps", type=float, default=0.1, help="transfer attack ε (L∞)")
    ap.add_argument("--transfer-n", type=int, default=500)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3, help="victim training epochs")
    ap.add_argument("--seed", type=int, default=0, help="victim model and pool/evaluation split")
    ap.add_argument(
        "--seeds",
        type=lambda s: [int(b) for b in s.split(",")],
        default=[0, 1, 2],
        help="query-set and surrogate seeds, each a full repetition",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("art").setLevel(logging.WARNING)
    os.nice(5)
    torch.set_num_threads(args.threads)
    set_progress(False)
    data = load_dataset("fashion-mnist", root=args.data_root)
    victim = load_victim(args.out, width=args.width, epochs=args.epochs, seed=args.seed, data=data)
    spec = load_model(
        args.out / f"blackbox-fmnist-cnn-w{args.width}-e{args.epochs}-s{args.seed}"
    ).spec

    def build() -> nn.Module:
        return build_model(spec)

    perm = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(args.seed))
    half = len(perm) // 2
    pool = data.test.x[perm[:half]]
    x_eval, y_eval = data.test.x[perm[half:]], data.test.y[perm[half:]]
    victim_eval = predict_labels(victim, x_eval)
    ok = (victim_eval == y_eval).nonzero().squeeze(1)[: args.transfer_n]
    budgets = sorted(args.budgets)
    rows: list[dict] = []

    def record(
        method: str,
        seed: int,
        budget: int,
        surrogate: nn.Module | None,
        fid: float,
        acc: float,
        cpu: float,
    ) -> None:
        row = {
            "method": method,
            "seed": seed,
            "budget": budget,
            "fidelity": fid,
            "accuracy": acc,
            "cpu_s": cpu,
        }
        if surrogate is not None and budget == budgets[-1]:
            fooled = transfer_attack(
                surrogate,
                ModuleTarget(victim, kind="labels"),
                x_eval[ok],
                y_eval[ok],
                eps=args.eps,
                steps=20,
            )
            row["transfer_success_rate"] = float(fooled.float().mean())
        rows.append(row)
        log.info("%s", row)

    for seed in args.seeds:
        for source in [s for s in args.sources.split(",") if s]:
            cpu = time.process_time()
            torch.manual_seed(seed)
            curve = extraction_curve(
                ModuleTarget(victim),
                build,
                pool,
                x_eval,
                y_eval,
                victim_eval,
                source=source,
                budgets=budgets,
                seed=seed,
                epochs=EPOCHS,
                min_steps=MIN_STEPS,
                max_steps=MAX_STEPS,
                lr=LR,
            )
            cpu = time.process_time() - cpu
            for i, b in enumerate(budgets):
                last = i == len(budgets) - 1
                record(
                    f"bastion-{source}",
                    seed,
                    b,
                    curve.surrogate if last else None,
                    curve.fidelity[i],
                    curve.accuracy[i],
                    cpu if last else 0.0,
                )
        for method in [m for m in args.art.split(",") if m]:
            for b in budgets:
                queries = draw_queries(
                    "pool",
                    pool,
                    b,
                    bounds=(0.0, 1.0),
                    generator=torch.Generator().manual_seed(seed),
                )
                torch.manual_seed(seed)
                np.random.seed(seed)
                cpu = time.process_time()
                surrogate = art_extract(method, victim, build, queries, b, args.art_lr)
                cpu = time.process_time() - cpu
                pred = predict_labels(surrogate, x_eval)
                record(
                    f"art-{method}",
                    seed,
                    b,
                    surrogate,
                    float((pred == victim_eval).float().mean()),
                    float((pred == y_eval).float().mean()),
                    cpu,
                )

    victim_acc = float((victim_eval == y_eval).float().mean())
    print(
        f"\nFashion-MNIST cnn(width={args.width}), victim accuracy {victim_acc:.3f}; pool {half}, "
        f"evaluation {len(y_eval)}; mean ± std over seeds {args.seeds}\n"
    )
    print(table(rows, budgets))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as f:
        setting = {
            "bench": "extraction",
            "width": args.width,
            "victim_seed": args.seed,
            "victim_accuracy": victim_acc,
            "art_lr": args.art_lr,
        }
        for r in rows:
            f.write(json.dumps({**setting, **r}) + "\n")


def table(rows: list[dict], budgets: list[int]) -> str:
    def stat(values: list[float], fmt: str = "{:.3f}") -> str:
        t = torch.tensor(values, dtype=torch.float64)
        spread = f" ± {fmt.format(float(t.std()))}" if len(values) > 1 else ""
        return fmt.format(float(t.mean())) + spread

    lines = [
        "| method | "
        + " | ".join(f"fidelity @{b}" for b in budgets)
        + " | accuracy @max | transfer @max | CPU s per seed |",
        "|---" * (len(budgets) + 4) + "|",
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        at = {b: [r for r in mine if r["budget"] == b] for b in budgets}
        top = at[budgets[-1]]
        seeds = len(top)
        cells = [stat([r["fidelity"] for r in at[b]]) for b in budgets]
        cells.append(stat([r["accuracy"] for r in top]))
        cells.append(
            stat([100 * r.get("transfer_success_rate", float("nan")) for r in top], "{:.1f}%")
        )
        cells.append(f"{sum(r['cpu_s'] for r in mine) / seeds:.0f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
