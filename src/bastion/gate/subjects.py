"""Which files an attestation covers: the files the assessed model was loaded from (the
report's artifacts: weights, spec, the ONNX/skops/XGBoost/TorchScript file, an entry
point's source), re-hashed so that an assessed model and an attested one always match;
found from the report alone, from the model loaded again with the assessment's options, or
from a model directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from bastion.assess.schema import Report
from bastion.errors import ConfigError
from bastion.models.loaded import Artifact, artifacts_sha256
from bastion.risk.evidence import file_sha256

MODEL_FILES = ("model.safetensors", "model.pt", "model.pth", "spec.json", "provenance.json")
MODEL_PREFIX = "model/"
FILELESS_FORMS = {
    "http": "a remote endpoint",
    "module": "an in-memory module",
    "callable": "a Python function",
}
# LLM targets that are not files: the attestation covers the report and the application
# profile, and records the model name the endpoint reported
ENDPOINT_FORMS = {"openai-chat": "an OpenAI-compatible chat endpoint"}
PROFILE_SUBJECT = "profile/"
PROFILE_KIND = "llm_application_profile"


def model_dir_of(report: Report, model: ModelFiles | None = None) -> Path | None:
    """The assessed model's directory, when it is one (for its provenance.json)."""
    for cand in (model.directory if model else None, report.model.path):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


@dataclass(frozen=True)
class ModelSource:
    """Where the model is, given the way `bastion assess` was given it: ``path`` (any form),
    ``entry_point`` with ``weights``, ``onnx_mode`` and the skops types to ``trusted``."""

    path: str | Path | None = None
    entry_point: str | None = None
    weights: str | Path | None = None
    onnx_mode: str = "auto"
    trusted: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelFile:
    """One model file the attestation covers."""

    subject: str
    path: Path
    role: str
    sha256: str
    recorded: str  # the path the report recorded (or the loader returned)


@dataclass
class ModelFiles:
    """The model files of the assessed model and how they were found."""

    files: list[ModelFile]
    how: str  # report | loaded | model-dir
    directory: Path | None = None


def model_files(model_dir: Path) -> list[Path]:
    """The files of a model directory (reports written before artifacts were recorded)."""
    if not model_dir.is_dir():
        raise ConfigError(f"model directory not found: {model_dir}")
    files = [model_dir / n for n in MODEL_FILES if (model_dir / n).is_file()]
    if not any(f.name.startswith("model.") for f in files):
        raise ConfigError(f"{model_dir}: no weight file ({', '.join(MODEL_FILES[:3])})")
    return files


def _subject_names(items: list[tuple[str, str]]) -> list[str]:
    """``model/<file name>``, or ``model/<role>/<file name>`` where two files share a name."""
    names = [Path(p).name for p, _ in items]
    return [
        f"{MODEL_PREFIX}{n}" if names.count(n) == 1 else f"{MODEL_PREFIX}{role}/{n}"
        for n, (_, role) in zip(names, items, strict=True)
    ]


def _recorded_artifacts(report: Report, report_path: Path) -> list[Artifact]:
    try:
        return [Artifact.model_validate(a) for a in report.model.artifacts]
    except ValidationError:
        raise ConfigError(
            f"{report_path}: model.artifacts is malformed (each needs path, sha256 and role)"
        ) from None


def _identity(report: Report, artifacts: list[Artifact]) -> str:
    """The model SHA-256 these artifacts give, computed as the loader computes it."""
    if report.model.form == "model-dir":
        weights = [a for a in artifacts if a.role == "weights"]
        return weights[0].sha256 if len(weights) == 1 else artifacts_sha256(artifacts)
    return artifacts_sha256(artifacts)


def _mismatch(report_path: Path, role: str, path: Path, recorded: str, actual: str) -> ConfigError:
    return ConfigError(
        f"{report_path} assessed the {role} file with sha256 {recorded[:12]}…, but {path} has "
        f"sha256 {actual[:12]}…: attest the model the report is about (or assess this one)"
    )


def _with_provenance(files: list[ModelFile], directory: Path | None) -> list[ModelFile]:
    """The provenance.json of the directory the model was loaded from (a model directory,
    or a hardened entry-point child) joins its files: it names the training data."""
    prov = directory / "provenance.json" if directory else None
    if prov is None or not prov.is_file() or any(f.path == prov.resolve() for f in files):
        return files
    items = [(str(f.path), f.role) for f in files] + [(str(prov), "provenance")]
    names = _subject_names(items)
    out = [
        ModelFile(n, f.path, f.role, f.sha256, f.recorded)
        for n, f in zip(names, files, strict=False)
    ]
    return [*out, ModelFile(names[-1], prov.resolve(), "provenance", file_sha256(prov), str(prov))]


def _from_report(report: Report, report_path: Path) -> ModelFiles:
    """The report's artifacts at their recorded paths, each re-hashed."""
    artifacts = _recorded_artifacts(report, report_path)
    if _identity(report, artifacts) != report.model.sha256:
        raise ConfigError(
            f"{report_path}: model.sha256 {report.model.sha256[:12]}… is not the hash of its "
            "recorded model.artifacts: the report was edited; assess the model again"
        )
    files = []
    names = _subject_names([(a.path, a.role) for a in artifacts])
    for name, a in zip(names, artifacts, strict=True):
        path = Path(a.path)
        where = path if path.is_absolute() else Path.cwd() / path
        if not where.is_file():
            raise ConfigError(
                f"the {a.role} file {a.path} that {report_path} records is not at {where} "
                "(relative paths are read from the current directory, as `bastion assess` "
                "ran): run attest from there, or pass --model (and --entry-point/--weights) "
                "as for assess"
            )
        actual = file_sha256(where)
        if actual != a.sha256:
            raise _mismatch(report_path, a.role, where, a.sha256, actual)
        files.append(ModelFile(name, where.resolve(), a.role, actual, a.path))
    directory = model_dir_of(report)
    return ModelFiles(_with_provenance(files, directory), "report", directory)


