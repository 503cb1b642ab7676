"""Loading the model directories ``bastion harden`` writes for parents that are not zoo
models (the layout is documented in :mod:`bastion.defenses.rebuild`, which writes them).

``load_model`` dispatches a directory whose ``spec.json`` names one of :data:`CHILD_FORMS`
here, so ``--model CHILD`` works for every form; the single-file routes to the same files
(``--model CHILD --entry-point mod:fn``, ``--model CHILD/model.ts``, …) give the same
SHA-256 and artifacts."""

from __future__ import annotations

import json
from pathlib import Path

from bastion.errors import ModelError
from bastion.models.loaded import Capabilities, LoadedModel
from bastion.models.zoo import ModelSpec

SPEC = "spec.json"
WEIGHTS = "model.safetensors"
PROVENANCE = "provenance.json"
TORCHSCRIPT_FILE = "model.ts"
FILES = {"skops": "model.skops", "xgboost": "model.json"}
#: spec.json names of the children written for parents that are not zoo models.
CHILD_FORMS = ("entry-point", "torchscript", "skops", "xgboost")


def child_spec(path: str | Path) -> ModelSpec | None:
    """The spec of a child directory written for a non-zoo parent, else None."""
    spec_file = Path(path) / SPEC
    if not spec_file.is_file():
        return None
    try:
        spec = ModelSpec.model_validate_json(spec_file.read_text())
    except ValueError:
        return None
    return spec if spec.name in CHILD_FORMS else None


def _file_in(path: Path, spec: ModelSpec, default: str) -> Path:
    name = str(spec.params.get("file") or default)
    target = path / name
    if Path(name).name != name or not target.is_file():
        raise ModelError(f"{path}: the spec names the model file {name!r}, which is not there")
    return target


def load_child(
    path: str | Path,
    spec: ModelSpec | None = None,
    *,
    weights: str | Path | None = None,
    trusted: list[str] | None = None,
) -> LoadedModel:
    """A child directory written by ``bastion harden`` for an entry-point, TorchScript,
    ONNX-converted, skops or XGBoost parent (see the module docstring). The record has the
    same SHA-256 and artifacts as the single-form route to the same files."""
    from bastion.models.io import load_model

    path = Path(path)
    spec = spec or child_spec(path)
    if spec is None or spec.name not in CHILD_FORMS:
        raise ModelError(f"{path}: not a hardened child directory ({SPEC} names no child form)")
    p = spec.params
    if spec.name == "entry-point":
        entry_point = p.get("entry_point")
        if not isinstance(entry_point, str):
            raise ModelError(f"{path / SPEC}: an entry-point child needs params.entry_point")
        loaded = load_model(path, entry_point=entry_point, weights=weights)
        source = next((a for a in loaded.artifacts if a.role == "source"), None)
        want = p.get("source_sha256")
        if want and (source is None or source.sha256 != want):
            now = source.sha256[:12] + "…" if source else "not found"
            raise ModelError(
                f"{path}: the entry point {entry_point}'s source file changed since hardening "
                f"(sha256 {str(want)[:12]}… recorded, now {now}): the weights were trained for "
                "the recorded code; restore it, or load with --entry-point to accept the change"
            )
    elif spec.name == "torchscript":
        from bastion.models.forms_torch import load_torchscript

        loaded = load_torchscript(_file_in(path, spec, TORCHSCRIPT_FILE))
    else:
        loaded = load_model(_file_in(path, spec, FILES[spec.name]), trusted=trusted)
    provenance = {}
    if (path / PROVENANCE).is_file():
        try:
            provenance = json.loads((path / PROVENANCE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path / PROVENANCE}: not valid JSON ({exc})") from None
    caps = loaded.capabilities.model_dump()
    for key in ("num_classes", "input_shape"):
        if caps.get(key) is None and p.get(key) is not None:
            caps[key] = p[key]
    loaded.capabilities = Capabilities(**caps)
    loaded.name = path.name
    loaded.path = path
    loaded.provenance = {**loaded.provenance, **provenance}
    loaded.notes = [f"hardened child ({spec.name}) written by bastion harden", *loaded.notes]
    return loaded


def load_hardened(path: str | Path, *, trusted: list[str] | None = None) -> LoadedModel:
    """A model directory ``bastion harden`` wrote, whatever the parent's form."""
    from bastion.models.io import load_model

    spec = child_spec(path)
    return load_child(path, spec, trusted=trusted) if spec else load_model(path)
