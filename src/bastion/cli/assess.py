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
    pick_device,
)
from bastion.cli.executors import AddressOpt, ExecutorOpt, make_executor
from bastion.cli.llm import JudgeKeyOpt, JudgeModelOpt, JudgeOpt, JudgeSpec
from bastion.cli.validate import OptSeedOpt, choice_check, prepare_dir
from bastion.config import load_yaml_model, validate
from bastion.data import load_dataset
from bastion.errors import ConfigError
from bastion.models.io import load_model

NORM_CHECK = choice_check(("inf", "2"), "norm", normalise=lambda v: v.lower().lstrip("l"))


def attack_names() -> list[str]:
    """The white-box attacks a threat model may name."""
    from bastion.attacks.evasion import ATTACKS

    return sorted(ATTACKS)


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
    if out.report.resumed:
        console.print(
            f"resumed: {out.report.resumed} finding(s) taken from the checkpoint of an "
            "interrupted run (same model, data and threat model)"
        )
    console.print(findings_table(out))
    for w in out.report.warnings:
        console.print(f"[yellow]warning[/] {w.check}: {w.message}")
    for s in out.report.skipped:
        label = s.status.replace("_", " ")
        console.print(f"[dim]{s.probe}: {label}: {s.reason}[/]")
    run = f" (run {out.run_id})" if out.run_id is not None else ""
    console.print(f"report: [bold]{out.json_path}[/] and [bold]{out.html_path}[/]{run}")
    if out.sarif_path is not None:
        console.print(f"SARIF: [bold]{out.sarif_path}[/]")


