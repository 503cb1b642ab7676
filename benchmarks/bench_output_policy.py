"""What the gateway's output policy costs an attacker (issue 11 §5), through the real gateway.

A zoo CNN trained on digits is served (in process, over HTTP through the ASGI app) with
``output.mode`` = scores, top-k (k = 1) and labels; the same attacker with the same query
budgets then tries, through :class:`~bastion.attacks.http_target.HttpTarget`:

- evasion: Square (L∞, needs scores) and HopSkipJump (decision-based, labels suffice), at
  ε = ``--eps`` with ``--queries`` queries per point, on the first ``--n`` test images the
  model classifies correctly; success = fooled within ε (HopSkipJump: its final distance);
- extraction: Knockoff-style copies from the held-out pool (the assessment's probe recipe)
  at each budget of ``--budgets``, fidelity on the other half of the test split.

Under ``top-k`` with k = 1 and under ``labels`` the gateway returns no probability vector, so
a score-based attack has nothing to work with (its row says so) and extraction learns from
labels. Guard off, rate limits off: this measures what the answers reveal, nothing else.

    python benchmarks/bench_output_policy.py             # ≈ 2–4 CPU-minutes
    python benchmarks/bench_output_policy.py --n 20 --queries 200 --budgets 100,500
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from fastapi.testclient import TestClient

from bastion.attacks.extraction import extraction_curve
from bastion.attacks.hopskipjump import hopskipjump
from bastion.attacks.http_target import HttpTarget
from bastion.attacks.square import square_attack
from bastion.attacks.targets import QueryBudget
from bastion.data import load_dataset
from bastion.errors import TargetError
from bastion.models.io import load_model, save_model
from bastion.models.predict import predict_labels
from bastion.models.train import train_model
from bastion.models.zoo import build_model, zoo_spec
from bastion.serve.app import create_app
from bastion.serve.settings import ServeSettings
from bastion.store.db import make_engine
from bastion.store.keys import create_key

RESULTS = Path(__file__).parent / "results" / "output_policy.jsonl"
MODES = ({"mode": "scores"}, {"mode": "top-k", "k": 1}, {"mode": "labels"})


def victim(out: Path, data, seed: int) -> Path:
    torch.manual_seed(seed)
    spec = zoo_spec("cnn", data.train.shape, data.train.num_classes)
    model = build_model(spec)
    train_model(model, data.train, epochs=10, batch_size=64, lr=1e-3, seed=seed)
    provenance = {"data": "digits", "train_manifest": data.train.manifest().model_dump()}
    return save_model(model.eval(), spec, out / "model", provenance=provenance)


def run_mode(policy: dict, model_dir: Path, data, args, tmp: Path) -> list[dict]:
    db = f"sqlite:///{tmp / (policy['mode'] + '.db')}"
    settings = ServeSettings.model_validate(
        {
            "model_dir": str(model_dir),
            "db_url": db,
            "guard": {"enabled": False},
            "rate_limit": {"enabled": False},
            "limits": {"max_batch": 256},
            "output": policy,
        }
    )
    engine = make_engine(db)
    _, secret = create_key(engine, "client", "attacker")
    engine.dispose()
    name = policy["mode"] + (f" (k={policy['k']})" if "k" in policy else "")
    rows = []
    module = load_model(model_dir).module
    x_all, y_all = data.test.x, data.test.y
    ok = (predict_labels(module, x_all) == y_all).nonzero().flatten()[: args.n]
    x, y = x_all[ok], y_all[ok]
    with TestClient(create_app(settings)) as client:
        url = "http://testserver/v1/predict"

        def target(kind: str) -> HttpTarget:
            return HttpTarget(url, kind=kind, api_key=secret, client=client, num_classes=10)

        # Square: needs scores
        start = time.perf_counter()
        try:
            t = QueryBudget(target("scores"), args.queries * len(y))
            res = square_attack(
                t,
                x,
                y,
                eps=args.eps,
                max_queries=args.queries,
                generator=torch.Generator().manual_seed(0),
            )
            square = f"{float(res.success.float().mean()):.1%}"
        except TargetError:
            square = "not possible: the gateway returns no scores"
        rows.append(
            {
                "output": name,
                "attack": "Square (scores)",
                "budget": args.queries,
                "result": square,
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
        # HopSkipJump: labels suffice
        start = time.perf_counter()
        t = QueryBudget(target("labels"), args.queries * len(y))
        res = hopskipjump(
            t,
            x,
            y,
            norm="inf",
            max_queries=args.queries,
            generator=torch.Generator().manual_seed(0),
        )
        d = (res.x_adv - x).flatten(1).abs().amax(1)
        hsj = float((res.success & (d <= args.eps + 1e-6)).float().mean())
        rows.append(
            {
                "output": name,
                "attack": "HopSkipJump (labels)",
                "budget": args.queries,
                "result": f"{hsj:.1%}",
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
        # extraction: scores where the policy gives them, else labels
        perm = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(61))
        half = len(perm) // 2
        pool, xe = x_all[perm[:half]], x_all[perm[half:]]
        ye, ve = y_all[perm[half:]], predict_labels(module, x_all[perm[half:]])
        kind = "scores" if policy["mode"] == "scores" else "labels"
        start = time.perf_counter()
        spec = zoo_spec("cnn", data.train.shape, 10)
        curve = extraction_curve(
            QueryBudget(target(kind), max(args.budgets)),
            lambda: build_model(spec),
            pool,
            xe,
            ye,
            ve,
            source="pool",
            budgets=args.budgets,
            seed=0,
            min_steps=100,
            max_steps=400,
        )
        for b, f in zip(args.budgets, curve.fidelity, strict=True):
            rows.append(
                {
                    "output": name,
                    "attack": f"extraction fidelity ({kind})",
                    "budget": b,
                    "result": f"{f:.3f}",
                    "seconds": round(time.perf_counter() - start, 2),
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--budgets", type=lambda s: [int(v) for v in s.split(",")], default=[100, 1000])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("digits", seed=args.seed)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = victim(Path(tmp), data, args.seed)
        for policy in MODES:
            rows += run_mode(policy, model_dir, data, args, Path(tmp))
    lines = ["| output | attack | budget | result | seconds |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['output']} | {r['attack']} | {r['budget']} | {r['result']} | {r['seconds']} |"
        for r in rows
    ]
    print("\n".join(lines))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        for r in rows:
            f.write(json.dumps({**r, "eps": args.eps, "n": args.n}) + "\n")


if __name__ == "__main__":
    main()
