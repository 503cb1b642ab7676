"""YAML → pydantic loading with one-line errors that name the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from bastion.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


_TYPE_TAGS = {
    "str",
    "int",
    "float",
    "bool",
    "list",
    "dict",
    "none",
    "function-after",
    "function-before",
}


def describe_validation_error(exc: ValidationError, source: str) -> str:
    """Turn a pydantic error into one line: ``source: key.path: problem; ...``.

    Union branches are folded: ``threat_model.ThreatModel.epz`` reads ``threat_model.epz``,
    and a branch that only failed because of its type is dropped when another explains more."""
    items = []
    for err in exc.errors():
        parts = [str(p) for p in err["loc"]]
        owner = next((p for p in reversed(parts) if p[:1].isupper()), exc.title)
        clean = [p for p in parts if not p[:1].isupper() and p not in _TYPE_TAGS]
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key (not a field of {owner})"
        elif msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
        items.append((".".join(clean) or "(top level)", msg, err["type"], len(parts) != len(clean)))
    # a union branch that failed only on its type ("should be a valid string") adds nothing
    # when another branch explains the problem
    kept = [
        (loc, msg)
        for loc, msg, kind, branched in items
        if not (branched and kind.endswith("_type") and len(items) > 1)
    ]
    kept = list(dict.fromkeys(kept)) or [(loc, msg) for loc, msg, _, _ in items]
    more = f" (+{len(kept) - 5} more)" if len(kept) > 5 else ""
    return f"{source}: " + "; ".join(f"{loc}: {msg}" for loc, msg in kept[:5]) + more


def validate(model: type[M], data: object, source: str) -> M:
    """Validate ``data`` into ``model`` or raise ConfigError naming every problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source)) from None


def read_yaml(path: str | Path) -> object:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # a folder, no access, bad bytes
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: malformed YAML: nested too deeply") from None
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        # PyYAML's constructors raise these for tagged or typed scalars that do not parse
        # (a date with month 13, `!!int abc`, `!!timestamp x`)
        raise ConfigError(f"{path}: malformed YAML: a value does not parse ({exc})") from None


def load_yaml_model(model: type[M], path: str | Path) -> M:
    """Read a YAML file and validate it into ``model``."""
    data = read_yaml(path)
    if data is None:
        raise ConfigError(f"{path}: the file is empty")
    return validate(model, data, str(path))
