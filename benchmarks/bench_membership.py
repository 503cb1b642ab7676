"""Membership-inference benchmark on Fashion-MNIST: LiRA vs the loss threshold vs ART's
MembershipInferenceBlackBox, side by side on one deliberately overfit model.

Protocol (Carlini et al. 2022, §V):

- population: ``--population`` random rows of the Fashion-MNIST training split;
- target: a small CNN trained on a random half of the population (``--epochs`` epochs,
  no validation split, so it overfits); the other half are the non-members;
- LiRA: ``--shadows`` shadow models with the same architecture and recipe, each on a
  balanced random half of the population; online / offline, per-example / fixed variance;
- loss threshold (Yeom et al. 2018) on the same points;
- ART 1.20.1 ``MembershipInferenceBlackBox`` (default NN attack model, on the target's
  softmax probabilities) needs labelled training data for its attack model: it is fitted on
  half of the members and half of the non-members and evaluated on the other halves.
  Every attack is reported on that same evaluation half ("eval half"), and ours also on
  the whole population.

Results are appended to ``--results`` (JSON lines) and printed as a table.

    nice python benchmarks/bench_membership.py            # ~5 CPU-minutes
    nice python benchmarks/bench_membership.py --quick    # < 1 CPU-minute
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bastion.attacks.inference import loss_threshold_scores, membership_metrics
from bastion.attacks.lira import LiRA
from bastion.data import load_dataset
from bastion.models.train import accuracy, train_model
from bastion.models.zoo import build_model, zoo_spec
from bastion.progress import set_progress

log = logging.getLogger("bench_membership")
RESULTS = Path(__file__).parent / "results" / "privacy_poisoning.jsonl"


def art_scores(
    model: nn.Module, fit_x, fit_y, fit_member, eval_x, eval_y, *, seed: int
) -> np.ndarray:
    """ART's black-box attack: an NN on (softmax probabilities, label) trained on known
    members/non-members; returns its member probability on the evaluation points."""
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox
    from art.estimators.classification import PyTorchClassifier

    torch.manual_seed(seed)
    np.random.seed(seed)
    probs = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    clf = PyTorchClassifier(
        model=probs,
        loss=nn.NLLLoss(),
        input_shape=tuple(fit_x.shape[1:]),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    attack = MembershipInferenceBlackBox(clf, input_type="prediction", attack_model_type="nn")
    fx, fy = fit_x.numpy(), fit_y.numpy()
    m = fit_member.numpy()
    attack.fit(fx[m], fy[m], fx[~m], fy[~m])
    return attack.infer(eval_x.numpy(), eval_y.numpy(), probabilities=True).ravel()


def row(name: str, scores, member, extra: dict | None = None) -> dict:
    m = membership_metrics(scores, member)
    return {
        "attack": name,
        "auc": round(m.auc, 4),
        "tpr_at_0.1%": round(m.tpr_at(0.001), 4),
        "tpr_at_1%": round(m.tpr_at(0.01), 4),
        "members": m.n_members,
        "nonmembers": m.n_nonmembers,
        **(extra or {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--population", type=int, default=8000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--shadows", type=int, default=16)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="2000 rows, 30 epochs, 8 shadows")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    if args.quick:
        args.population, args.shadows = 2000, 8
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.nice(5)
    torch.set_num_threads(args.threads)
    set_progress(False)
    cpu0, wall0 = time.process_time(), time.perf_counter()

    data = load_dataset("fashion-mnist", root=args.data_root)
    g = torch.Generator().manual_seed(args.seed)
    population = data.train.subset(torch.randperm(len(data.train), generator=g)[: args.population])
    n = len(population)
    member = torch.zeros(n, dtype=torch.bool)
    member[torch.randperm(n, generator=g)[: n // 2]] = True
    spec = zoo_spec("cnn", data.train.shape, 10, width=args.width, hidden=8 * args.width)
    recipe = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "val_fraction": 0.0,
    }

    torch.manual_seed(10_000 + args.seed)
    target = build_model(spec)
    t = time.process_time()
    train_model(
        target, population.subset(member.nonzero().flatten()), seed=10_000 + args.seed, **recipe
    )
    target_cpu = time.process_time() - t
    train_acc = accuracy(target, population.x[member], population.y[member])
    test_acc = accuracy(target, data.test.x, data.test.y)
    log.info("target: train acc %.3f, test acc %.3f, %.1f CPU-s", train_acc, test_acc, target_cpu)

    t = time.process_time()
    lira = LiRA(n_shadow=args.shadows, seed=args.seed, **recipe).fit(
        population, lambda: build_model(spec)
    )
    lira_cpu = time.process_time() - t
    log.info("LiRA: %d shadow models in %.1f CPU-s", args.shadows, lira_cpu)

    # evaluation half (the points ART's attack model did not train on)
    split = torch.rand(n, generator=g) < 0.5
    fit_idx, eval_idx = split.nonzero().flatten(), (~split).nonzero().flatten()
    x, y = population.x, population.y
    scores = {"loss threshold": loss_threshold_scores(target, x, y)}
    for online in (True, False):
        for fixed in (False, True):
            name = f"LiRA {'online' if online else 'offline'}{', fixed var' if fixed else ''}"
            scores[name] = lira.variant(online=online, fixed_variance=fixed).score(target, x, y)
    t = time.process_time()
    art = art_scores(
        target, x[fit_idx], y[fit_idx], member[fit_idx], x[eval_idx], y[eval_idx], seed=args.seed
    )
    art_cpu = time.process_time() - t

    setting = {
        "bench": "membership",
        "dataset": "fashion-mnist",
        "population": n,
        "shadows": args.shadows,
        "epochs": args.epochs,
        "model": f"cnn(width={args.width})",
        "train_acc": round(train_acc, 4),
        "test_acc": round(test_acc, 4),
        "seed": args.seed,
    }
    rows = []
    for name, s in scores.items():
        rows.append(row(name, s[eval_idx], member[eval_idx], {"on": "eval half"}))
        rows.append(row(name, s, member, {"on": "population"}))
    rows.append(row("ART MembershipInferenceBlackBox", art, member[eval_idx], {"on": "eval half"}))
    timing = {
        "target_cpu_s": round(target_cpu, 1),
        "lira_fit_cpu_s": round(lira_cpu, 1),
        "art_cpu_s": round(art_cpu, 1),
        "total_cpu_s": round(time.process_time() - cpu0, 1),
        "total_wall_s": round(time.perf_counter() - wall0, 1),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as f:
        for r in rows:
            f.write(json.dumps({**setting, **r, **timing}) + "\n")

    print(f"\nFashion-MNIST membership inference: {setting}\n{timing}")
    print(f"{'attack':36} {'on':11} {'AUC':>6} {'TPR@0.1%':>9} {'TPR@1%':>7}")
    for r in sorted(rows, key=lambda r: (r["on"], r["attack"])):
        print(
            f"{r['attack']:36} {r['on']:11} {r['auc']:6.3f} {r['tpr_at_0.1%']:9.4f} {r['tpr_at_1%']:7.4f}"
        )
    base = {r["on"]: r["tpr_at_0.1%"] for r in rows if r["attack"] == "loss threshold"}
    print(
        "\nTPR@0.1% relative to the loss threshold's (target: LiRA >= 5x; the probe's "
        "default is 'online, fixed var' below 64 shadows):"
    )
    for r in rows:
        if r["attack"].startswith("LiRA"):
            ratio = r["tpr_at_0.1%"] / base[r["on"]] if base[r["on"]] > 0 else float("inf")
            print(f"  {r['attack']:36} {r['on']:11} {ratio:6.1f}x")


if __name__ == "__main__":
    main()
