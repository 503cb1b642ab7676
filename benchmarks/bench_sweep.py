"""Sweep wall time, locally and on a local Ray: 3 models × 2 threat models, the same sweep
file run by :func:`bastion.scale.sweep.run_sweep` with the local executor (one process, one
torch thread) and with a Ray started here with ``num_cpus`` CPUs (one task per probe shard,
one torch thread each); then checks that both wrote the same summary and the same reports
(timings aside). Prints one table (docs/benchmarks/sweep.md).

    .venv/bin/python benchmarks/bench_sweep.py [--cpus 2] [--json out.json]

Models (trained here, a few seconds): a CNN and an MLP on digits, an MLP on raw
breast-cancer features (CSV). Threat models: ``white-box`` (FGSM, PGD-50, APGD-CE-100 at
ε=0.1 on 300 points, the 10-point APGD curve, Square and HopSkipJump on 100 points with
1000 queries each) and ``queries`` (scores access: the same black-box evasion, extraction
with 200, 1000 and 3000 queries, membership inference with eight LiRA shadow models and two
RMIA reference models, each trained for 5 epochs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bastion.assess.executor import LocalExecutor, RayExecutor
from bastion.assess.schema import Budgets, Report, ThreatModel
from bastion.data import load_dataset
from bastion.models.io import save_model
from bastion.models.train import train_model
from bastion.models.zoo import build_model, zoo_spec
from bastion.progress import set_progress
from bastion.scale.sweep import SweepConfig, SweepSummary, run_sweep

RECIPE = {"epochs": 5, "lr": 1e-2, "batch_size": 64, "seed": 0}
WHITE_BOX = ThreatModel(
    eps=[0.1],
    attacks=["fgsm", "pgd", "apgd-ce"],
    probes=["evasion", "blackbox"],
    budgets=Budgets(n_eval=300, pgd_steps=50, apgd_steps=100, queries=1000, n_blackbox=100),
)
QUERIES = ThreatModel(
    access="scores",
    eps=[0.1],
    probes=["blackbox", "extraction", "membership"],
    budgets=Budgets(
        n_eval=300,
        queries=1000,
        n_blackbox=100,
        extraction_queries=[200, 1000, 3000],
        shadow_models=8,
        reference_models=2,
    ),
)


def write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    header = "label," + ",".join(f"f{i}" for i in range(x.shape[1]))
    rows = [",".join([str(int(t)), *(f"{v:.6g}" for v in r)]) for r, t in zip(x, y, strict=True)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def make_model(out: Path, data: str, kind: str, epochs: int, **params: int) -> Path:
    bundle = load_dataset(data)
    torch.manual_seed(0)
    spec = zoo_spec(kind, bundle.train.shape, bundle.train.num_classes, **params)
    module = build_model(spec)
    train_model(module, bundle.train, epochs=epochs, seed=0, lr=1e-2)
    save_model(module, spec, out, provenance={"data": data, "recipe": RECIPE})
    return out


def sweep_config(root: Path) -> SweepConfig:
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer()
    csv = write_csv(root / "bc.csv", raw.data.astype(np.float32), raw.target)
    models = [
        ("cnn", make_model(root / "cnn", "digits", "cnn", 3, width=8, hidden=32)),
        ("mlp", make_model(root / "mlp", "digits", "mlp", 3, hidden=64)),
        ("bc-mlp", make_model(root / "bc", str(csv), "mlp", 20, hidden=32)),
    ]
    return SweepConfig.model_validate(
        {
            "seed": 0,
            "models": [
                {"name": n, "path": str(p), "members": "train-split", "training": RECIPE}
                for n, p in models
            ],
            "threat_models": [
                {"name": "white-box", "threat": WHITE_BOX.model_dump()},
                {"name": "queries", "threat": QUERIES.model_dump()},
            ],
        }
    )


def comparable(path: Path) -> dict:
    """A report.json without timings (seconds, created, durations quoted in notes)."""
    data = json.loads(Report.model_validate_json(path.read_text()).model_dump_json())
    for key in ("created", "seconds"):
        data.pop(key)
    for f in data["findings"]:
        f.pop("seconds")
        f["notes"] = [re.sub(r"\b\d+(\.\d+)? s\b", "T s", n) for n in f["notes"]]
    return data


def rows_of(summary: SweepSummary) -> list[dict]:
    return [r.model_dump(exclude={"seconds"}) for r in summary.rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    set_progress(False)
    os.environ.setdefault("BASTION_DB", f"sqlite:///{tempfile.mkdtemp()}/bench.db")
    import ray

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        root = Path(tmp)
        cfg = sweep_config(root)
        load = os.getloadavg()[0]
        spent: dict[str, list[float]] = {"local": [], "ray": []}
        on_done = lambda key: lambda plan, result: spent[key].append(result.seconds)  # noqa: E731
        start = time.perf_counter()
        local = run_sweep(cfg, root / "local", LocalExecutor(on_done("local")), record=False)
        t_local = time.perf_counter() - start

        start = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        t_init = time.perf_counter() - start
        executor = RayExecutor(threads=1, on_done=on_done("ray"))
        remote = run_sweep(cfg, root / "ray", executor, record=False)
        t_ray = time.perf_counter() - start
        ray.shutdown()
        load_end = os.getloadavg()[0]

        same_summary = rows_of(local) == rows_of(remote)
        same_reports = all(
            comparable(root / "local" / r.report) == comparable(root / "ray" / r.report)
            for r in local.rows
        )
    tasks = len(executor.submitted)
    probes = len({(t.out_dir, t.probe) for t in executor.submitted})
    figures = {
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "pairs": len(local.rows),
        "probes": probes,
        "shard_tasks": tasks,
        "load_average_at_start": round(load, 2),
        "load_average_at_end": round(load_end, 2),
        "local_s": round(t_local, 1),
        "local_probe_s": round(sum(spent["local"]), 1),
        "ray_probe_s": round(sum(spent["ray"]), 1),
        "longest_probe_s": round(max(spent["local"]), 1),
        "ray_s": round(t_ray, 1),
        "ray_start_s": round(t_init, 1),
        "ray_cpus": args.cpus,
        "speedup": round(t_local / t_ray, 2),
        "speedup_after_start": round(t_local / (t_ray - t_init), 2),
        "equal_summary": same_summary,
        "equal_reports": same_reports,
    }
    print(
        f"sweep: {len(cfg.models)} models × {len(cfg.threat_models)} threat models = "
        f"{len(local.rows)} assessments, {probes} probes in {tasks} shard tasks; {figures['machine']}"
    )
    print(
        f"load average (1 min) at start {load:.2f}, at end {load_end:.2f}; "
        f"longest probe {figures['longest_probe_s']} s"
    )
    print(
        "| executor | wall time (s) | probe time, sum (s) | speed-up | same summary | same reports |"
    )
    print("|---|---:|---:|---:|---|---|")
    print(
        f"| local (1 process, 1 thread) | {t_local:.1f} | {figures['local_probe_s']} | 1.00 | – | – |"
    )
    print(
        f"| ray (local, num_cpus={args.cpus}, incl. {t_init:.1f} s start-up) | {t_ray:.1f} | "
        f"{figures['ray_probe_s']} | {figures['speedup']:.2f} | {same_summary} | {same_reports} |"
    )
    print(
        f"| ray, start-up excluded | {t_ray - t_init:.1f} | | "
        f"{figures['speedup_after_start']:.2f} | | |"
    )
    print()
    print(
        "| pair | score | findings | evasion robust acc. | extraction fidelity | membership AUC |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in local.rows:
        m = r.metrics
        cells = [
            f"{m[k]:.3f}" if k in m else "–"
            for k in ("evasion.robust_accuracy", "extraction.fidelity", "membership.auc")
        ]
        print(f"| {r.pair} | {r.score:.1f} | {r.findings} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if not (same_summary and same_reports):
        raise SystemExit("the Ray sweep's results differ from the local sweep's")


if __name__ == "__main__":
    main()
