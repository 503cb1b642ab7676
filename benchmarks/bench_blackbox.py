"""Black-box evasion benchmark on Fashion-MNIST, side by side with IBM ART 1.20.1.

Same model, same images, one process: the zoo CNN (``--width``, trained ``--epochs`` on the
60 000 training images, cached under ``bench-out/``) and the first ``--n`` test images it
classifies correctly.

- Square attack (L∞, ε = ``--eps``, the same ``p_init`` for both) vs ART's SquareAttack at
  each query budget in ``--queries``: success rate (victim fooled within ε) and time.
  ART's ``max_iter`` is the budget minus its two bookkeeping queries per point (clean check
  and initialisation); both tools' queries are counted at the model.
- HopSkipJump (L2, untargeted) vs ART's HopSkipJump: ART runs ``--hsj-iters`` iterations
  per image (its own query count varies); ours then gets the same number of queries per
  point (ART's mean). Median L2 over the images and time.

    nice python benchmarks/bench_blackbox.py               # ~10 CPU-minutes, 1 thread
    nice python benchmarks/bench_blackbox.py --n 30 --queries 1000 --hsj-iters 3  # quick
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

from bastion.attacks.blackbox import ModuleTarget, hopskipjump, square_attack
from bastion.data import load_dataset
from bastion.models.io import load_model, save_model
from bastion.models.train import train_model
from bastion.models.zoo import build_model, zoo_spec
from bastion.progress import set_progress

log = logging.getLogger("bench_blackbox")
RESULTS = Path(__file__).parent / "results" / "blackbox.jsonl"


def load_victim(out: Path, *, width: int, epochs: int, seed: int, data) -> nn.Module:
    """The benchmark's Fashion-MNIST CNN, trained once and cached under ``out``."""
    path = out / f"blackbox-fmnist-cnn-w{width}-e{epochs}-s{seed}"
    if (path / "model.safetensors").exists():
        return load_model(path).module.eval()
    log.info(
        "training the Fashion-MNIST CNN (width %d, %d epochs): cached in %s", width, epochs, path
    )
    spec = zoo_spec("cnn", data.train.shape, data.train.num_classes, width=width, hidden=8 * width)
    torch.manual_seed(seed)
    model = build_model(spec)
    train_model(model, data.train, epochs=epochs, batch_size=64, lr=1e-3, seed=seed)
    save_model(
        model, spec, path, provenance={"data": "fashion-mnist", "epochs": epochs, "seed": seed}
    )
    return model.eval()


def correct_images(model: nn.Module, data, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.test.x[: 4 * n], data.test.y[: 4 * n]
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok][:n], y[ok][:n]


