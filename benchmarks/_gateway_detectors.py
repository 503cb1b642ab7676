"""Stateful query detectors through the real gateway over HTTP (issue 11 §4).

Used by ``bench_detectors.py --gateway`` (see its docstring). A victim CNN is trained on
part of the training split; the guard is fitted on those rows and calibrated on the rest
of the training split, which the model never saw; the model directory is served by
``create_app`` under uvicorn on a free loopback port, in this process (so that the
benchmark can read the guard's per-client state). Every client has its own API key and
talks HTTP through :class:`~bastion.attacks.http_target.HttpTarget`.

Two gateways run in turn from the same fitted guard: *measure* (policy
``extraction_action: flag``, so that every detector sees a client's whole sequence and its
own queries-until-alert can be read) and *enforce* (the default policy: the first alert
blocks the key; later requests answer 403). Attackers go first, then the benign clients,
so that benign clients replay test images that attackers already perturbed (the hard case
for a cross-client store). Rate limits are off (a separate control); auth, validation,
the input detectors and the audit log are on.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from bastion.attacks.extraction import ModelExtraction
from bastion.attacks.hopskipjump import hopskipjump
from bastion.attacks.http_target import HttpTarget
from bastion.attacks.square import square_attack
from bastion.data.dataset import DataBundle
from bastion.guard import GuardConfig, fit_guard
from bastion.guard.guard import Guard
from bastion.guard.simulate import (
    DETECTOR_NAMES,
    DetectorAlerts,
    SplitTarget,
    benign_order,
    client_alerts,
    kcenter_order,
)
from bastion.models.io import save_model
from bastion.models.predict import predict_labels
from bastion.models.train import train_model
from bastion.models.zoo import build_model, mlp, zoo_spec
from bastion.serve.app import create_app
from bastion.serve.settings import ServeSettings
from bastion.store.db import make_engine
from bastion.store.keys import create_key

COLUMNS = ("prada", "anomaly_rate", "similarity", "coverage")
LABELS = {
    "prada": "PRADA",
    "anomaly_rate": "anomaly rate",
    "similarity": "similarity",
    "coverage": "coverage",
}


@dataclass
class GatewayArgs:
    """Budgets of the gateway run (every figure states them)."""

    victim_rows: int
    epochs: int
    cnn: dict[str, int]
    benign: int = 20
    benign_queries: int = 450
    knockoff_pool: int = 225
    knockoff_budget: int = 1000
    jacobian_budget: int = 500
    square_points: int = 10
    square_queries: int = 100
    square_eps: float = 0.1
    hsj_points: int = 5
    hsj_queries: int = 200
    kcenter_budget: int = 450
    seed: int = 0


@dataclass
class AttackRow:
    name: str
    budget: str
    keys: list[str]
    queries: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)  # answered 202 (held) or 403
    alerts: list[DetectorAlerts] = field(default_factory=list)
    totals: list[int | None] = field(default_factory=list)  # split: total sent at each key's alert
    blocked: list[str | None] = field(default_factory=list)


class InProcessServer:
    """``create_app(settings)`` under uvicorn on a free port, in a thread of this process."""

    def __init__(self, settings: ServeSettings) -> None:
        import socket

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def guard(self) -> Guard:
        return self.app.state.runtime.guard

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        deadline = time.monotonic() + 180
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise SystemExit("the gateway did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def prepare(bundle: DataBundle, args: GatewayArgs, work: Path) -> tuple[Path, Guard, dict]:
    """Train the victim on ``victim_rows`` training rows, fit the guard on them and
    calibrate it on the remaining training rows (never trained on); save model + guard."""
    n = len(bundle.train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed + 11))
    fit_ds = bundle.train.subset(perm[: args.victim_rows])
    cal_ds = bundle.train.subset(perm[args.victim_rows :], split="train-heldout")
    torch.manual_seed(args.seed)
    spec = zoo_spec("cnn", bundle.train.shape, bundle.train.num_classes, **args.cnn)
    module = build_model(spec)
    train_model(module, fit_ds, epochs=args.epochs, seed=args.seed)
    module.eval()
    acc = float((predict_labels(module, bundle.test.x) == bundle.test.y).float().mean())
    model_dir = save_model(
        module,
        spec,
        work / "model",
        provenance={"data": bundle.name, "train_manifest": fit_ds.manifest().model_dump()},
    )
    cfg = GuardConfig(target_fpr=0.01, seed=args.seed)
    cfg.query.similarity.salt = 1000 + args.seed  # reproducible runs; default is a secret
    start = time.perf_counter()
    guard = fit_guard(module, fit_ds, config=cfg, calibration=cal_ds)
    fit_s = time.perf_counter() - start
    info = {
        "test_accuracy": acc,
        "victim_rows": len(fit_ds),
        "calibration_rows": len(cal_ds),
        "guard_fit_seconds": fit_s,
    }
    return model_dir, guard, info


def save_guards(guard: Guard, work: Path) -> dict[str, Path]:
    """The same fitted guard twice: policy ``flag`` on alerts (measure) and ``block``."""
    out = {}
    for mode, action in (("measure", "flag"), ("enforce", "block")):
        policy = guard.config.policy.model_copy(update={"extraction_action": action})
        guard.config = guard.config.model_copy(update={"policy": policy})
        out[mode] = work / f"guard-{mode}"
        guard.save(out[mode])
    return out


def keys_for(db: str, names: list[str]) -> dict[str, tuple[str, str]]:
    """One client key per name, plus ``admin``: name -> (key id, secret)."""
    engine = make_engine(db)
    out = {}
    for name in [*names, "admin"]:
        info, secret = create_key(engine, "admin" if name == "admin" else "client", name)
        out[name] = (str(info.id), secret)
    engine.dispose()
    return out


def attacker_plan(bundle: DataBundle, module_labels: torch.Tensor, args: GatewayArgs) -> list:
    """(name, budget text, number of keys, runner) for every attacker."""
    test = bundle.test
    k = bundle.train.num_classes
    shape = tuple(bundle.train.shape)
    gen = torch.Generator().manual_seed(args.seed + 61)
    perm = torch.randperm(len(test), generator=gen)
    pool = test.x[perm[: args.knockoff_pool]]
    ok = (module_labels == test.y).nonzero().flatten()

    def surrogate() -> torch.nn.Module:
        return mlp(input_shape=shape, num_classes=k, hidden=64, depth=1)

    def extraction(source: str, budget: int, data: torch.Tensor, seed: int) -> Callable:
        def run(target) -> None:
            ModelExtraction(
                surrogate,
                source=source,
                budget=budget,
                seed_size=50,
                seed=seed,
                min_steps=50,
                max_steps=150,
            ).fit(target, data)

        return run

    def square(points: torch.Tensor, seed: int) -> Callable:
        def run(target) -> None:
            square_attack(
                target,
                test.x[points],
                test.y[points],
                eps=args.square_eps,
                max_queries=args.square_queries,
                generator=torch.Generator().manual_seed(seed),
            )

        return run

    def hsj(target) -> None:
        points = ok[args.square_points * 2 : args.square_points * 2 + args.hsj_points]
        hopskipjump(
            target,
            test.x[points],
            test.y[points],
            norm="2",
            max_queries=args.hsj_queries,
            generator=torch.Generator().manual_seed(args.seed),
        )

    def kcenter(target) -> None:
        order = kcenter_order(test.x, args.kcenter_budget)
        for i in range(0, len(order), 16):
            target(test.x[order[i : i + 16]])

    sq = ok[: args.square_points]
    sq2 = ok[args.square_points : 2 * args.square_points]
    kb, pb = args.knockoff_budget, args.knockoff_pool
    n_test = len(test)
    nb = min(n_test, kb)
    return [
        (
            "Jacobian augmentation (Papernot)",
            f"{args.jacobian_budget} q, 50 seeds",
            1,
            "scores",
            extraction("jacobian", args.jacobian_budget, pool, args.seed),
        ),
        (
            "Knockoff, natural pool",
            f"{kb} q, pool {pb}",
            1,
            "scores",
            extraction("pool", kb, pool, args.seed),
        ),
        (
            "Knockoff, natural pool, split over 4 keys",
            f"{kb} q, pool {pb}",
            4,
            "scores",
            extraction("pool", kb, pool, args.seed + 1),
        ),
        (
            "Knockoff, pool >= budget (no reuse)",
            f"{nb} q, pool {n_test}",
            1,
            "scores",
            extraction("pool", nb, test.x, args.seed + 2),
        ),
        (
            "Knockoff, k-center order (ActiveThief-style)",
            f"{args.kcenter_budget} q, pool {n_test}",
            1,
            "scores",
            kcenter,
        ),
        (
            f"Square L∞ ε={args.square_eps:g}",
            f"{args.square_points} pts × {args.square_queries} q",
            1,
            "scores",
            square(sq, args.seed),
        ),
        (
            f"Square L∞ ε={args.square_eps:g}, split over 4 keys",
            f"{args.square_points} pts × {args.square_queries} q",
            4,
            "scores",
            square(sq2, args.seed + 1),
        ),
        (
            "HopSkipJump L2 (labels)",
            f"{args.hsj_points} pts × {args.hsj_queries} q",
            1,
            "labels",
            hsj,
        ),
    ]


def _total_at(log: list[tuple[int, int]], key: int, local: int | None) -> int | None:
    """Total queries (all keys) sent when key ``key`` had sent ``local`` of its own."""
    if local is None:
        return None
    seen, before = 0, 0
    for total, i in log:
        if i == key:
            seen += total - before
            if seen >= local:
                return total
        before = total
    return None


def run_gateway(
    mode: str,
    settings: ServeSettings,
    keys: dict[str, tuple[str, str]],
    plan: list,
    bundle: DataBundle,
    args: GatewayArgs,
) -> tuple[list[AttackRow], list[DetectorAlerts], list[str | None], dict[str, Any]]:
    """Attackers then benign clients through one gateway; what each detector concluded."""
    k = bundle.train.num_classes
    rows: list[AttackRow] = []
    extra: dict[str, Any] = {}
    with InProcessServer(settings) as srv, httpx.Client(timeout=60) as http:
        url = f"{srv.url}/v1/predict"

        def target(name: str, kind: str) -> HttpTarget:
            return HttpTarget(url, kind=kind, api_key=keys[name][1], client=http, num_classes=k)

        start = time.perf_counter()
        for name, budget, n_keys, kind, runner in plan:
            names = [f"{name} #{i}" for i in range(n_keys)]
            targets = [target(nm, kind) for nm in names]
            split = SplitTarget(targets, batch_size=16) if n_keys > 1 else None
            runner(split if split is not None else targets[0])
            row = AttackRow(name, budget, [keys[nm][0] for nm in names])
            for i, t in enumerate(targets):
                row.queries.append(t.queries)
                row.refused.append(t.refused)
                alerts = client_alerts(srv.guard, keys[names[i]][0])
                row.alerts.append(alerts)
                if split is not None:
                    row.totals.append(_total_at(split.log, i, alerts.first))
            rows.append(row)
        extra["attack_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(args.seed + 5)
        benign_ids = []
        for b in range(args.benign):
            name = f"benign {b}"
            order = benign_order(len(bundle.test), args.benign_queries, gen)
            t = target(name, "scores")
            for i in range(0, len(order), 8):
                t(bundle.test.x[order[i : i + 8]])
            benign_ids.append(keys[name][0])
        extra["benign_seconds"] = time.perf_counter() - start
        benign = [client_alerts(srv.guard, cid) for cid in benign_ids]
        admin = {"Authorization": f"Bearer {keys['admin'][1]}"}
        blocked = {
            str(b["client_id"]): b["reasons"]
            for b in http.get(f"{srv.url}/v1/clients/blocked", headers=admin).json()
        }
        for row in rows:
            row.blocked = [_blocked_by(blocked.get(cid)) for cid in row.keys]
        benign_blocked = [_blocked_by(blocked.get(cid)) for cid in benign_ids]
        extra["mode"] = mode
    return rows, benign, benign_blocked, extra


def _blocked_by(reasons: list[str] | None) -> str | None:
    """The stateful detectors named in the reasons of the key's block (None: not blocked)."""
    if reasons is None:
        return None
    text = " ".join(reasons)
    names = [
        name
        for needle, name in (
            ("PRADA", "PRADA"),
            ("anomaly rate", "anomaly rate"),
            ("similarity", "similarity"),
            ("coverage", "coverage"),
        )
        if needle in text
    ]
    return " + ".join(names) or "other"


