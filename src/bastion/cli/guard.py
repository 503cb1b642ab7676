"""`bastion guard fit|evaluate`: fit the runtime guard for a model, and measure it.

Every model form `bastion assess` reads works (``--model PATH`` with ``--entry-point``,
``--weights``, ``--onnx-mode``, ``--trust``), on the data flags of `bastion assess`. The guard
is saved in the model directory, or in ``<model file>.guard/`` beside a model file
(``--guard-dir`` says elsewhere); `bastion serve` looks in the same place.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from bastion.assess.checks import check_compatible
from bastion.cli.common import (
    BoundsOpt,
    DataRootOpt,
    EntryPointOpt,
    EpsModeOpt,
    FrozenOpt,
    IntegerOpt,
    LabelColumnOpt,
    LayoutOpt,
    LowerOpt,
    ModalityOpt,
    OnnxModeOpt,
    ScaleOpt,
    ShapeOpt,
    TrustOpt,
    UpperOpt,
    WeightsOpt,
    console,
    data_options_from,
)
from bastion.cli.validate import SeedOpt, count_check, number_check, prepare_file
from bastion.data import DataBundle, load_dataset
from bastion.errors import ConfigError
from bastion.models.io import LoadedModel, load_model

if TYPE_CHECKING:
    from bastion.cli.demo import DemoContext
    from bastion.data.loaders import DataOptions
    from bastion.guard import Guard
    from bastion.guard.evaluate import GuardEvaluation, Rates

log = logging.getLogger(__name__)

# The model options of `bastion assess`, shared with `bastion serve`.
ModelPathOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        help="a model: directory (spec.json + weights), TorchScript .pt, .onnx, .skops, XGBoost "
        ".json/.ubj, LightGBM .txt, or a .pt/.safetensors state dict with --entry-point",
    ),
]
GuardDirOpt = Annotated[
    Path | None,
    typer.Option(help="where the guard is kept (default: the model directory, or FILE.guard/)"),
]
GuardDataOpt = Annotated[
    str | None,
    typer.Option(
        help="training data: digits | fashion-mnist | file.npz | file.csv (default: the "
        "model's provenance); read with the --modality … flags"
    ),
]
ONNX_MODES = ("auto", "torch", "runtime")
SPLITS = ("auto", "test", "train-non-members", "fit-holdout")
CalibrationOpt = Annotated[
    str | None,
    typer.Option(
        help="rows that set thresholds and the drift reference, never trained on: auto "
        "(default: non-member train rows when the training rows are known, else half the "
        "test split) | test | train-non-members | fit-holdout | a data file (.npz/.csv)"
    ),
]
MembersOpt = Annotated[
    str | None,
    typer.Option(
        help="the model's training rows: FILE of row indices, or train-split (default: "
        "bastion train provenance)"
    ),
]


@dataclass(frozen=True)
class ModelArgs:
    """How the command line names a model (as `bastion assess` does)."""

    model: Path | None = None
    entry_point: str | None = None
    weights: Path | None = None
    onnx_mode: str = "auto"
    trust: tuple[str, ...] = ()

    def load(self) -> LoadedModel:
        if self.model is None and self.entry_point is None:
            raise ConfigError("give --model PATH (or --entry-point module:function)")
        if self.onnx_mode not in ONNX_MODES:
            raise ConfigError(f"--onnx-mode must be one of {', '.join(ONNX_MODES)}")
        return load_model(
            self.model,
            entry_point=self.entry_point,
            weights=self.weights,
            onnx_mode=self.onnx_mode,  # type: ignore[arg-type]
            trusted=list(self.trust) or None,
        )

    def command(self, sub: str = "guard fit") -> str:
        """The command line that names this model (for messages)."""
        parts = [f"bastion {sub}"]
        if self.model is not None:
            parts.append(f"--model {self.model}")
        if self.entry_point:
            parts.append(f"--entry-point {self.entry_point}")
        if self.weights is not None:
            parts.append(f"--weights {self.weights}")
        if self.onnx_mode != "auto":
            parts.append(f"--onnx-mode {self.onnx_mode}")
        parts += [f"--trust {t}" for t in self.trust]
        return " ".join(parts)


def guard_dir_for(loaded: LoadedModel, given: Path | None) -> Path:
    """``given``, else the model directory, else ``<model file>.guard/``."""
    from bastion.guard.guard import default_guard_dir

    where = given or default_guard_dir(loaded)
    if where is None:
        raise ConfigError(
            f"{loaded.name}: no model file to keep the guard beside: pass --guard-dir DIR"
        )
    return where


def _bundle(
    loaded: LoadedModel,
    data: str | None,
    data_root: str | None,
    options: DataOptions | None = None,
) -> DataBundle:
    """The dataset named on the command line, else the one recorded in the model's provenance
    (same split seed, so the test split stays unseen)."""
    prov = loaded.provenance or {}
    spec = data or prov.get("data")
    if not spec:
        raise ConfigError(
            f"{loaded.path or loaded.name}: no training data recorded in provenance.json: pass "
            "--data (digits | fashion-mnist | file.npz | file.csv ...)"
        )
    root = data_root or prov.get("data_root")
    seed = int((prov.get("recipe") or {}).get("seed", 0) or 0)
    return load_dataset(spec, root=root, seed=seed, options=options)


def fit_for_model(
    model_dir: Path | None = None,
    *,
    data: str | None = None,
    data_root: str | None = None,
    fpr: float | None = None,
    config: Path | None = None,
    model: ModelArgs | None = None,
    options: DataOptions | None = None,
    guard_dir: Path | None = None,
    calibration: str | None = None,
    members: str | None = None,
) -> tuple[Path, Guard]:
    """Fit the guard on the model's training data, calibrate it on rows the model never
    trained on (``calibration``: auto | test | train-non-members | fit-holdout | a data
    file; ``members``: the model's training rows, as `bastion assess --members`), and save
    it (in ``guard_dir``, default the model directory or ``<model file>.guard/``)."""
    from bastion.assess.api import resolve_members
    from bastion.guard import GuardConfig, fit_guard, load_guard_config
    from bastion.guard.calibration import choose_calibration, from_file
    from bastion.guard.tap import ScoresTap

    args = model or ModelArgs(model=model_dir)
    loaded = args.load()
    bundle = _bundle(loaded, data, data_root, options)
    check_compatible(loaded, bundle)
    cfg = load_guard_config(config) if config else GuardConfig()
    if fpr is not None:
        cfg = cfg.model_copy(update={"target_fpr": fpr})
    known = resolve_members(members, loaded, bundle)
    if calibration in SPLITS:
        cal_cfg = cfg.calibration.model_copy(update={"split": calibration})
    else:
        cal_cfg = cfg.calibration
    if calibration is not None and calibration not in SPLITS:
        cal_bundle = load_dataset(calibration, root=data_root, options=options)
        choice = from_file(bundle, cal_bundle, known, calibration)
    else:
        choice = choose_calibration(
            bundle,
            members=known,
            config=cal_cfg,
            target_fpr=cfg.target_fpr,
            calibration_fraction=cfg.calibration_fraction,
            seed=cfg.seed,
        )
    rec = choice.record
    disjoint = {True: "yes", False: "NO", None: "unknown"}[rec.disjoint_from_training]
    console.print(
        f"calibration: {rec.description}; disjoint from the model's training rows: "
        f"{disjoint} ({rec.how_known})"
    )
    guard = fit_guard(
        loaded,
        choice.fit,
        config=cfg,
        calibration=choice.calibration,
        calibration_record=rec,
    )
    if isinstance(guard.tap, ScoresTap):
        console.print(f"[dim]{guard.tap.why}: the guard reads the model's scores only[/]")
    for name, reason in guard.not_built.items():
        console.print(f"[dim]{name}: {reason}[/]")
    return guard.save(guard_dir_for(loaded, guard_dir)), guard


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
    """Detection per detector: non-adaptive attack, adaptive attack, shifts."""
    na, ad = ev.non_adaptive, ev.adaptive
    attack = str(na.attack.get("name", "pgd"))
    title = (
        f"guard detection at target FPR {ev.target_fpr:g} ({ev.data} test set, "
        f"ε={na.attack.get('eps')} {na.attack.get('eps_mode', '')})"
    )
    table = Table(title=title)
    table.add_column("detector")
    table.add_column("FPR (clean)", justify="right")
    table.add_column(f"non-adaptive {attack} TPR / AUROC", justify="right")
    adaptive_label = (
        f"adaptive ({ad.attack.get('restarts')}×{ad.attack.get('steps')} steps) TPR / AUROC"
        if ad.status == "measured"
        else "adaptive"
    )
    table.add_column(adaptive_label, justify="right")
    for s in ev.shifts:
        table.add_column(f"{s} TPR / AUROC", justify="right")

    def cell(r: Rates | None) -> str:
        if r is None:
            return "-"
        return f"{r.tpr:.2f} / {r.auroc:.3f}" if r.auroc is not None else f"{r.tpr:.2f} / -"

    for name, rates in na.detectors.items():
        if name in ("drift", "extraction"):
            continue
        row = [name, f"{rates.fpr:.3f}", cell(rates)]
        row.append(cell(ad.detectors.get(name)) if ad.status == "measured" else "not measured")
        row += [cell(ev.shifts[s].detectors.get(name)) for s in ev.shifts]
        table.add_row(*row)
    return table


def robustness_table(ev: GuardEvaluation) -> Table:
    """Accuracy under each attacker: without the guard, and guarded (fooled and not flagged
    = an attack success)."""
    table = Table(title=f"robust accuracy on {ev.n_clean} test points")
    for col in ("attacker", "budget", "clean", "robust (no guard)", "guarded robust", "n adv"):
        table.add_column(col, justify="left" if col in ("attacker", "budget") else "right")
    for ae in (ev.non_adaptive, ev.adaptive):
        a = ae.attack
        if ae.status != "measured":
            table.add_row(ae.kind.replace("_", "-"), "-", "-", "-", "not measured", "-")
            continue
        budget = (
            f"{a.get('restarts', 1)}×{a['steps']} steps"
            if "steps" in a
            else f"{a.get('queries')} q"
        )
        budget = f"L{a.get('norm', 'inf')} ε={a.get('eps')}, {budget}"

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v:.1%}"

        table.add_row(
            f"{ae.kind.replace('_', '-')} {a.get('name', '')}",
            budget,
            pct(ae.clean_accuracy),
            pct(ae.robust_accuracy),
            pct(ae.guarded_robust_accuracy),
            str(ae.n_adversarial),
        )
    return table


def register(app: typer.Typer) -> None:
    sub = typer.Typer(
        help="Runtime guard: fit detectors for a model, evaluate them.", no_args_is_help=True
    )
    app.add_typer(sub, name="guard")

    @sub.command("fit")
    def fit_cmd(
        model: ModelPathOpt = None,
        entry_point: EntryPointOpt = None,
        weights: WeightsOpt = None,
        onnx_mode: OnnxModeOpt = "auto",
        trust: TrustOpt = None,
        data: GuardDataOpt = None,
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
        guard_dir: GuardDirOpt = None,
        fpr: Annotated[
            float | None, typer.Option(help="target false-positive rate (default 0.01)")
        ] = None,
        config: Annotated[Path | None, typer.Option(help="guard YAML (see docs/guard.md)")] = None,
        calibration: CalibrationOpt = None,
        members: MembersOpt = None,
    ) -> None:
        """Fit the detectors on the model's training data and calibrate their thresholds and
        the drift reference on rows it never trained on (--calibration); save guard.json and
        guard.safetensors (in the model directory, or FILE.guard/ beside a model file)."""
        if fpr is not None and not 0.0 < fpr < 0.5:
            raise ConfigError(f"--fpr must be in (0, 0.5), got {fpr}")
        args = ModelArgs(model, entry_point, weights, onnx_mode, tuple(trust or ()))
        opts = data_options_from(locals())
        path, guard = fit_for_model(
            data=data,
            data_root=data_root,
            fpr=fpr,
            config=config,
            model=args,
            options=opts,
            guard_dir=guard_dir,
            calibration=calibration,
            members=members,
        )
        console.print(thresholds_table(guard))
        console.print(f"guard written to [bold]{path}[/]")

    @sub.command("evaluate")
    def evaluate_cmd(
        out: Annotated[Path, typer.Option(help="where to write the evaluation JSON")],
        model: ModelPathOpt = None,
        entry_point: EntryPointOpt = None,
        weights: WeightsOpt = None,
        onnx_mode: OnnxModeOpt = "auto",
        trust: TrustOpt = None,
        data: GuardDataOpt = None,
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
        guard_dir: GuardDirOpt = None,
        eps: Annotated[
            float,
            typer.Option(
                help="L∞ ε of the attack (see --eps-mode: relative for tabular data)",
                callback=number_check(ge=0),
            ),
        ] = 0.1,
        eps_mode: EpsModeOpt = None,
        steps: Annotated[
            int, typer.Option(help="PGD steps (differentiable models)", callback=count_check())
        ] = 20,
        queries: Annotated[
            int,
            typer.Option(
                help="Square queries per point (models without gradients)",
                callback=count_check(),
            ),
        ] = 300,
        n: Annotated[
            int | None, typer.Option(help="test points (default: all)", callback=count_check())
        ] = None,
        ood: Annotated[
            str | None,
            typer.Option(help="out-of-distribution data (dataset name or file; default: bundled)"),
        ] = None,
        extraction: Annotated[
            bool, typer.Option(help="also simulate extraction attackers and benign clients")
        ] = False,
        adaptive: Annotated[
            bool,
            typer.Option(
                help="also run the adaptive attacker that knows every detector (needs gradients)"
            ),
        ] = True,
        adaptive_steps: Annotated[
            int, typer.Option(help="adaptive attacker: steps per restart", callback=count_check())
        ] = 100,
        adaptive_restarts: Annotated[
            int, typer.Option(help="adaptive attacker: random restarts", callback=count_check())
        ] = 2,
        seed: SeedOpt = 0,
    ) -> None:
        """Measure the guard on the test split: adversarial examples, and the shifts of the
        data's modality (images: noise, blur, another dataset; tabular rows: feature noise,
        feature scaling, missing values, another dataset or uniform rows in the box)."""
        from bastion.guard import Guard
        from bastion.guard.evaluate import evaluate_guard

        if eps_mode not in (None, "absolute", "relative"):
            raise ConfigError(f"--eps-mode must be absolute or relative, got {eps_mode!r}")
        prepare_file(out, "--out")
        args = ModelArgs(model, entry_point, weights, onnx_mode, tuple(trust or ()))
        loaded = args.load()
        guard = Guard.load(guard_dir_for(loaded, guard_dir), loaded, fix=f"run `{args.command()}`")
        opts = data_options_from(locals())
        bundle = _bundle(loaded, data, data_root, opts)
        check_compatible(loaded, bundle)
        _check_guard_data(guard, bundle)
        ood_x, ood_name = None, ""
        if ood is not None:
            ood_x, ood_name = load_dataset(ood, root=data_root).test.x, Path(ood).name
        ev = evaluate_guard(
            guard,
            loaded,
            bundle.test,
            eps=eps,
            eps_mode=eps_mode,  # type: ignore[arg-type]
            steps=steps,
            queries=queries,
            n=n,
            ood=ood_x,
            ood_name=ood_name,
            extraction=extraction,
            adaptive=adaptive,
            adaptive_steps=adaptive_steps,
            adaptive_restarts=adaptive_restarts,
            seed=seed,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(ev.model_dump_json(indent=2))
        console.print(evaluation_table(ev))
        console.print(robustness_table(ev))
        for note in ev.notes:
            console.print(f"[dim]{note}[/]")
        console.print(f"evaluation written to [bold]{out}[/]")


def _check_guard_data(guard: Guard, bundle: DataBundle) -> None:
    """The evaluation data must be what the guard was fitted for (same sample shape)."""
    spec = guard.input_spec
    if spec is not None and list(spec.shape) != list(bundle.test.shape):
        raise ConfigError(
            f"the guard was fitted on inputs of shape {tuple(spec.shape)} ({spec.describe()}); "
            f"{bundle.name} has {tuple(bundle.test.shape)}: pass the data it was fitted on"
        )


def demo_stage(ctx: DemoContext) -> None:
    """Fit the guard beside the demo model (calibrated on half the test split, which the
    model never trained on) and print its detection of non-adaptive PGD and of the adaptive
    attacker that knows the detectors."""
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
    console.print(robustness_table(ev))
    console.print(f"guard saved beside the model: [bold]{path}[/]")
    g = ev.non_adaptive.detectors["guard"]
    outcome = (
        f"PGD ε={ev.attack['eps']} (non-adaptive): flagged {g.tpr:.0%} at {g.fpr:.1%} clean FPR"
    )
    if ev.adaptive.status == "measured":
        a = ev.adaptive.detectors["guard"]
        outcome += (
            f"; adaptive attacker: flagged {a.tpr:.0%}, guarded robust accuracy "
            f"{ev.adaptive.guarded_robust_accuracy:.0%}"
        )
    ctx.extra["guard_evaluation"] = ev_path
    ctx.add("guard", outcome, ev_path)
    log.debug("guard evaluation %s", json.dumps(ev.realised_fpr))
