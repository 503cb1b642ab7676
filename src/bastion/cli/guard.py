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
from bastion.data import DataBundle, load_dataset
from bastion.errors import ConfigError
from bastion.models.io import LoadedModel, load_model

if TYPE_CHECKING:
    from bastion.cli.demo import DemoContext
    from bastion.data.loaders import DataOptions
    from bastion.guard import Guard
    from bastion.guard.evaluate import GuardEvaluation

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
) -> tuple[Path, Guard]:
    """Fit the guard on the model's training data and save it (in ``guard_dir``, default
    the model directory or ``<model file>.guard/``)."""
    from bastion.guard import fit_guard, load_guard_config
    from bastion.guard.tap import ScoresTap

    args = model or ModelArgs(model=model_dir)
    loaded = args.load()
    bundle = _bundle(loaded, data, data_root, options)
    check_compatible(loaded, bundle)
    cfg = load_guard_config(config) if config else None
    guard = fit_guard(loaded, bundle.train, target_fpr=fpr, config=cfg)
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
    attack = str(ev.attack.get("name", "pgd"))
    title = (
        f"guard detection at target FPR {ev.target_fpr:g} ({ev.data} test set, "
        f"{attack} ε={ev.attack.get('eps')} {ev.attack.get('eps_mode', '')})"
    )
    table = Table(title=title)
    sets = ["pgd", *ev.shifts]
    table.add_column("detector")
    table.add_column("FPR (clean)", justify="right")
    for s in sets:
        label = attack if s == "pgd" else s
        table.add_column(f"{label} TPR / AUROC", justify="right")
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
    ) -> None:
        """Fit and calibrate the detectors on the model's training data; save guard.json and
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
            typer.Option(help="L∞ ε of the attack (see --eps-mode: relative for tabular data)"),
        ] = 0.1,
        eps_mode: Annotated[
            str | None,
            typer.Option(help="absolute | relative (to each feature's range; tabular default)"),
        ] = None,
        steps: Annotated[int, typer.Option(help="PGD steps (differentiable models)")] = 20,
        queries: Annotated[
            int, typer.Option(help="Square queries per point (models without gradients)")
        ] = 300,
        n: Annotated[int | None, typer.Option(help="test points (default: all)")] = None,
        ood: Annotated[
            str | None,
            typer.Option(help="out-of-distribution data (dataset name or file; default: bundled)"),
        ] = None,
        extraction: Annotated[
            bool, typer.Option(help="also simulate extraction attackers and benign clients")
        ] = False,
        seed: int = 0,
    ) -> None:
        """Measure the guard on the test split: adversarial examples, and the shifts of the
        data's modality (images: noise, blur, another dataset; tabular rows: feature noise,
        feature scaling, missing values, another dataset or uniform rows in the box)."""
        from bastion.guard import Guard
        from bastion.guard.evaluate import evaluate_guard

        if eps_mode not in (None, "absolute", "relative"):
            raise ConfigError(f"--eps-mode must be absolute or relative, got {eps_mode!r}")
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
            seed=seed,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(ev.model_dump_json(indent=2))
        console.print(evaluation_table(ev))
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
    ctx.add(
        "guard",
        f"PGD ε={ev.attack['eps']}: flagged {g.tpr:.0%} at {g.fpr:.1%} clean FPR "
        f"(AUROC {g.auroc:.3f})",
        ev_path,
    )
    log.debug("guard evaluation %s", json.dumps(ev.realised_fpr))