def register(app: typer.Typer) -> None:
    @app.command("assess")
    def assess_cmd(
        profile: Annotated[
            Path | None, typer.Option(help="profile YAML tying model, data and threat model")
        ] = None,
        model: Annotated[
            str | None,
            typer.Option(
                help="a model: directory (spec.json + weights), TorchScript .pt, .onnx, .skops, "
                "XGBoost .json/.ubj, LightGBM .txt, a .pt state dict with --entry-point, "
                "or an http(s):// endpoint"
            ),
        ] = None,
        target: Annotated[
            str | None,
            typer.Option(help="a remote model: http(s):// endpoint (same as --model URL)"),
        ] = None,
        entry_point: EntryPointOpt = None,
        weights: WeightsOpt = None,
        onnx_mode: OnnxModeOpt = "auto",
        trust: TrustOpt = None,
        target_output: Annotated[
            str,
            typer.Option(
                help="http endpoint answers: scores | labels",
                callback=choice_check(("scores", "labels"), "endpoint output"),
            ),
        ] = "scores",
        target_body: Annotated[
            str,
            typer.Option(
                help='http request body: object ({"inputs": [...]}) | list',
                callback=choice_check(("object", "list"), "request body form"),
            ),
        ] = "object",
        api_key_env: Annotated[
            str | None, typer.Option(help="environment variable holding the endpoint's API key")
        ] = None,
        llm_model: Annotated[
            str | None,
            typer.Option(help="with --target openai+http(s)://HOST/v1: the chat model's name"),
        ] = None,
        judge: JudgeOpt = None,
        judge_model: JudgeModelOpt = None,
        judge_key_env: JudgeKeyOpt = None,
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
        members: Annotated[
            str | None,
            typer.Option(help="the model's training rows: FILE of row indices, or train-split"),
        ] = None,
        threat: ThreatOpt = None,
        eps: EpsListOpt = None,
        norm: Annotated[str | None, typer.Option(help="inf or 2", callback=NORM_CHECK)] = None,
        attack: Annotated[
            list[str] | None,
            typer.Option(
                help="evasion attack (repeat): fgsm, pgd, apgd-ce, apgd-t, fab-t, ensemble "
                "(APGD-CE → APGD-T), autoattack (APGD-CE → APGD-T → FAB-T → Square)",
                callback=choice_check(attack_names, "attack"),
            ),
        ] = None,
        access: Annotated[
            str | None,
            typer.Option(
                help="white_box | scores | labels",
                callback=choice_check(("white_box", "scores", "labels"), "access"),
            ),
        ] = None,
        n_eval: NEvalOpt = None,
        out: Annotated[
            Path | None, typer.Option(help="output directory (resumes if a checkpoint is there)")
        ] = None,
        device: DeviceOpt = "cpu",
        seed: OptSeedOpt = None,
        executor: ExecutorOpt = "local",
        address: AddressOpt = None,
    ) -> None:
        """Assess a model: evasion and the other probes that fit the threat model."""
        if target is not None and target.startswith(("openai+", "hf:")):
            from bastion.cli.llm import llm_assess  # an LLM application (docs/llm.md)

            if model is not None:
                raise ConfigError("give --model or --target, not both")
            if executor != "local" or address is not None:
                raise ConfigError(
                    "an LLM application is assessed locally: drop --executor/--address"
                )
            return llm_assess(
                target,
                llm_model,
                profile,
                out,
                api_key_env=api_key_env,
                judge=JudgeSpec.of(judge, judge_model, judge_key_env),
            )
        if judge is not None or judge_model is not None or judge_key_env is not None:
            raise ConfigError("--judge grades an LLM application: use it with --target openai+…")
        if target is not None:
            if model is not None:
                raise ConfigError("give --model or --target, not both")
            if not target.startswith(("http://", "https://")):
                raise ConfigError(
                    f"--target must be an http(s):// URL (openai+http(s):// for a chat "
                    f"endpoint), got {target!r}"
                )
            model = target
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
            for k, v in {
                "eps": eps,
                "norm": norm,
                "attacks": attack,
                "access": access,
                "eps_mode": eps_mode,
            }.items()
            if v
        }
        if n_eval:
            overrides["budgets"] = {**tm.budgets.model_dump(), "n_eval": n_eval}
        tm = validate(ThreatModel, {**tm.model_dump(), **overrides}, "command-line options")
        runner = make_executor(executor, address)
        out_dir = out or (Path(prof.out) if prof.out else None)
        if out_dir is None:
            raise ConfigError("give --out DIR (or `out:` in the profile)")
        prepare_dir(out_dir, "--out")
        opts = data_options_from(locals(), prof.data_options if profile is not None else None)
        the_seed = seed if seed is not None else prof.seed
        where = model or prof.model
        if where and where.startswith(("http://", "https://")):
            if not data and not prof.data:
                raise ConfigError("an http(s) endpoint needs --data: the rows to query it with")
            loaded = None
        else:
            loaded = load_model(
                where,
                entry_point=entry_point or prof.entry_point,
                weights=weights or prof.weights,
                onnx_mode=onnx_mode,
                trusted=trust,
            )
        name = data or prof.data or (loaded.provenance.get("data") if loaded else None) or "digits"
        bundle = load_dataset(name, root=data_root or prof.data_root, seed=the_seed, options=opts)
        if loaded is None:
            from bastion.assess.remote import http_model

            loaded = http_model(
                where,
                num_classes=bundle.test.num_classes,
                output=target_output,
                body=target_body,
                api_key_env=api_key_env,
            )
        console.print(
            f"model [bold]{loaded.name}[/] ({loaded.form}, "
            f"{'gradients' if loaded.differentiable else 'no gradients'}); data {bundle.name}: "
            f"{bundle.test.input_spec.describe()}"
        )
        dev = pick_device(device if device != "cpu" else prof.device)
        result = assess(
            loaded,
            bundle,
            tm,
            out_dir,
            device=dev,
            seed=the_seed,
            recipe=prof.training.recipe() if profile is not None else None,
            members=members or prof.members,
            executor=runner,
        )
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
    ctx.add(
        "assess",
        f"score {result.report.score}/100, {len(result.report.findings)} findings, "
        f"{len(result.report.warnings)} warnings",
        result.html_path,
    )
    _demo_user_model(ctx)


def _demo_user_model(ctx) -> None:
    """A model Bastion did not make: an ONNX MLP on raw breast-cancer features, assessed
    from its files as `bastion assess --model bc.onnx --data bc.csv` would."""
    from bastion.cli.demo_byom import DEMO_THREAT as USER_THREAT
    from bastion.cli.demo_byom import make_user_files

    console.rule("[bold]assess: your model (ONNX, tabular)")
    csv, onnx = make_user_files(ctx.out / "your-model", ctx.seed)
    model = load_model(onnx)
    bundle = load_dataset(str(csv), seed=ctx.seed)
    console.print(
        f"model {model.name} ({model.form}); data {bundle.name}: {bundle.test.input_spec.describe()}"
    )
    result = assess(model, bundle, USER_THREAT, ctx.out / "your-model" / "assess", seed=ctx.seed)
    print_outcome(result)
    statuses = ", ".join(f"{s.probe} {s.status.replace('_', ' ')}" for s in result.report.skipped)
    ctx.add(
        "assess (your model)",
        f"{model.form} on raw tabular CSV, relative ε: score {result.report.score}/100; {statuses}",
        result.html_path,
    )
