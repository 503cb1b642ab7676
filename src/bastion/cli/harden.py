"""`bastion harden`: apply a hardening recipe to a model of any form, save the child model,
compare it with its parent (exit 1 when the child's clean accuracy collapsed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bastion.assess.profile import Profile, load_profile
from bastion.assess.schema import ThreatModel
from bastion.cli.common import (
    BoundsOpt,
    DataOpt,
    DataRootOpt,
    DeviceOpt,
    EntryPointOpt,
    EpsListOpt,
    EpsModeOpt,
    FrozenOpt,
    IntegerOpt,
    LabelColumnOpt,
    LayoutOpt,
    LowerOpt,
    ModalityOpt,
    NEvalOpt,
    OnnxModeOpt,
    ScaleOpt,
    ShapeOpt,
    ThreatOpt,
    TrustOpt,
    UpperOpt,
    WeightsOpt,
    console,
    data_options_from,
    err_console,
    pick_device,
)
from bastion.cli.validate import OptSeedOpt, number_check, prepare_dir
from bastion.config import load_yaml_model, validate
from bastion.data import load_dataset
from bastion.defenses.compare import DEFAULT_ALLOWED_DROP, Comparison
from bastion.defenses.recipes import Recipe, SanitizeConfig, parse_recipe, recipe_names
from bastion.errors import ConfigError
from bastion.models.io import load_model

RECIPE_HELP = (
    f"a recipe name ({', '.join(recipe_names())}), names joined by '+' (sanitize+trades), "
    "or a YAML file (a list of steps with their parameters)"
)


def with_sanitize(recipe: Recipe) -> Recipe:
    """Prepend a default sanitize step unless the recipe already has one."""
    if any(isinstance(s, SanitizeConfig) for s in recipe.steps):
        return recipe
    return Recipe(steps=[SanitizeConfig(), *recipe.steps])


def comparison_table(c: Comparison) -> Table:
    table = Table(title=f"hardening {c.recipe}: parent → hardened")
    for col in ("metric", "parent", "hardened", "Δ"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for r in c.rows:
        d, ok = r.delta, r.improved
        style = "" if ok is None else ("green" if ok else "red")
        fmt = lambda v: "–" if v is None else f"{v:.4g}"  # noqa: E731
        table.add_row(
            r.metric,
            fmt(r.parent),
            fmt(r.child),
            f"[{style}]{d:+.3f}[/]" if d is not None and style else fmt(d),
        )
    return table


def print_comparison(c: Comparison) -> None:
    console.print(comparison_table(c))
    if c.privacy:
        console.print(
            f"DP-SGD spent ε = {c.privacy['epsilon_spent']:.3f} at δ = {c.privacy['delta']:.2e} "
            f"(noise multiplier {c.privacy['noise_multiplier']:.3f})"
        )
    if c.sanitize:
        s = c.sanitize
        pr = (
            f", precision {s['precision']:.2f} / recall {s['recall']:.2f}"
            if "precision" in s
            else ""
        )
        console.print(f"sanitize ({s['method']}) dropped {s['n_flagged']} samples{pr}")
    if c.backdoor:
        b = c.backdoor
        console.print(
            f"BadNets check: attack success {b.parent_attack_success:.1%} (natural training) → "
            f"{b.child_attack_success:.1%} (this recipe); flags precision "
            f"{b.precision if b.precision is not None else float('nan'):.2f}, recall "
            f"{b.recall if b.recall is not None else float('nan'):.2f}"
        )
    for note in c.notes:
        console.print(f"[yellow]note[/] {note}")


ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="the parent model: a directory (spec.json + weights), TorchScript, .onnx, .skops, "
        "XGBoost .json/.ubj, or a .pt/.safetensors state dict with --entry-point"
    ),
]
AllowDropOpt = Annotated[
    float | None,
    typer.Option(
        callback=number_check(ge=0.0, le=1.0),
        help=f"clean accuracy (absolute, full test set) the hardening may cost; default "
        f"{DEFAULT_ALLOWED_DROP:g}. A larger drop, or a child at chance, is a regression "
        "(exit 1) unless this allows it",
    ),
]


def print_guard(c: Comparison) -> None:
    g = c.accuracy
    if g is None:
        return
    style = "red" if g.collapsed else "green"
    console.print(f"[{style}]clean-accuracy guard[/] {g.message()}")
    console.print(f"verdict: [bold]{c.verdict.replace('_', ' ')}[/] ({c.verdict_reason})")
    for k in c.skipped:
        console.print(f"[dim]{k.check}: not run: {k.reason}[/]")


def register(app: typer.Typer) -> None:
    @app.command("harden")
    def harden_cmd(
        recipe: Annotated[str, typer.Option(help=RECIPE_HELP)],
        out: Annotated[
            Path, typer.Option(help="new model directory (rerun with the same OUT to resume)")
        ],
        profile: Annotated[
            Path | None, typer.Option(help="profile YAML (model, data, threat model)")
        ] = None,
        model: ModelOpt = None,
        entry_point: EntryPointOpt = None,
        weights: WeightsOpt = None,
        onnx_mode: OnnxModeOpt = "auto",
        trust: TrustOpt = None,
        data: DataOpt = None,
        data_root: DataRootOpt = None,
        modality: ModalityOpt = None,
        shape: ShapeOpt = None,
        layout: LayoutOpt = None,
        scale: ScaleOpt = None,
        lower: LowerOpt = None,
        upper: UpperOpt = None,
        bounds: BoundsOpt = None,
        integer: IntegerOpt = None,
        frozen: FrozenOpt = None,
        label_column: LabelColumnOpt = None,
        eps_mode: EpsModeOpt = None,
        threat: ThreatOpt = None,
        eps: EpsListOpt = None,
        n_eval: NEvalOpt = None,
        sanitize: Annotated[
            bool, typer.Option("--sanitize", help="drop flagged suspected poisons first")
        ] = False,
        backdoor_check: Annotated[
            bool | None,
            typer.Option(
                "--backdoor-check/--no-backdoor-check",
                help="BadNets check of the recipe (default: on when sanitizing or can_poison)",
            ),
        ] = None,
        assess: Annotated[
            bool, typer.Option("--assess/--no-assess", help="assess parent and child")
        ] = True,
        allow_accuracy_drop: AllowDropOpt = None,
        device: DeviceOpt = "cpu",
        seed: OptSeedOpt = None,
    ) -> None:
        """Harden a model of any form with a recipe and compare it with its parent under the
        same assessment. Exit 1 when the child's clean accuracy collapsed (see
        --allow-accuracy-drop)."""
        from bastion.defenses.workflow import harden_model

        if profile is not None:
            prof = load_profile(profile)
        elif model is not None or entry_point is not None:
            prof = Profile(model=model, entry_point=entry_point)
        else:
            raise ConfigError(
                "give --profile FILE or --model DIR (the parent model; or --entry-point "
                "module:function with --weights)"
            )
        tm = prof.threat_model if isinstance(prof.threat_model, ThreatModel) else ThreatModel()
        if threat is not None:
            tm = load_yaml_model(ThreatModel, threat)
        overrides: dict = {k: v for k, v in {"eps": eps, "eps_mode": eps_mode}.items() if v}
        if n_eval:
            overrides["budgets"] = {**tm.budgets.model_dump(), "n_eval": n_eval}
        tm = validate(ThreatModel, {**tm.model_dump(), **overrides}, "command-line options")
        parsed = parse_recipe(recipe, "--recipe")
        prepare_dir(out, "--out")
        if sanitize:
            parsed = with_sanitize(parsed)
        where = model or prof.model
        if where and str(where).startswith(("http://", "https://")):
            raise ConfigError(
                "bastion harden retrains the model, which a remote endpoint does not allow: "
                "harden the model behind it (its file or entry point)"
            )
        parent = load_model(
            where,
            entry_point=entry_point or prof.entry_point,
            weights=weights or prof.weights,
            onnx_mode=onnx_mode,
            trusted=trust,
        )
        opts = data_options_from(locals(), prof.data_options if profile is not None else None)
        seed_ = seed if seed is not None else prof.seed
        name = data or (prof.data if profile is not None else None) or parent.provenance.get("data")
        if name is None and parent.form == "model-dir":
            name = "digits"
        if name is None:
            raise ConfigError(
                f"give --data: the training and test data of {parent.name} ({parent.form}); "
                "the model records no dataset"
            )
        root = data_root or prof.data_root or parent.provenance.get("data_root")
        bundle = load_dataset(name, root=root, seed=seed_, options=opts)
        dev = pick_device(device if device != "cpu" else prof.device)
        console.print(
            f"hardening [bold]{parent.path or parent.name}[/] ({parent.form}) with "
            f"[bold]{parsed.name}[/] on {bundle.name}: {bundle.test.input_spec.describe()}"
        )
        outcome = harden_model(
            parent,
            bundle,
            parsed,
            out,
            threat=tm,
            data_spec=name,
            data_root=root,
            seed=seed_,
            device=dev,
            run_assessment=assess,
            backdoor=backdoor_check,
            allow_accuracy_drop=allow_accuracy_drop,
            trusted=trust,
        )
        print_comparison(outcome.comparison)
        print_guard(outcome.comparison)
        console.print(
            f"hardened model: [bold]{outcome.model_dir}[/] ({load_hint(outcome)}); comparison: "
            f"[bold]{outcome.json_path}[/] and [bold]{outcome.html_path}[/]"
        )
        if outcome.blocked:
            err_console.print(
                f"[bold red]regression:[/] {outcome.comparison.accuracy.message()}",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1)


def load_hint(outcome) -> str:
    """How to name the child on later commands: its directory, whatever the parent's form
    (its spec.json says how to rebuild it)."""
    return f"--model {outcome.model_dir}"


def demo_stage(ctx) -> None:
    """Harden the demo's CNN with a few epochs of fast AT (fine-tuned from the parent) and
    compare both under the same light PGD assessment."""
    import torch

    from bastion.defenses.workflow import harden_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # an 8×8 CNN trains faster on one thread
    try:
        _demo(ctx, harden_model)
    finally:
        torch.set_num_threads(threads)


def _demo(ctx, harden_model) -> None:
    parent = load_model(ctx.model_dir)
    threat = ThreatModel(
        eps=[0.1],
        attacks=["pgd"],
        curve_eps=[0.05, 0.1, 0.15, 0.2],
        budgets={"n_eval": 200, "pgd_steps": 20},
        probes=["evasion"],
    )
    recipe = parse_recipe(
        [{"fast_at": {"epochs": 4, "init": "parent", "lr": 2e-3, "select_n": 256}}]
    )
    outcome = harden_model(
        parent,
        ctx.data,
        recipe,
        ctx.out / "harden",
        threat=threat,
        data_spec="digits",
        seed=ctx.seed,
        backdoor=False,
    )
    print_comparison(outcome.comparison)
    c = outcome.comparison
    rob = next((r for r in c.rows if r.metric.startswith("robust accuracy")), None)
    summary = f"fast AT: robust acc {rob.parent:.2f} → {rob.child:.2f}" if rob else "fast AT"
    ctx.extra["hardened_model_dir"] = outcome.model_dir
    ctx.add("harden", summary, outcome.html_path)
