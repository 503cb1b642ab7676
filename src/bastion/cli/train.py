"""`bastion train`: train a zoo model on a dataset and save it safely."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bastion.cli.common import DataRootOpt, DeviceOpt, console, pick_device
from bastion.cli.validate import SeedOpt, choice_check, count_check, number_check, prepare_dir
from bastion.data import load_dataset
from bastion.models.io import save_model
from bastion.models.train import accuracy, train_model
from bastion.models.zoo import MODEL_NAMES, build_model, zoo_spec


def train_and_save(
    data: str,
    model: str,
    out: Path,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    data_root: str | None = None,
    device: str = "cpu",
) -> tuple[Path, float]:
    """Train a zoo model and write spec + safetensors + provenance; returns (dir, test accuracy)."""
    bundle = load_dataset(data, root=data_root, seed=seed)
    spec = zoo_spec(model, bundle.train.shape, bundle.train.num_classes)
    module = build_model(spec)
    dev = pick_device(device)
    result = train_model(
        module,
        bundle.train,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=dev,
        description=f"training {model} on {bundle.name}",
    )
    module.cpu()
    test_acc = accuracy(module, bundle.test.x, bundle.test.y)
    provenance = {
        "data": data,
        "data_root": data_root,
        "train_manifest": bundle.train.manifest().model_dump(),
        "test_manifest": bundle.test.manifest().model_dump(),
        "recipe": {
            "name": "standard",
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
        },
        "parent": None,
        "test_accuracy": test_acc,
        "train_seconds": result.seconds,
    }
    save_model(module, spec, out, provenance=provenance)
    return out, test_acc


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        out: Annotated[Path, typer.Option(help="directory to write the model into")],
        data: Annotated[
            str, typer.Option(help="digits | fashion-mnist | mnist | file.npz | file.csv")
        ] = "digits",
        model: Annotated[
            str,
            typer.Option(
                help=f"zoo model: {', '.join(MODEL_NAMES)}",
                callback=choice_check(MODEL_NAMES, "model"),
            ),
        ] = "cnn",
        epochs: Annotated[int, typer.Option(help="training epochs", callback=count_check())] = 10,
        batch_size: Annotated[
            int, typer.Option(help="samples per step", callback=count_check())
        ] = 64,
        lr: Annotated[
            float, typer.Option(help="learning rate", callback=number_check(gt=0))
        ] = 1e-3,
        seed: SeedOpt = 0,
        data_root: DataRootOpt = None,
        device: DeviceOpt = "cpu",
    ) -> None:
        """Train a zoo model and save it as safetensors + spec.json + provenance.json."""
        prepare_dir(out, "--out")
        path, acc = train_and_save(
            data,
            model,
            out,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            data_root=data_root,
            device=device,
        )
        console.print(f"test accuracy {acc:.4f}; model written to [bold]{path}[/]")


def demo_stage(ctx) -> None:
    """Train the zoo CNN on digits for the rest of the demo."""
    from bastion.data import load_dataset

    ctx.data = load_dataset("digits", seed=ctx.seed)
    path, acc = train_and_save(
        "digits", "cnn", ctx.out / "model", epochs=15, batch_size=64, lr=1e-3, seed=ctx.seed
    )
    ctx.model_dir = path
    console.print(f"trained the digits CNN: test accuracy {acc:.3f}")
    ctx.add("train", f"digits CNN, test accuracy {acc:.3f}", path)
