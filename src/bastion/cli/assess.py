"""`bastion assess`: run the probes chosen by the threat model and write the reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bastion.assess.api import AssessmentOutput, assess
from bastion.assess.profile import Profile, load_profile
from bastion.assess.schema import Budgets, ThreatModel
from bastion.cli.common import (
    DataOpt,
    DataRootOpt,
    EpsListOpt,
    NEvalOpt,
    ThreatOpt,
    console,
    pick_device,
)
from bastion.config import load_yaml_model, validate
from bastion.data import load_dataset
from bastion.errors import ConfigError
from bastion.models.io import load_model


def findings_table(out: AssessmentOutput) -> Table:
    table = Table(
        title=f"score {out.report.score}/100 · {len(out.report.warnings)} sanity warning(s)"
    )
    for col in ("probe", "attack", "ε / params", "key metrics", "severity"):
        table.add_column(col)
    for f in out.report.findings:
        params = (
            f"ε={f.params['eps']}"
            if "eps" in f.params
            else ", ".join(f"{k}={v}" for k, v in list(f.params.items())[:3])
        )
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in list(f.metrics.items())[:3])
        table.add_row(f.probe, f.attack, params, metrics, f"{f.severity:.1f}")
    return table


def print_outcome(out: AssessmentOutput) -> None:
    console.print(findings_table(out))
    for w in out.report.warnings:
        console.print(f"[yellow]warning[/] {w.check}: {w.message}")
    for s in out.report.skipped:
        console.print(f"[dim]skipped {s.probe}: {s.reason}[/]")
    run = f" (run {out.run_id})" if out.run_id is not None else ""
    console.print(f"report: [bold]{out.json_path}[/] and [bold]{out.html_path}[/]{run}")


def register(app: typer.Typer) -> None:
    @app.command("assess")
    def assess_cmd(
        profile: Annotated[
            Path | None, typer.Option(help="profile YAML tying model, data and threat model")
        ] = None,
        model: Annotated[
            Path | None, typer.Option(help="model directory (spec.json + weights)")
        ] = None,
        entry_point: Annotated[
            str | None, typer.Option(help="module:function returning an nn.Module (runs that code)")
        ] = None,
        weights: Annotated[
            Path | None, typer.Option(help="weights for --entry-point (.safetensors/.pt)")
        ] = None,
        data: DataOpt = None,
        data_root: DataRootOpt = None,
        threat: ThreatOpt = None,
        eps: EpsListOpt = None,
        norm: Annotated[str | None, typer.Option(help="inf or 2")] = None,
        attack: Annotated[
            list[str] | None,
            typer.Option(help="evasion attack (repeat): fgsm, pgd, apgd-ce, apgd-t, ensemble"),
        ] = None,
        access: Annotated[str | None, typer.Option(help="white_box | scores | labels")] = None,
        n_eval: NEvalOpt = None,
        out: Annotated[
            Path | None, typer.Option(help="output directory (resumes if a checkpoint is there)")
        ] = None,
        device: str = "cpu",
        seed: int | None = None,
    ) -> None:
        """Assess a model: evasion and the other probes that fit the threat model."""
        if profile is not None:
            prof = load_profile(profile)
        elif model is not None or entry_point is not None:
            prof = Profile(model=str(model) if model else None, entry_point=entry_point)
        else:
            raise ConfigError(
                "give --profile FILE or --model DIR (or --entry-point module:function)"
            )
        tm = prof.threat_model if isinstance(prof.threat_model, ThreatModel) else ThreatModel()
        if threat is not None:
            tm = load_yaml_model(ThreatModel, threat)
        overrides = {
            k: v
            for k, v in {"eps": eps, "norm": norm, "attacks": attack, "access": access}.items()
            if v
        }
        if n_eval:
            overrides["budgets"] = {**tm.budgets.model_dump(), "n_eval": n_eval}
        tm = validate(ThreatModel, {**tm.model_dump(), **overrides}, "command-line options")
        out_dir = out or (Path(prof.out) if prof.out else None)
        if out_dir is None:
            raise ConfigError("give --out DIR (or `out:` in the profile)")
        loaded = load_model(
            model or prof.model,
            entry_point=entry_point or prof.entry_point,
            weights=weights or prof.weights,
        )
        name = data or prof.data or loaded.provenance.get("data") or "digits"
        bundle = load_dataset(
            name, root=data_root or prof.data_root, seed=seed if seed is not None else prof.seed
        )
        dev = pick_device(device if device != "cpu" else prof.device)
        result = assess(loaded, bundle, tm, out_dir, device=dev, seed=seed if seed is not None else prof.seed,
                        recipe=prof.training.recipe() if profile is not None else None)  # fmt: skip
        print_outcome(result)


DEMO_THREAT = ThreatModel(
    eps=[0.1],
    attacks=["fgsm", "pgd", "ensemble"],
    can_poison=True,
    budgets=Budgets(
        n_eval=200, queries=500, n_blackbox=40, extraction_queries=[100, 1000], shadow_models=4
    ),
)


def demo_stage(ctx) -> None:
    """Assess the demo's CNN with every probe (small budgets): FGSM, PGD and the standard
    ensemble at ε=0.1 with a curve, black-box Square/HopSkipJump, extraction, BadNets and
    label flipping, membership inference."""
    model = load_model(ctx.model_dir)
    result = assess(model, ctx.data, DEMO_THREAT, ctx.out / "assess", seed=ctx.seed)
    print_outcome(result)
    ctx.report_path = result.json_path
    ctx.add("assess", f"score {result.report.score}/100, {len(result.report.findings)} findings, "
            f"{len(result.report.warnings)} warnings", result.html_path)  # fmt: skip
