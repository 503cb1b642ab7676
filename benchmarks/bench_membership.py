"""Membership-inference benchmark on Fashion-MNIST: RMIA vs LiRA vs the loss threshold vs ART's
MembershipInferenceBlackBox, side by side on one deliberately overfit model.

Protocol (Carlini et al. 2022, §V):

- population: ``--population`` random rows of the Fashion-MNIST training split;
- target: a small CNN trained on a random half of the population (``--epochs`` epochs,
  no validation split, so it overfits); the other half are the non-members;
- LiRA: for each count in ``--shadows`` (default 2, 4 and 16), a separate fit of that many
  shadow models with the same architecture and recipe, each on a balanced random half of the
  population; online / offline, per-example / fixed variance;
- RMIA (Zarifzadeh et al. 2024): ``--references`` reference models (default 2) with the same
  recipe on balanced random halves of the population, offline (each candidate's OUT models
  only, the linear correction a estimated from the reference models), compared against the
  whole population as the z samples; the online variant on the same reference models is
  shown beside it. "RMIA offline, own data" is the paper's offline threat model: as many
  reference models trained on halves of as many *other* Fashion-MNIST training rows
  (disjoint from the candidates, so every candidate is OUT of all of them), which are also
  its z samples;
- loss threshold (Yeom et al. 2018) on the same points;
- ART 1.20.1 ``MembershipInferenceBlackBox`` (default NN attack model, on the target's
  softmax probabilities) needs labelled training data for its attack model: it is fitted on
  half of the members and half of the non-members and evaluated on the other halves.
  Every attack is reported on that same evaluation half ("eval half"), and ours also on
  the whole population.

Every attack scores the same candidates. TPRs come with their 95 % Clopper–Pearson
intervals; each attack's training cost is the CPU time of its fit. Results are appended to
``--results`` (JSON lines) and printed as a table, followed by the issue's target:
RMIA with 2 reference models at least as good as LiRA with 16 shadows at 1 % FPR.

    nice python benchmarks/bench_membership.py --population 4000 --epochs 60  # ~8 CPU-min
    nice python benchmarks/bench_membership.py --quick    # ~2 CPU-minutes
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
from bastion.attacks.rmia import RMIA
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
    ci = {
        f"tpr_at_{f * 100:g}%_ci": [round(v, 4) for v in m.tpr_ci.get(f, (float("nan"),) * 2)]
        for f in (0.001, 0.01)
    }
    return {
        "attack": name,
        "auc": round(m.auc, 4),
        "tpr_at_0.1%": round(m.tpr_at(0.001), 4),
        "tpr_at_1%": round(m.tpr_at(0.01), 4),
        **ci,
        "members": m.n_members,
        "nonmembers": m.n_nonmembers,
        **(extra or {}),
    }


def shadow_counts(text: str) -> list[int]:
    try:
        counts = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--shadows takes comma-separated integers, got {text!r}") from None
    if not counts or min(counts) < 2:
        raise SystemExit(f"--shadows needs counts >= 2, got {text!r}")
    return counts


def fmt_ci(r: dict, level: str) -> str:
    lo, hi = r[f"tpr_at_{level}_ci"]
    return f"{r[f'tpr_at_{level}'] * 100:5.2f} [{lo * 100:4.2f}, {hi * 100:5.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--population", type=int, default=8000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--shadows", default="2,4,16", help="LiRA shadow counts, one fit each")
    ap.add_argument("--references", type=int, default=2, help="RMIA reference models")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="2000 rows, 30 epochs, shadows 2,4,8")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    if args.quick:
        args.population, args.shadows = 2000, "2,4,8"
    counts = shadow_counts(args.shadows)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.nice(5)
    torch.set_num_threads(args.threads)
    set_progress(False)
    cpu0, wall0 = time.process_time(), time.perf_counter()

    data = load_dataset("fashion-mnist", root=args.data_root)
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(data.train), generator=g)
    population = data.train.subset(order[: args.population])
    outside = order[args.population :]
    if len(outside) < len(population):
        raise SystemExit("--population must be at most half of the 60 000 training images")
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

    # evaluation half (the points ART's attack model did not train on)
    split = torch.rand(n, generator=g) < 0.5
    fit_idx, eval_idx = split.nonzero().flatten(), (~split).nonzero().flatten()
    x, y = population.x, population.y
    scores = {"loss threshold": loss_threshold_scores(target, x, y)}
    fit_cpu: dict[str, float] = {"loss threshold": 0.0}

    t = time.process_time()
    rmia = RMIA(n_reference=args.references, seed=args.seed, **recipe).fit(
        population, lambda: build_model(spec)
    )
    rmia_cpu = time.process_time() - t
    log.info(
        "RMIA: %d reference models in %.1f CPU-s, a = %.3f", args.references, rmia_cpu, rmia.a_
    )
    k = args.references
    scores[f"RMIA@{k} offline"] = rmia.score(target, x, y)
    fit_cpu[f"RMIA@{k} offline"] = rmia_cpu
    if k >= 2:
        scores[f"RMIA@{k} online"] = rmia.variant(online=True).score(target, x, y)
        fit_cpu[f"RMIA@{k} online"] = rmia_cpu
    # the paper's offline threat model: reference models and z samples from population data
    # disjoint from the candidates (as many other Fashion-MNIST training rows), so every
    # candidate is OUT of all k reference models
    t = time.process_time()
    own = RMIA(n_reference=k, seed=args.seed + 1, **recipe).fit(
        data.train.subset(outside[:n], split="reference population"),
        lambda: build_model(spec),
    )
    own_name = f"RMIA@{k} offline, own data"
    fit_cpu[own_name] = time.process_time() - t
    scores[own_name] = own.score(target, x, y)
    log.info("RMIA on its own data: %.1f CPU-s, a = %.3f", fit_cpu[own_name], own.a_)

    lira_cpu = {}
    for count in counts:
        t = time.process_time()
        lira = LiRA(n_shadow=count, seed=args.seed, **recipe).fit(
            population, lambda: build_model(spec)
        )
        lira_cpu[count] = time.process_time() - t
        log.info("LiRA: %d shadow models in %.1f CPU-s", count, lira_cpu[count])
        for online in (True, False):
            for fixed in (False, True):
                name = f"LiRA@{count} {'online' if online else 'offline'}"
                name += ", fixed var" if fixed else ""
                scores[name] = lira.variant(online=online, fixed_variance=fixed).score(target, x, y)
                fit_cpu[name] = lira_cpu[count]
        del lira
    t = time.process_time()
    art = art_scores(
        target, x[fit_idx], y[fit_idx], member[fit_idx], x[eval_idx], y[eval_idx], seed=args.seed
    )
    art_cpu = time.process_time() - t

    setting = {
        "bench": "membership",
        "dataset": "fashion-mnist",
        "population": n,
        "shadows": counts,
        "references": args.references,
        "rmia_a": round(rmia.a_, 4),
        "rmia_own_data_a": round(own.a_, 4),
        "epochs": args.epochs,
        "model": f"cnn(width={args.width})",
        "train_acc": round(train_acc, 4),
        "test_acc": round(test_acc, 4),
        "seed": args.seed,
    }
    rows = []
    for name, s in scores.items():
        cost = {"fit_cpu_s": round(fit_cpu[name], 1)}
        rows.append(row(name, s[eval_idx], member[eval_idx], {"on": "eval half", **cost}))
        rows.append(row(name, s, member, {"on": "population", **cost}))
    art_cost = {"on": "eval half", "fit_cpu_s": round(art_cpu, 1)}
    rows.append(row("ART MembershipInferenceBlackBox", art, member[eval_idx], art_cost))
    timing = {
        "target_cpu_s": round(target_cpu, 1),
        "rmia_fit_cpu_s": round(rmia_cpu, 1),
        "lira_fit_cpu_s": {str(c): round(v, 1) for c, v in lira_cpu.items()},
        "art_cpu_s": round(art_cpu, 1),
        "total_cpu_s": round(time.process_time() - cpu0, 1),
        "total_wall_s": round(time.perf_counter() - wall0, 1),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as f:
        for r in rows:
            f.write(json.dumps({**setting, **r, **timing}) + "\n")

    print(f"\nFashion-MNIST membership inference: {setting}\n{timing}")
    head = f"{'attack':30} {'on':11} {'AUC':>6} {'TPR@0.1% [95% CI]':>22} {'TPR@1% [95% CI]':>22}"
    print(head + f" {'fit CPU-s':>9}")
    for r in sorted(rows, key=lambda r: (r["on"], r["attack"])):
        print(
            f"{r['attack']:30} {r['on']:11} {r['auc']:6.3f} {fmt_ci(r, '0.1%'):>22} "
            f"{fmt_ci(r, '1%'):>22} {r['fit_cpu_s']:9.1f}"
        )
    base = {r["on"]: r["tpr_at_0.1%"] for r in rows if r["attack"] == "loss threshold"}
    print("\nTPR@0.1% relative to the loss threshold's:")
    for r in rows:
        if r["attack"].startswith(("LiRA", "RMIA")):
            b = base[r["on"]]
            ratio = "n/a" if b != b else f"{r['tpr_at_0.1%'] / b:.1f}x" if b > 0 else "inf"
            print(f"  {r['attack']:30} {r['on']:11} {ratio:>7}")
    most = max(counts)
    print(f"\nTarget: RMIA@{k} (offline) TPR@1% >= the best LiRA@{most} variant's TPR@1%")
    for on in ("population", "eval half"):
        best = max(
            (r for r in rows if r["attack"].startswith(f"LiRA@{most} ") and r["on"] == on),
            key=lambda r: r["tpr_at_1%"],
        )
        for name in (f"RMIA@{k} offline", own_name):
            ours = next(r for r in rows if r["attack"] == name and r["on"] == on)
            verdict = "met" if ours["tpr_at_1%"] >= best["tpr_at_1%"] else "missed"
            print(
                f"  {on:11} {name:26} {ours['tpr_at_1%'] * 100:5.2f} % vs {best['attack']} "
                f"{best['tpr_at_1%'] * 100:.2f} %: {verdict}"
            )


if __name__ == "__main__":
    main()
