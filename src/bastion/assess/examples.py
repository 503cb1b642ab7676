"""A handful of adversarial examples kept as evidence for the report's gallery.

After the strongest evasion attack at the largest ε, the evasion probe re-runs that attack
on the first few points it fooled (at most :data:`MAX_EXAMPLES`: a few forward/backward
passes on a batch of six, next to the hundreds of points the finding attacked) and keeps
the ones fooled again, in input units, with their labels and predictions, in
``OUT/evasion/examples.json``. The finding records the file under
``artifacts["examples"]``. The report draws them (images: original, adversarial, the
change) or lists the most-changed features (tabular data); nothing else reads them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, Field

from bastion.assess.probe import ProbeContext
from bastion.attacks.evasion import eval_mode, get_attack

MAX_EXAMPLES = 6
ARTIFACT = "examples"
FILENAME = "evasion/examples.json"
SALT = 4242


class Example(BaseModel):
    index: int = Field(description="position in the evaluation set")
    label: int
    clean_prediction: int
    adversarial_prediction: int
    x: list[float] = Field(description="the original, flat, in input units")
    x_adv: list[float] = Field(description="the adversarial example, flat, in input units")


class ExampleSet(BaseModel):
    attack: str
    eps: float
    norm: str
    eps_mode: str
    modality: str
    shape: list[int]
    lower: list[float] = Field(default_factory=list)
    upper: list[float] = Field(default_factory=list)
    feature_names: list[str] | None = None
    class_names: list[str] | None = None
    examples: list[Example] = Field(default_factory=list)


def _opts(ctx: ProbeContext, attack: str) -> tuple[str, dict]:
    extra: dict = {}
    if attack in {"apgd-t", "ensemble"}:
        extra["n_target_classes"] = min(9, ctx.num_classes - 1)
    if attack == "apgd-ce+dlr":
        return "apgd-ce", extra
    return attack, extra


def keep_examples(
    ctx: ProbeContext,
    model: torch.nn.Module,
    x_raw: torch.Tensor,
    y: torch.Tensor,
    fooled: torch.Tensor,
    attack: str,
    eps: float,
    attack_kw: dict,
) -> ExampleSet | None:
    """Re-attack the first fooled points (``fooled``: bool per point) and keep those fooled
    again; None when there are none."""
    idx = fooled.nonzero().flatten()[:MAX_EXAMPLES].to(x_raw.device)
    if idx.numel() == 0:
        return None
    space = ctx.space
    xs_raw, ys = x_raw[idx], y[idx].to(x_raw.device)
    z = space.to_z(xs_raw)
    name, extra = _opts(ctx, attack)
    fn = get_attack(name)
    kw = {k: v for k, v in attack_kw.items() if k in {"steps", "restarts"}}
    with eval_mode(model):
        adv = fn(
            model,
            z,
            ys,
            eps=eps,
            norm=ctx.threat.norm,
            bounds=space.box,
            generator=ctx.generator(SALT),
            early_stop=True,
            **kw,
            **extra,
        )
        adv = space.finalize(adv.detach(), z)
        with torch.no_grad():
            pred_adv = model(adv).argmax(1)
            pred_clean = model(z).argmax(1)
    x_adv = space.to_x(adv, xs_raw)
    spec = ctx.data.test.input_spec
    kept = [
        Example(
            index=int(i),
            label=int(ys[j]),
            clean_prediction=int(pred_clean[j]),
            adversarial_prediction=int(pred_adv[j]),
            x=xs_raw[j].flatten().tolist(),
            x_adv=x_adv[j].flatten().tolist(),
        )
        for j, i in enumerate(idx.tolist())
        if int(pred_adv[j]) != int(ys[j])
    ]
    if not kept:
        return None
    return ExampleSet(
        attack=attack,
        eps=float(eps),
        norm=ctx.threat.norm,
        eps_mode=space.mode,
        modality=spec.modality,
        shape=list(spec.shape),
        lower=list(spec.lower),
        upper=list(spec.upper),
        feature_names=spec.feature_names,
        class_names=list(ctx.data.test.class_names) if ctx.data.test.class_names else None,
        examples=kept,
    )


def save_examples(examples: ExampleSet, out_dir: Path) -> str:
    """Write the examples under ``out_dir``; returns the path relative to it."""
    path = Path(out_dir) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(examples.model_dump_json())
    return FILENAME