def _cell(values: list[int | None]) -> str:
    shown = ["—" if v is None else str(v) for v in values]
    return shown[0] if len(shown) == 1 else "/".join(shown)


def table(
    rows: list[AttackRow],
    enforce: list[AttackRow],
    benign: list[DetectorAlerts],
    benign_blocked: list[str | None],
    args: GatewayArgs,
) -> str:
    head = (
        "| client | budget | queries sent (refused) | "
        + " | ".join(LABELS[c] for c in COLUMNS)
        + " | guard (first) | enforce: blocked by |"
    )
    lines = [head, "|" + "---|" * (len(COLUMNS) + 5)]
    for row, enf in zip(rows, enforce, strict=True):
        cells = [_cell([a.get(c) for a in row.alerts]) for c in COLUMNS]
        first = _cell([a.first for a in row.alerts])
        if row.totals:
            done = [t for t in row.totals if t is not None]
            first += (
                f" (all {len(row.keys)} keys by {max(done)} total)"
                if len(done) == len(row.totals)
                else f" ({len(done)} of {len(row.keys)} keys)"
            )
        blocked = "/".join(b or "not blocked" for b in enf.blocked)
        lines.append(
            f"| {row.name} | {row.budget} | {_cell(row.queries)} ({_cell(row.refused)}) | "
            + " | ".join(cells)
            + f" | {first} | {blocked} |"
        )
    fa = [sum(a.get(c) is not None for a in benign) for c in COLUMNS]
    guard_fa = sum(a.first is not None for a in benign)
    n = len(benign)
    lines.append(
        f"| {n} benign clients (test-set replay) | {args.benign_queries} q each | "
        f"{n * args.benign_queries} | "
        + " | ".join(f"{v} / {n} false alarms" for v in fa)
        + f" | {guard_fa} / {n} | {sum(b is not None for b in benign_blocked)} / {n} blocked |"
    )
    return "\n".join(lines)