def art_classifier(model: nn.Module, shape: tuple[int, ...], classes: int):
    """An ART PyTorchClassifier over ``model`` that counts the samples it is asked about."""
    from art.estimators.classification import PyTorchClassifier

    class Counting(PyTorchClassifier):
        queries = 0

        def predict(self, x, batch_size=128, training_mode=False, **kwargs):  # type: ignore[override]
            Counting.queries += len(x)
            x = np.asarray(x, dtype=np.float32)  # ART's HopSkipJump hands over float64
            return super().predict(x, batch_size=batch_size, training_mode=training_mode, **kwargs)

    return Counting(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=shape,
        nb_classes=classes,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def fooled(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def bench_square(args, model, x, y, rows: list[dict]) -> None:
    for budget in args.queries:
        target = ModuleTarget(model)
        res, wall, cpu = timed(
            lambda b=budget, t=target: square_attack(
                t,
                x,
                y,
                eps=args.eps,
                max_queries=b,
                p_init=args.p_init,
                generator=torch.Generator().manual_seed(args.seed),
            )
        )
        within = (res.x_adv - x).flatten(1).abs().amax(1) <= args.eps + 1e-6
        ok = fooled(model, res.x_adv, y) & within
        rows.append(
            {
                "attack": "square",
                "tool": "bastion",
                "queries": budget,
                "eps": args.eps,
                "success_rate": float(ok.float().mean()),
                "mean_queries": target.queries / len(y),
                "wall_s": wall,
                "cpu_s": cpu,
            }
        )
        log.info("%s", rows[-1])
        if args.skip_art:
            continue
        from art.attacks.evasion import SquareAttack

        # ART asks the model three times per iteration (robustness check of every point,
        # current loss, proposal loss): run it with as many iterations as our budget (equal
        # proposals) and with a third of them (equal queries at the model).
        for label, iters in (
            ("art (equal iterations)", budget - 2),
            ("art (equal queries)", budget // 3),
        ):
            clf = art_classifier(model, tuple(x.shape[1:]), 10)
            type(clf).queries = 0
            np.random.seed(args.seed)
            attack = SquareAttack(
                clf,
                norm=np.inf,
                eps=args.eps,
                max_iter=max(1, iters),
                p_init=args.p_init,
                nb_restarts=1,
                batch_size=128,
                verbose=False,
            )
            adv, wall, cpu = timed(lambda a=attack: a.generate(x.numpy(), y=y.numpy()))
            adv = torch.from_numpy(adv)
            within = (adv - x).flatten(1).abs().amax(1) <= args.eps + 1e-6
            ok = fooled(model, adv, y) & within
            rows.append(
                {
                    "attack": "square",
                    "tool": label,
                    "queries": budget,
                    "eps": args.eps,
                    "success_rate": float(ok.float().mean()),
                    "mean_queries": type(clf).queries / len(y),
                    "wall_s": wall,
                    "cpu_s": cpu,
                }
            )
            log.info("%s", rows[-1])


def bench_hsj(args, model, x, y, rows: list[dict], iters: int) -> None:
    budget = args.hsj_queries
    if not args.skip_art:
        from art.attacks.evasion import HopSkipJump

        clf = art_classifier(model, tuple(x.shape[1:]), 10)
        np.random.seed(args.seed)
        attack = HopSkipJump(
            clf,
            norm=2,
            max_iter=iters,
            max_eval=10_000,
            init_eval=100,
            init_size=100,
            batch_size=64,
            verbose=False,
        )
        per_point, advs = [], []

        def run_art() -> None:
            for i in range(len(x)):
                before = type(clf).queries
                advs.append(attack.generate(x[i : i + 1].numpy()))
                per_point.append(type(clf).queries - before)

        _, wall, cpu = timed(run_art)
        adv = torch.from_numpy(np.concatenate(advs))
        ok = fooled(model, adv, y)
        dist = torch.where(ok, (adv - x).flatten(1).norm(dim=1), torch.tensor(float("inf")))
        budget = int(round(float(np.mean(per_point))))
        rows.append(
            {
                "attack": "hopskipjump",
                "tool": "art",
                "iterations": iters,
                "mean_queries": float(np.mean(per_point)),
                "max_queries": int(np.max(per_point)),
                "success_rate": float(ok.float().mean()),
                "median_l2": float(dist.median()),
                "wall_s": wall,
                "cpu_s": cpu,
            }
        )
        log.info("%s", rows[-1])
    target = ModuleTarget(model, kind="labels")
    res, wall, cpu = timed(
        lambda: hopskipjump(
            target,
            x,
            y,
            norm="2",
            max_queries=budget,
            generator=torch.Generator().manual_seed(args.seed),
        )
    )
    ok = fooled(model, res.x_adv, y) & res.success
    dist = torch.where(ok, res.distance(x, "2"), torch.tensor(float("inf")))
    rows.append(
        {
            "attack": "hopskipjump",
            "tool": "bastion",
            "mean_queries": target.queries / len(y),
            "max_queries": int(res.queries.max()),
            "success_rate": float(ok.float().mean()),
            "median_l2": float(dist.median()),
            "wall_s": wall,
            "cpu_s": cpu,
        }
    )
    log.info("%s", rows[-1])


def table(rows: list[dict]) -> str:
    lines = [
        "| attack | tool | queries/point | success | median L2 | wall s | CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        med = f"{r['median_l2']:.3f}" if "median_l2" in r else "—"
        q = f"{r.get('queries', r['mean_queries']):.0f}" + (
            f" (mean {r['mean_queries']:.0f})" if "queries" in r else " (mean)"
        )
        lines.append(
            f"| {r['attack']} | {r['tool']} | {q} | {r['success_rate']:.1%} | {med} | "
            f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="images attacked")
    ap.add_argument(
        "--queries", type=lambda s: [int(q) for q in s.split(",")], default=[1000, 5000]
    )
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--p-init", type=float, default=0.3)
    ap.add_argument(
        "--hsj-iters",
        type=lambda s: [int(q) for q in s.split(",")],
        default=[5, 12],
        help="ART HopSkipJump iterations (each sets the query budget for ours)",
    )
    ap.add_argument("--hsj-queries", type=int, default=1000, help="ours, when ART is skipped")
    ap.add_argument("--only", default="square,hsj")
    ap.add_argument("--skip-art", action="store_true")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
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
    model = load_victim(args.out, width=args.width, epochs=args.epochs, seed=args.seed, data=data)
    x, y = correct_images(model, data, args.n)
    rows: list[dict] = []
    if "square" in args.only:
        bench_square(args, model, x, y, rows)
    if "hsj" in args.only:
        for iters in args.hsj_iters:
            bench_hsj(args, model, x, y, rows, iters)
    print(f"\nFashion-MNIST cnn(width={args.width}), {len(y)} correctly classified test images\n")
    print(table(rows))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as f:
        setting = {
            "bench": "blackbox",
            "n": len(y),
            "width": args.width,
            "epochs": args.epochs,
            "seed": args.seed,
            "threads": args.threads,
        }
        for r in rows:
            f.write(json.dumps({**setting, **r}) + "\n")


if __name__ == "__main__":
    main()
