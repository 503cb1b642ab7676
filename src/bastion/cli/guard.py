"""`bastion guard fit|evaluate`: fit the runtime guard beside a model, and measure it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from bastion.cli.common import DataRootOpt, console
from bastion.data import DataBundle, load_dataset
from bastion.errors import ConfigError
from bastion.models.io import LoadedModel, load_model

if TYPE_CHECKING:
    from bastion.cli.demo import DemoContext
    from bastion.guard import Guard
    from bastion.guard.evaluate import GuardEvaluation

log = logging.getLogger(__name__)


def _bundle(loaded: LoadedModel, data: str | None, data_root: str | None) -> DataBundle:
    """The dataset named on the command line, else the one recorded in the model's provenance
    (same split seed, so the test split stays unseen)."""
    prov = loaded.provenance or {}
    spec = data or prov.get("data")
    if not spec:
        raise ConfigError(
            f"{loaded.path}: no training data recorded in provenance.json: pass --data "
            "(digits | fashion-mnist | file.npz | ...)"
        )
    root = data_root or prov.get("data_root")
    seed = int((prov.get("recipe") or {}).get("seed", 0) or 0)
    return load_dataset(spec, root=root, seed=seed)


def fit_for_model(
    model_dir: Path, *, data: str | None = None, data_root: str | None = None,
    fpr: float | None = None, config: Path | None = None,
) -> tuple[Path, Guard]:  # fmt: skip
    """Fit the guard on the model's training data and save it beside the model."""
    from bastion.guard import fit_guard, load_guard_config

    loaded = load_model(model_dir)
    bundle = _bundle(loaded, data, data_root)
    cfg = load_guard_config(config) if config else None
    guard = fit_guard(loaded.module, bundle.train, target_fpr=fpr, config=cfg)
    return guard.save(model_dir), guard


def thresholds_table(guard: Guard) -> Table:
    table = Table(title=f"guard thresholds (target FPR {guard.config.target_fpr:g})")
    table.add_column("detector")
    table.add_column("threshold", justify="right")
    for name, t in guard.thresholds.items():
        table.add_row(name, f"{t:.4g}")
    ext = guard.extraction
    if ext is not None:
        table.add_row("PRADA δ (Shapiro–Wilk W)", f"{ext.delta_:.4f}")
    return table


def evaluation_table(ev: GuardEvaluation) -> Table:
    table = Table(title=f"guard detection at target FPR {ev.target_fpr:g} ({ev.data} test set)")
    sets = ["pgd", *ev.shifts]
    table.add_column("detector")
    table.add_column("FPR (clean)", justify="right")
    for s in sets:
        table.add_column(f"{s} TPR / AUROC", justify="right")
    for name, rates in ev.detectors.items():
        if name in ("drift", "extraction"):
            continue
        row = [name, f"{rates.fpr:.3f}"]
        for s in sets:
            r = rates if s == "pgd" else ev.shifts[s].detectors[name]
            row.append(f"{r.tpr:.2f} / {r.auroc:.3f}" if r.auroc is not None else "-")
        table.add_row(*row)
    return table


def register(app: typer.Typer) -> None:
    sub = typer.Typer(help="Runtime guard: fit detectors beside a model, evaluate them.",
                      no_args_is_help=True)  # fmt: skip
    app.add_typer(sub, name="guard")

    @sub.command("fit")
    def fit_cmd(
        model: Annotated[Path, typer.Option(help="model directory (spec.json + weights)")],
        data: Annotated[
            str | None, typer.Option(help="training data (default: the model's provenance)")
        ] = None,
        data_root: DataRootOpt = None,
        fpr: Annotated[
            float | None, typer.Option(help="target false-positive rate (default 0.01)")
        ] = None,
        config: Annotated[Path | None, typer.Option(help="guard YAML (see docs/guard.md)")] = None,
    ) -> None:
        """Fit and calibrate the detectors on the model's training data; save guard.json and
        guard.safetensors beside the model."""
        if fpr is not None and not 0.0 < fpr < 0.5:
            raise ConfigError(f"--fpr must be in (0, 0.5), got {fpr}")
        path, guard = fit_for_model(model, data=data, data_root=data_root, fpr=fpr, config=config)
        console.print(thresholds_table(guard))
        console.print(f"guard written to [bold]{path}[/]")

    @sub.command("evaluate")
    def evaluate_cmd(
        model: Annotated[Path, typer.Option(help="model directory with a fitted guard")],
        out: Annotated[Path, typer.Option(help="where to write the evaluation JSON")],
        data: Annotated[
            str | None, typer.Option(help="data (default: the model's provenance)")
        ] = None,
        data_root: DataRootOpt = None,
        eps: Annotated[float, typer.Option(help="PGD L∞ ε (share of the value range)")] = 0.1,
        steps: int = 20,
        n: Annotated[int | None, typer.Option(help="test points (default: all)")] = None,
        extraction: Annotated[
            bool, typer.Option(help="also simulate extraction attackers and benign clients")
        ] = False,
        seed: int = 0,
    ) -> None:
        """Measure the guard on the test split: PGD examples, noise, blur, another dataset."""
        from bastion.guard import Guard
        from bastion.guard.evaluate import evaluate_guard

        loaded = load_model(model)
        guard = Guard.load(model, loaded.module)
        bundle = _bundle(loaded, data, data_root)
        ev = evaluate_guard(guard, loaded.module, bundle.test, eps=eps, steps=steps, n=n,
                            extraction=extraction, seed=seed)  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(ev.model_dump_json(indent=2))
        console.print(evaluation_table(ev))
        console.print(f"evaluation written to [bold]{out}[/]")


def demo_stage(ctx: DemoContext) -> None:
    """Fit the guard beside the demo model and print its detection of PGD examples."""
    from bastion.guard.evaluate import evaluate_guard

    model_dir = ctx.model_dir
    if model_dir is None:
        ctx.add("guard", "skipped: no model")
        return
    path, guard = fit_for_model(model_dir)
    loaded = load_model(model_dir)
    bundle = ctx.data or _bundle(loaded, None, None)
    ev = evaluate_guard(guard, loaded.module, bundle.test, drift_windows=5, seed=ctx.seed)
    out_dir = ctx.out / "guard"
    out_dir.mkdir(parents=True, exist_ok=True)
    ev_path = out_dir / "guard_evaluation.json"
    ev_path.write_text(ev.model_dump_json(indent=2))
    console.print(evaluation_table(ev))
    console.print(f"guard saved beside the model: [bold]{path}[/]")
    g = ev.detectors["guard"]
    ctx.extra["guard_evaluation"] = ev_path
    ctx.add("guard", f"PGD ε={ev.attack['eps']}: flagged {g.tpr:.0%} at {g.fpr:.1%} clean FPR "
            f"(AUROC {g.auroc:.3f})", ev_path)  # fmt: skip
    log.debug("guard evaluation %s", json.dumps(ev.realised_fpr))