def cost(guard: Guard, x: torch.Tensor, rounds: int = 3, n: int = 300) -> dict[str, float]:
    """Per-request cost of the query detectors: single-sample ``predict_and_inspect`` p50
    with and without them (interleaved rounds), and their own ``observe`` time."""
    out: dict[str, list[float]] = {"with": [], "without": []}
    query = guard.query
    for r in range(rounds):
        for label in ("with", "without"):
            guard.query = query if label == "with" else None
            times = []
            for i in range(n):
                t = time.perf_counter()
                guard.predict_and_inspect(x[i % len(x) : i % len(x) + 1], f"cost-{label}-{r}")
                times.append(time.perf_counter() - t)
            times.sort()
            out[label].append(times[len(times) // 2])
    guard.query = query
    outputs = guard.tap(x[:1])
    scaled = guard._scale(x)
    res = {}
    for name, fn in (
        ("similarity", lambda i: query.similarity.observe("cost-s", scaled[i : i + 1])),
        (
            "coverage",
            lambda i: query.coverage.observe("cost-c", outputs.features, outputs.predictions),
        ),
    ):
        t = time.perf_counter()
        for i in range(2000):
            fn(i % len(x))
        res[f"{name}_us"] = (time.perf_counter() - t) / 2000 * 1e6
    res["inspect_p50_ms_with"] = 1000 * min(out["with"])
    res["inspect_p50_ms_without"] = 1000 * min(out["without"])
    return res


def gateway_benchmark(label: str, bundle: DataBundle, args: GatewayArgs) -> dict[str, Any]:
    """The whole gateway run for one dataset; prints its table and returns the figures."""
    print(f"\n## {label}: stateful query detectors through the gateway over HTTP\n", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir, guard, info = prepare(bundle, args, work)
        sim, cov, ext = guard.query.similarity, guard.query.coverage, guard.extraction
        print(
            f"victim: zoo cnn on {info['victim_rows']} training rows, test accuracy "
            f"{info['test_accuracy']:.3f}; guard calibrated on the other "
            f"{info['calibration_rows']} training rows (never trained on), fit "
            f"{info['guard_fit_seconds']:.1f} s"
        )
        print(
            f"similarity: {sim.k_} hashes/query (window {sim.window_}, {sim.config.levels} "
            f"levels, {len(sim.stop_)} stop-listed), benign max match {sim.benign_max_} over "
            f"{sim.n_calibration_} held-out queries -> threshold {sim.threshold_}; alert at "
            f"{sim.config.min_hits} near-duplicates of one input in {sim.config.window_queries}"
            f" queries; stores {sim.config.global_store} global / {sim.config.client_store} "
            "per client"
        )
        print(
            f"coverage: {len(cov.centroids_)} cells on {cov.components_.shape[1]} PCs, "
            f"envelope of {cov.config.calibration_clients} simulated benign clients from "
            f"{cov.n_calibration_} held-out rows (+{cov.config.margin_cells:g} cells); "
            f"PRADA δ {ext.delta_:.4f} (benign min W {ext.benign_min_w_:.4f})"
        )
        labels = predict_labels(guard.tap.model, bundle.test.x)  # type: ignore[attr-defined]
        plan = attacker_plan(bundle, labels, args)
        names = [f"{p[0]} #{i}" for p in plan for i in range(p[2])]
        names += [f"benign {b}" for b in range(args.benign)]
        guard_dirs = save_guards(guard, work)
        results = {}
        for mode in ("measure", "enforce"):
            db = f"sqlite:///{work / (mode + '.db')}"
            keys = keys_for(db, names)
            settings = ServeSettings.model_validate(
                {
                    "model_dir": str(model_dir),
                    "db_url": db,
                    "guard": {"enabled": True, "required": True, "dir": str(guard_dirs[mode])},
                    "rate_limit": {"enabled": False},
                    "auth": {"cache_ttl_s": 60.0},
                    "blocks": {"expire_after_s": None},
                }
            )
            results[mode] = run_gateway(mode, settings, keys, plan, bundle, args)
            print(
                f"  {mode} gateway: attackers {results[mode][3]['attack_seconds']:.0f} s, "
                f"benign {results[mode][3]['benign_seconds']:.0f} s",
                flush=True,
            )
        rows, benign, _, _ = results["measure"]
        enforce_rows, _, enforce_benign_blocked, _ = results["enforce"]
        print()
        print(table(rows, enforce_rows, benign, enforce_benign_blocked, args))
        c = cost(guard, bundle.test.x)
        print(
            f"\nper-request cost (in process, 1 thread, single-sample inspect p50): "
            f"{c['inspect_p50_ms_with']:.3f} ms with the query detectors vs "
            f"{c['inspect_p50_ms_without']:.3f} ms without; observe per query: similarity "
            f"{c['similarity_us']:.0f} µs, coverage {c['coverage_us']:.0f} µs"
        )
    return {
        "info": info,
        "similarity": sim.state(),
        "rows": [
            {
                "name": r.name,
                "budget": r.budget,
                "queries": r.queries,
                "refused": r.refused,
                "alerts": [a.__dict__ for a in r.alerts],
                "totals": r.totals,
                "enforce_blocked": e.blocked,
            }
            for r, e in zip(rows, enforce_rows, strict=True)
        ],
        "benign": [a.__dict__ for a in benign],
        "benign_blocked_enforce": enforce_benign_blocked,
        "cost": c,
        "detectors": list(DETECTOR_NAMES),
    }
