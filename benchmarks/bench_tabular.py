"""Tabular black-box evasion benchmark on breast cancer, side by side with IBM ART 1.20.1.

Same models, same rows, one process. sklearn's breast-cancer data (569 rows, 30 features),
a stratified 75/25 split (``--seed``); three victims built here: a scikit-learn
``GradientBoostingClassifier``, a torch MLP (standardisation inside the module) and a single
``DecisionTreeClassifier``. Every attack runs in the range-normalised space
``z = (x − lo) / (hi − lo)`` ∈ [0, 1]^30 (lo/hi: the training split's per-feature min/max,
:class:`~bastion.assess.space.AttackSpace`), so a *relative* ε is plain L∞ ε in z; test rows
are clipped into that box and the models are evaluated on ``lo + z · (hi − lo)``.

For each model, each ε in ``--eps`` and each per-point query budget in ``--queries``, all the
correctly classified test rows are attacked by

- Bastion Square (L∞, scores) and ART SquareAttack (L∞, scores; ART's Square only takes
  images, so the 30 features are laid out as a 1×5×6 image), both with ``--p-init``. ART's
  ``max_iter`` is (budget − 3) / 3: its start costs 3 queries a point and every iteration
  3 more (robustness check, current loss, proposal loss), so no point gets more than the
  budget, as with ours (a hard cap per point).
- Bastion HopSkipJump (L∞, labels only, capped at the budget per point) and ART
  HopSkipJump (``norm=np.inf``), whose iterations and ``init_eval`` are set so that its
  queries per point come to about the budget (:func:`art_hsj_schedule`). ART starts from
  uniform noise, which these models put in one class, so a second ART row gets a start
  (``x_adv_init``): another attacked row of the other class, the fallback Bastion's own
  HopSkipJump uses. Both are minimum-norm (no ε): each runs once per budget and is scored
  at every ε, so the ε rows share its wall time.
- On the tree only: ART's DecisionTreeAttack, a *white-box reference* (it reads the tree's
  thresholds and asks no queries; minimal perturbation, no ε): its success within ε.

Every query of either tool goes through one counting function at the model (mean queries
per point are those counts; the max is per point where it can be told). Success is checked
here on the returned points, trusting neither tool: the model's label changes,
``‖z_adv − z‖∞ ≤ ε + 1e-6`` and ``z_adv`` lies in [0, 1]^30 (± 1e-6).

    nice .venv/bin/python benchmarks/bench_tabular.py          # ~1 min on 2 cores, 1 thread
    nice .venv/bin/python benchmarks/bench_tabular.py --quick  # ~15 s: 40 rows, budgets 100,500
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bastion.assess.space import AttackSpace
from bastion.attacks.blackbox import CallableTarget, hopskipjump, square_attack
from bastion.data.spec import tabular_spec_from
from bastion.progress import set_progress

log = logging.getLogger("bench_tabular")
HERE = Path(__file__).parent
RESULTS = HERE / "results" / "tabular.jsonl"
TABLE = HERE / "results" / "tabular.md"
TOL = 1e-6
HSJ, HSJ_INIT, SQUARE = "HopSkipJump", "HopSkipJump + x_adv_init", "Square"
ZFn = Callable[[np.ndarray], np.ndarray]


# ------------------------------------------------------------------------------ models
class TabularMLP(nn.Module):
    """Two hidden ReLU layers on standardised features (the standardisation is a buffer)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, hidden: int = 64) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())
        self.net = nn.Sequential(
            nn.Linear(mean.numel(), hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def train_mlp(x: np.ndarray, y: np.ndarray, *, seed: int, epochs: int = 200) -> TabularMLP:
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).long()
    model = TabularMLP(xt.mean(0), xt.std(0).clamp_min(1e-8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(yt), generator=gen).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def build_models(seed: int) -> tuple[dict, AttackSpace, np.ndarray, np.ndarray]:
    """The three victims as functions of z (N, 30) → probabilities (N, 2), the attack space,
    and the test rows in z (clipped into [0, 1]) with their labels."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.model_selection import train_test_split
    from sklearn.tree import DecisionTreeClassifier

    x, y = load_breast_cancer(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    space = AttackSpace.build(tabular_spec_from(torch.from_numpy(x_tr).float()), "relative")
    lo, scale = space.lo.double().numpy(), space.scale.double().numpy()

    def to_z(a: np.ndarray) -> np.ndarray:
        return np.clip((a - lo) / scale, 0.0, 1.0)

    def from_z(z: np.ndarray) -> np.ndarray:
        return lo + np.asarray(z, dtype=np.float64) * scale

    gbm = GradientBoostingClassifier(random_state=seed).fit(x_tr, y_tr)
    mlp = train_mlp(x_tr, y_tr, seed=seed)
    # A tree on the normalised features is the tree on the raw ones (each threshold
    # rescaled); fitting it in z lets ART's DecisionTreeAttack work in z directly.
    tree = DecisionTreeClassifier(random_state=seed).fit(to_z(x_tr), y_tr)

    def mlp_fn(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = mlp(torch.from_numpy(from_z(z)).float())
        return torch.softmax(logits, 1).numpy()

    models = {
        "gbm": {"fn": lambda z: gbm.predict_proba(from_z(z)), "sk": gbm},
        "mlp": {"fn": mlp_fn, "sk": None},
        "tree": {"fn": lambda z: tree.predict_proba(np.asarray(z, dtype=np.float64)), "sk": tree},
    }
    z_te = to_z(x_te).astype(np.float32)
    for m in models.values():
        m["test_acc"] = float((m["fn"](z_te).argmax(1) == y_te).mean())
    return models, space, z_te, y_te


class Counter:
    """The one function both tools query: counts every row it is asked about."""

    def __init__(self, fn: ZFn) -> None:
        self.fn, self.queries = fn, 0

    def __call__(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float32).reshape(len(z), -1)
        self.queries += len(z)
        return np.asarray(self.fn(z), dtype=np.float32)

    def torch_fn(self, z: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self(z.numpy()))


def art_box(counter: Counter, shape: tuple[int, ...]):
    """ART's black-box estimator over the counting function (the neural-network flavour,
    which its SquareAttack requires; HopSkipJump takes either)."""
    from art.estimators.classification import BlackBoxClassifierNeuralNetwork

    return BlackBoxClassifierNeuralNetwork(
        counter, input_shape=shape, nb_classes=2, channels_first=True, clip_values=(0.0, 1.0)
    )


# --------------------------------------------------------------------------- attacks
@dataclass
class Run:
    """One attack run over all the rows: what came back and what it cost."""

    adv: np.ndarray
    queries: int  # counted at the model, all rows together
    max_queries: int | None  # the most one row cost (None: the tool cannot tell)
    wall: float
    cpu: float
    claimed: np.ndarray | None = None  # the tool's own success flags, when it gives them
    params: dict = field(default_factory=dict)


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def bastion_square(fn: ZFn, z, y, *, eps: float, budget: int, args, space) -> Run:
    c = Counter(fn)
    target = CallableTarget(c.torch_fn, kind="scores", num_classes=2)
    res, wall, cpu = timed(
        lambda: square_attack(
            target,
            torch.from_numpy(z),
            torch.from_numpy(y),
            eps=eps,
            norm="inf",
            max_queries=budget,
            p_init=args.p_init,
            bounds=space.box,
            generator=torch.Generator().manual_seed(args.seed),
        )
    )
    return Run(res.x_adv.numpy(), c.queries, int(res.queries.max()), wall, cpu, res.success.numpy())


def art_square(fn: ZFn, z, y, *, eps: float, budget: int, args) -> Run:
    from art.attacks.evasion import SquareAttack

    c = Counter(fn)
    iters = max(1, (budget - 3) // 3)
    np.random.seed(args.seed)
    attack = SquareAttack(
        art_box(c, (1, 5, 6)),
        norm=np.inf,
        eps=eps,
        max_iter=iters,
        p_init=args.p_init,
        nb_restarts=1,
        batch_size=256,
        verbose=False,
    )
    adv, wall, cpu = timed(lambda: attack.generate(z.reshape(-1, 1, 5, 6), y=y))
    return Run(adv.reshape(len(z), -1), c.queries, None, wall, cpu, params={"max_iter": iters})


def bastion_hsj(fn: ZFn, z, y, *, budget: int, args, space) -> Run:
    c = Counter(fn)
    target = CallableTarget(c.torch_fn, kind="labels", num_classes=2)
    res, wall, cpu = timed(
        lambda: hopskipjump(
            target,
            torch.from_numpy(z),
            torch.from_numpy(y),
            norm="inf",
            max_queries=budget,
            bounds=space.box,
            generator=torch.Generator().manual_seed(args.seed),
        )
    )
    return Run(res.x_adv.numpy(), c.queries, int(res.queries.max()), wall, cpu, res.success.numpy())


def art_hsj_schedule(budget: int, d: int, *, start: bool = False) -> tuple[int, int]:
    """(max_iter, init_eval) for ART's L∞ HopSkipJump so that its queries per point come to
    about ``budget``. Per point ART asks 1 (clean prediction) + 2 (its closing success
    check) + the start: ~11 from noise (~1 draw, then a 10-step L2 binary search to 1e-3)
    or 1 from ``x_adv_init``; then per iteration t: ⌈log2(d/0.01)⌉ (binary search) +
    ⌊init_eval·√t⌋ (gradient) + ~2 (step-size search). The iteration count is the one ART's
    default init_eval=100 fits closest to the budget (at least 1); init_eval is then
    rescaled so that the total lands on the budget. A noise start that never turns
    adversarial costs ART its 100 draws and ends the attack on that point."""
    fixed, search, step = (4 if start else 14), math.ceil(math.log2(d / 0.01)), 2

    def cost(iters: int, init_eval: float) -> float:
        return fixed + sum(search + step + init_eval * math.sqrt(t) for t in range(1, iters + 1))

    iters = min(range(1, 200), key=lambda k: abs(cost(k, 100) - budget))
    spare = budget - fixed - iters * (search + step)
    return iters, max(1, int(spare / sum(math.sqrt(t) for t in range(1, iters + 1))))


def other_class_starts(z: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """For every row, a random other attacked row of another class (Bastion's fallback)."""
    rng = np.random.default_rng(seed)
    starts = np.empty_like(z)
    for i in range(len(z)):
        pool = np.flatnonzero(y != y[i])
        starts[i] = z[rng.choice(pool)] if len(pool) else z[i]
    return starts


def art_hsj(fn: ZFn, z, y, *, budget: int, args, start: bool = False) -> Run:
    from art.attacks.evasion import HopSkipJump

    c = Counter(fn)
    iters, init_eval = art_hsj_schedule(budget, z.shape[1], start=start)
    attack = HopSkipJump(
        art_box(c, (z.shape[1],)),
        norm=np.inf,
        max_iter=iters,
        max_eval=10_000,
        init_eval=init_eval,
        init_size=100,
        batch_size=256,
        verbose=False,
    )
    starts = other_class_starts(z, y, args.seed) if start else None
    np.random.seed(args.seed)  # its probes; the noise start uses an unseeded RandomState
    per_point, advs = [], []

    def run() -> None:
        for i in range(len(z)):
            kw = {"x_adv_init": starts[i : i + 1].copy()} if starts is not None else {}
            before = c.queries
            advs.append(attack.generate(z[i : i + 1], y=y[i : i + 1], **kw))
            per_point.append(c.queries - before)

    _, wall, cpu = timed(run)
    return Run(
        np.concatenate(advs),
        c.queries,
        int(max(per_point)),
        wall,
        cpu,
        params={"max_iter": iters, "init_eval": init_eval},
    )


def art_tree(sk_tree, z: np.ndarray) -> Run:
    from art.attacks.evasion import DecisionTreeAttack
    from art.estimators.classification.scikitlearn import ScikitlearnDecisionTreeClassifier

    clf = ScikitlearnDecisionTreeClassifier(model=sk_tree, clip_values=(0.0, 1.0))
    attack = DecisionTreeAttack(clf, offset=1e-3, verbose=False)
    adv, wall, cpu = timed(lambda: attack.generate(z.astype(np.float64)))
    return Run(adv.astype(np.float32), 0, None, wall, cpu, params={"offset": 1e-3})


# ----------------------------------------------------------------------------- scoring
def score(fn: ZFn, z: np.ndarray, y: np.ndarray, run: Run, eps: float, attack: str) -> dict:
    """Checked here, not trusted: label changed, within ε in L∞, inside [0, 1]^D. Also how
    often the tool's own success flags disagree with this check (Square's flag means
    "fooled within ε", HopSkipJump's "fooled at some distance")."""
    fooled = (np.asarray(fn(run.adv)).argmax(1) != y) & (
        (run.adv >= -TOL) & (run.adv <= 1 + TOL)
    ).all(1)
    dist = np.abs(run.adv.astype(np.float64) - z).max(1)
    ok = fooled & (dist <= eps + TOL)
    out = {
        "success_rate": float(ok.mean()),
        "fooled_any_distance": float(fooled.mean()),
        "median_linf_fooled": float(np.median(dist[fooled])) if fooled.any() else None,
    }
    if run.claimed is not None:
        check = ok if attack == SQUARE else fooled
        out["claim_mismatches"] = int((run.claimed != check).sum())
    return out


def make_row(
    model: str,
    eps: float,
    budget: int | None,
    attack: str,
    tool: str,
    run: Run,
    fn: ZFn,
    z: np.ndarray,
    y: np.ndarray,
) -> dict:
    row = {
        "model": model,
        "eps": eps,
        "budget": budget,
        "attack": attack,
        "tool": tool,
        "mean_queries": run.queries / len(y),
        "max_queries": run.max_queries,
        "wall_s": run.wall,
        "cpu_s": run.cpu,
        "shared_over_eps": attack.startswith(HSJ),
        **score(fn, z, y, run, eps, attack),
        **run.params,
    }
    if row.get("claim_mismatches"):
        log.warning(
            "%s %s on %s: %d self-reported successes disagree with the check",
            tool,
            attack,
            model,
            row["claim_mismatches"],
        )
    return row


# ------------------------------------------------------------------------------ report
def table(rows: list[dict]) -> str:
    lines = [
        "| model | ε | budget | attack | tool | mean q/pt | max q/pt | success | "
        "median ‖δ‖∞ fooled | wall s | CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        white = r["budget"] is None
        med = r["median_linf_fooled"]
        lines.append(
            f"| {r['model']} | {r['eps']:g} | {'—' if white else r['budget']} | {r['attack']} | "
            f"{r['tool']} | {'0 (white-box)' if white else format(r['mean_queries'], '.0f')} | "
            f"{'—' if r['max_queries'] is None else r['max_queries']} | "
            f"{r['success_rate']:.1%} | {'—' if med is None else format(med, '.3f')} | "
            f"{r['wall_s']:.2f}{' ‡' if r['shared_over_eps'] else ''} | {r['cpu_s']:.2f} |"
        )
    return "\n".join(lines)


def compare(ours: dict, theirs: list[dict]) -> str:
    """One verdict cell: ours vs the best of ``theirs`` (success first, then time). The time
    test is on wall time; the CPU-time ratio is shown beside it (other load on the machine
    inflates wall time, not CPU time)."""
    if not theirs:
        return "—"
    best = max(theirs, key=lambda r: (r["success_rate"], -r["wall_s"]))
    sa, sb = ours["success_rate"], best["success_rate"]
    ratio = ours["wall_s"] / max(best["wall_s"], 1e-9)
    cpu = ours["cpu_s"] / max(best["cpu_s"], 1e-9)
    diff = f"{100 * (sa - sb):+.1f} pt, {ratio:.2g}× wall, {cpu:.2g}× CPU"
    if sa > sb and ratio <= 1:
        return f"met ({diff})"
    if sa == sb == 1.0 and ratio <= 1:
        return f"tied at 100% ({diff})"
    why = [w for w, bad in (("success", sa <= sb), ("time", ratio > 1)) if bad]
    return f"**missed: {' & '.join(why)}** ({diff})"


def verdicts(rows: list[dict]) -> str:
    """Per model × ε × budget, the target: strictly higher success in no more wall time.
    ART HopSkipJump is the better of its two rows (with and without a start); on the tree,
    also against ART's DecisionTreeAttack (white-box, query-free) at the same ε."""
    lines = [
        "| model | ε | budget | Bastion HSJ vs ART HSJ (labels) | Bastion Square vs ART HSJ | "
        "Bastion Square vs ART Square | Bastion Square vs ART DecisionTreeAttack |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["model"], r["eps"], r["budget"]) for r in rows if r["budget"] is not None})
    for key in keys:
        g = {
            (r["attack"], r["tool"]): r for r in rows if (r["model"], r["eps"], r["budget"]) == key
        }
        art_hsj = [r for (a, t), r in g.items() if t == "ART" and a.startswith(HSJ)]
        art_sq = [r for (a, t), r in g.items() if (a, t) == (SQUARE, "ART")]
        tree = [r for r in rows if (r["model"], r["eps"]) == key[:2] and r["budget"] is None]
        ours_hsj, ours_sq = g.get((HSJ, "Bastion")), g.get((SQUARE, "Bastion"))
        cells = [
            "—" if ours is None else compare(ours, theirs)
            for ours, theirs in (
                (ours_hsj, art_hsj),
                (ours_sq, art_hsj),
                (ours_sq, art_sq),
                (ours_sq, tree),
            )
        ]
        lines.append(f"| {key[0]} | {key[1]:g} | {key[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def art_version() -> str:
    try:
        import art
    except ImportError:
        return "not installed"
    return art.__version__


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gbm,mlp,tree")
    ap.add_argument("--eps", type=lambda s: [float(e) for e in s.split(",")], default=[0.05, 0.1])
    ap.add_argument(
        "--queries", type=lambda s: [int(q) for q in s.split(",")], default=[100, 500, 2000]
    )
    ap.add_argument("--n", type=int, default=0, help="rows attacked per model (0: all correct)")
    ap.add_argument("--p-init", type=float, default=0.3)
    ap.add_argument("--skip-art", action="store_true")
    ap.add_argument("--quick", action="store_true", help="--n 40 --queries 100,500")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", type=Path, default=None, help=f"jsonl (default {RESULTS})")
    ap.add_argument("--table", type=Path, default=None, help=f"markdown (default {TABLE})")
    args = ap.parse_args()
    if args.quick:
        args.n, args.queries = args.n or 40, [100, 500]
    quick_out = Path("bench-out")
    args.results = args.results or (quick_out / "tabular-quick.jsonl" if args.quick else RESULTS)
    args.table = args.table or (quick_out / "tabular-quick.md" if args.quick else TABLE)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("art").setLevel(logging.ERROR)
    os.nice(5)
    torch.set_num_threads(args.threads)
    set_progress(False)
    t0 = time.perf_counter()
    models, space, z_te, y_te = build_models(args.seed)
    rows: list[dict] = []
    for name in args.models.split(","):
        m = models[name]
        fn = m["fn"]
        ok = fn(z_te).argmax(1) == y_te
        z, y = z_te[ok], y_te[ok].astype(np.int64)
        if args.n:
            z, y = z[: args.n], y[: args.n]
        m["n"] = len(y)
        log.info("%s: test accuracy %.3f, attacking %d rows", name, m["test_acc"], len(y))
        for budget in args.queries:
            hsj = {(HSJ, "Bastion"): bastion_hsj(fn, z, y, budget=budget, args=args, space=space)}
            if not args.skip_art:
                hsj[(HSJ, "ART")] = art_hsj(fn, z, y, budget=budget, args=args)
                hsj[(HSJ_INIT, "ART")] = art_hsj(fn, z, y, budget=budget, args=args, start=True)
            for eps in args.eps:
                runs = {
                    (SQUARE, "Bastion"): bastion_square(
                        fn, z, y, eps=eps, budget=budget, args=args, space=space
                    )
                }
                if not args.skip_art:
                    runs[(SQUARE, "ART")] = art_square(fn, z, y, eps=eps, budget=budget, args=args)
                for (attack, tool), run in {**runs, **hsj}.items():
                    rows.append(make_row(name, eps, budget, attack, tool, run, fn, z, y))
                    log.info("%s", rows[-1])
        if name == "tree" and not args.skip_art:
            run = art_tree(m["sk"], z)
            for eps in args.eps:
                rows.append(
                    make_row(
                        name,
                        eps,
                        None,
                        "DecisionTreeAttack (white-box reference)",
                        "ART",
                        run,
                        fn,
                        z,
                        y,
                    )
                )
    total = time.perf_counter() - t0
    order = {SQUARE: 0, HSJ: 1, HSJ_INIT: 2}
    rows.sort(
        key=lambda r: (
            r["model"],
            r["eps"],
            r["budget"] or 0,
            order.get(r["attack"], 3),
            r["tool"] != "Bastion",
        )
    )
    sizes = ", ".join(
        f"{k} {v['n']} rows (test accuracy {v['test_acc']:.3f})"
        for k, v in models.items()
        if "n" in v
    )
    import sklearn

    header = (
        f"Breast cancer; relative L∞ ε in {args.eps}; per-point budgets {args.queries}; {sizes}. "
        f"Seed {args.seed}, {args.threads} torch thread, {os.cpu_count()} × {cpu_name()}; "
        f"torch {torch.__version__}, scikit-learn {sklearn.__version__}, ART {art_version()}. "
        f"Whole run {total:.0f} s wall.\n\n‡ HopSkipJump is minimum-norm (no ε): one run per "
        "budget, scored at each ε, so the ε rows share its wall time."
    )
    text = (
        f"{header}\n\n{table(rows)}\n\nTarget, per row: strictly higher success, no more wall "
        f"time (pt = percentage points):\n\n{verdicts(rows)}"
    )
    print("\n" + text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as f:
        setting = {
            "bench": "tabular",
            "seed": args.seed,
            "threads": args.threads,
            "p_init": args.p_init,
            "quick": args.quick,
            "cpus": os.cpu_count(),
            "cpu": cpu_name(),
            "torch": torch.__version__,
            "sklearn": sklearn.__version__,
            "art": art_version(),
            "total_wall_s": total,
        }
        for r in rows:
            f.write(json.dumps({**setting, "n": models[r["model"]]["n"], **r}) + "\n")
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text(f"# Tabular black-box benchmark (bench_tabular.py)\n\n{text}\n")


if __name__ == "__main__":
    main()