def _from_loaded(report: Report, report_path: Path, source: ModelSource) -> ModelFiles:
    """Load the model as `bastion assess` did and compare its files with the report's."""
    from bastion.models.io import load_model

    loaded = load_model(
        source.path,
        entry_point=source.entry_point,
        weights=source.weights,
        onnx_mode=source.onnx_mode,  # type: ignore[arg-type]
        trusted=list(source.trusted) or None,
    )
    recorded = {(a.role, Path(a.path).name): a for a in _recorded_artifacts(report, report_path)}
    for a in loaded.artifacts:
        want = recorded.get((a.role, Path(a.path).name))
        if want is not None and want.sha256 != a.sha256:
            raise _mismatch(report_path, a.role, Path(a.path), want.sha256, a.sha256)
    if loaded.sha256 != report.model.sha256:
        files = ", ".join(f"{a.path} ({a.role})" for a in loaded.artifacts) or "no files"
        raise ConfigError(
            f"{report_path} assessed a model with sha256 {report.model.sha256[:12]}…, but the "
            f"{loaded.form} model loaded from {files} has sha256 {loaded.sha256[:12]}…: attest "
            "the model the report is about"
        )
    if not loaded.artifacts:
        raise ConfigError(f"the {loaded.form} model was not loaded from files: nothing to attest")
    names = _subject_names([(a.path, a.role) for a in loaded.artifacts])
    files = [
        ModelFile(n, Path(a.path).resolve(), a.role, a.sha256, a.path)
        for n, a in zip(names, loaded.artifacts, strict=True)
    ]
    directory = loaded.path if loaded.path is not None and loaded.path.is_dir() else None
    return ModelFiles(_with_provenance(files, directory), "loaded", directory)


def _from_model_dir(report: Report, report_path: Path, model_dir: Path) -> ModelFiles:
    """A report without recorded artifacts (older Bastion): the model directory's files."""
    paths = model_files(model_dir)
    weights = next(p for p in paths if p.name.startswith("model."))
    weights_sha = file_sha256(weights)
    if report.model.sha256 != weights_sha:
        raise ConfigError(
            f"{report_path} assessed a model with sha256 {report.model.sha256[:12]}…, but "
            f"{weights} has sha256 {weights_sha[:12]}…: attest the model the report is about"
        )
    role = {"spec.json": "spec", "provenance.json": "provenance"}
    files = [
        ModelFile(
            f"{MODEL_PREFIX}{p.name}",
            p.resolve(),
            role.get(p.name, "weights"),
            file_sha256(p),
            str(p),
        )
        for p in paths
    ]
    return ModelFiles(files, "model-dir", model_dir)


def resolve_model_files(
    report: Report, report_path: Path, source: ModelSource | None = None
) -> ModelFiles:
    """The files of the model ``report`` is about, checked against what it recorded; raises
    ConfigError (one line, naming the file) when one is missing or differs."""
    form = report.model.form
    if source is not None and (source.path is not None or source.entry_point is not None):
        if form in ENDPOINT_FORMS or form == "hf-causal-lm":
            raise ConfigError(
                f"{report_path} is about an LLM application ({form}): attest reads its files "
                "from the report; leave out --model/--entry-point"
            )
        if form in FILELESS_FORMS:
            raise ConfigError(
                f"{report_path} is about {FILELESS_FORMS[form]} ({form}), not model files: "
                "there is no model to attest"
            )
        return _from_loaded(report, report_path, source)
    if report.model.artifacts:
        return _from_report(report, report_path)
    if form in ENDPOINT_FORMS:
        return ModelFiles([], "endpoint")
    if form in FILELESS_FORMS:
        raise ConfigError(
            f"{report_path} is about {FILELESS_FORMS[form]} ({form}), not model files: there is "
            "no model to attest; save the model to a file (a model directory, ONNX, skops, …) "
            "and assess that"
        )
    if form != "model-dir":
        raise ConfigError(
            f"{report_path} records no model artifacts for its {form} model: pass --model "
            "(and --entry-point/--weights) as for `bastion assess`"
        )
    if not report.model.path:
        raise ConfigError(f"{report_path} does not record the model path: pass --model DIR")
    return _from_model_dir(report, report_path, Path(report.model.path))


def profile_file(report: Report, report_path: Path) -> tuple[str, Path] | None:
    """An LLM report's application profile (subject name, file), checked against the
    SHA-256 the report recorded; None for any other report."""
    manifest = report.dataset.manifest
    if manifest.get("kind") != PROFILE_KIND:
        return None
    recorded = str(manifest.get("path") or "")
    if not recorded:
        raise ConfigError(
            f"{report_path} does not record where its application profile is: assess again "
            "with `bastion llm assess --profile FILE`"
        )
    path = Path(recorded)
    where = path if path.is_absolute() else Path.cwd() / path
    if not where.is_file():
        raise ConfigError(
            f"the application profile {recorded} that {report_path} records is not at {where} "
            "(relative paths are read from the current directory, as `bastion llm assess` ran)"
        )
    actual = file_sha256(where)
    if actual != report.dataset.sha256:
        raise _mismatch(report_path, "application profile", where, report.dataset.sha256, actual)
    return f"{PROFILE_SUBJECT}{where.name}", where.resolve()
