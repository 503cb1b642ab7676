"""The firewall's settings: a ``firewall:`` section in serve.yaml (pydantic), CLI flags on top.

    firewall:
      upstream: openai+http://127.0.0.1:8080/v1   # or --upstream
      upstream_key_env: OPENAI_API_KEY            # or --upstream-key-env (never the key itself)
      profile: app.yaml                           # or --profile: canaries, forbidden tools, hosts
      tokens_per_s: 2000                          # token bucket per API key (see below)
      tokens_burst: 20000
      audit_content: false                        # true: prompts and outputs in the audit log
      input:  {injection: {hold_at: 0.5, block_at: 0.8}, secrets: redact, pii: flag}
      # input.injection.classifier: DIR (or --injection-classifier): a sequence classifier
      output: {leakage: block, pii: redact, secrets: redact, links: strip, tools: block}
      stream: {holdback_chars: 64, window_chars: 256}
      attack_state: {max_attempts: 5, window_s: 600}

The rest of serve.yaml (auth, rate_limit, audit, reviews, blocks, db_url, host, port, TLS)
is :class:`~bastion.serve.settings.ServeSettings`, read as for a model gateway.

Token estimate (the ``tokens`` bucket): a request costs ``ceil(characters / 4)`` of every
message's text plus 4 per message (the chat framing), plus its ``max_tokens`` (or
``max_completion_tokens``; ``default_completion_tokens`` when it sets neither). It is paid
before the upstream is called, so a refused request costs the upstream nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bastion.config import read_yaml, validate
from bastion.errors import ConfigError
from bastion.llm.profile import AppProfile, load_app_profile
from bastion.serve.settings import ServeSettings

UPSTREAM_SCHEMES = {"openai+https": "https", "openai+http": "http"}
InputAction = Literal["off", "flag", "redact", "hold", "block"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class InjectionSettings(_Section):
    """Prompt-injection heuristics: a score in [0, 1]; at ``hold_at`` the request waits for a
    reviewer, at ``block_at`` it is refused (400) and counts towards the client's block.

    ``classifier``: a Hugging Face sequence-classification directory (safetensors); its
    probability of the injection label (``classifier_label``, else the label named like
    "injection", else ``LABEL_1``) joins the heuristic score (the higher one counts)."""

    enabled: bool = True
    hold_at: float = Field(0.5, gt=0, le=1)
    block_at: float = Field(0.8, gt=0, le=1)
    classifier: Path | None = None
    classifier_label: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _order(self) -> InjectionSettings:
        if self.hold_at > self.block_at:
            raise ValueError(f"hold_at ({self.hold_at:g}) is above block_at ({self.block_at:g})")
        return self


class InputSettings(_Section):
    injection: InjectionSettings = Field(default_factory=InjectionSettings)
    secrets: InputAction = "redact"
    pii: InputAction = "flag"
    roles: list[Literal["user", "tool", "system", "assistant"]] = Field(
        default_factory=lambda: ["user", "tool"],
        description="the messages scanned (the application's own system prompt is trusted)",
    )


class OutputSettings(_Section):
    leakage: Literal["off", "flag", "block"] = "block"
    # a verbatim run of this many characters of a system prompt in the output is a leak (0: off)
    system_prompt_overlap_chars: int = Field(40, ge=0, le=10_000)
    pii: Literal["off", "flag", "redact", "block"] = "redact"
    secrets: Literal["off", "flag", "redact", "block"] = "redact"
    links: Literal["off", "flag", "strip", "block"] = "strip"
    tools: Literal["off", "flag", "block"] = "block"
    allowed_link_hosts: list[str] = Field(
        default_factory=list, description="added to the profile's allowed_link_hosts"
    )

    @field_validator("system_prompt_overlap_chars")
    @classmethod
    def _overlap(cls, v: int) -> int:
        if 0 < v < 16:
            raise ValueError("must be 0 (off) or at least 16 characters")
        return v


class StreamSettings(_Section):
    """Streams are scanned over a sliding window: text is released to the client only once
    ``holdback_chars`` more have arrived (so a leak is caught before it is sent); every scan
    looks at the last ``window_chars`` released characters plus the held-back ones."""

    holdback_chars: int = Field(64, ge=0, le=4096)
    window_chars: int = Field(256, ge=64, le=65_536)


class AttackStateSettings(_Section):
    """``max_attempts`` blocked injections from one key within ``window_s`` block the key
    (the gateway's client block, ``blocks.expire_after_s``)."""

    enabled: bool = True
    max_attempts: int = Field(5, ge=1, le=10_000)
    window_s: float = Field(600.0, gt=0)


class FirewallSettings(_Section):
    upstream: str
    upstream_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    profile: Path | None = None
    timeout_s: float = Field(60.0, gt=0, le=3600)
    tokens_per_s: float = Field(2000.0, gt=0)
    tokens_burst: float = Field(20_000.0, ge=1)
    default_completion_tokens: int = Field(256, ge=1, le=10**7)
    max_messages: int = Field(1000, ge=1, le=100_000)
    audit_content: bool = False
    input: InputSettings = Field(default_factory=InputSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    attack_state: AttackStateSettings = Field(default_factory=AttackStateSettings)

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, v: str) -> str:
        parse_upstream(v)
        return v

    @property
    def base_url(self) -> str:
        return parse_upstream(self.upstream)


def parse_upstream(url: str) -> str:
    """``openai+http://HOST/v1`` → ``http://HOST/v1`` (the API base), or ConfigError."""
    scheme, _, rest = url.partition("://")
    if scheme not in UPSTREAM_SCHEMES or not rest:
        raise ConfigError(
            f"--upstream must be openai+http://HOST/v1 or openai+https://HOST/v1, got {url!r}"
        )
    base = f"{UPSTREAM_SCHEMES[scheme]}://{rest.rstrip('/')}"
    try:
        host = urlsplit(base).hostname
    except ValueError as exc:
        raise ConfigError(f"--upstream {url!r}: {exc}") from None
    if not host:
        raise ConfigError(f"--upstream {url!r} names no host")
    return base


def upstream_key(settings: FirewallSettings) -> str | None:
    """The upstream's API key from ``upstream_key_env`` (never logged), or None."""
    name = settings.upstream_key_env
    if not name:
        return None
    key = os.environ.get(name)
    if not key:
        raise ConfigError(f"environment variable {name} (the upstream's API key) is not set")
    return key


def load_firewall_settings(
    config: str | Path | None,
    firewall: dict[str, Any],
    serve: dict[str, Any],
) -> tuple[ServeSettings, FirewallSettings]:
    """The gateway's and the firewall's settings from ``config`` (YAML) with overrides
    (``None`` means unset): ``firewall`` for the ``firewall:`` section, ``serve`` for the rest."""
    data: dict[str, Any] = {}
    source = str(config) if config else "serve settings"
    if config is not None:
        raw = read_yaml(config)
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"{config}: expected a mapping of settings, got {type(raw).__name__}")
        data = dict(raw or {})
    section = data.pop("firewall", None) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: firewall: expected a mapping")
    from_yaml = section.get("profile") if firewall.get("profile") is None else None
    firewall = dict(firewall)
    classifier = firewall.pop("injection_classifier", None)
    clf_from_yaml = _classifier_in(section) if classifier is None else None
    section = {**section, **{k: v for k, v in firewall.items() if v is not None}}
    if classifier is not None:
        section = _with_classifier(section, classifier)
    if "upstream" not in section:
        raise ConfigError("give --upstream openai+http://HOST/v1 (or firewall.upstream)")
    parse_upstream(str(section["upstream"]))  # its own one-line message first
    fw = validate(FirewallSettings, section, f"{source}: firewall")
    if from_yaml is not None and config is not None and not Path(str(from_yaml)).is_absolute():
        fw = fw.model_copy(update={"profile": Path(config).parent / str(from_yaml)})
    if clf_from_yaml is not None and config is not None and not Path(clf_from_yaml).is_absolute():
        fw = _with_classifier_path(fw, Path(config).parent / clf_from_yaml)
    inj = fw.input.injection
    if inj.classifier is not None:
        from bastion.llm.firewall.classifier import check_classifier_dir

        check_classifier_dir(inj.classifier, inj.classifier_label)  # one line, before binding
    for key in ("model", "model_dir", "entry_point", "weights", "data"):
        if data.get(key) is not None:
            raise ConfigError(
                f"{source}: {key}: not used with an upstream (the firewall has no model)"
            )
    if (fw.input.secrets, fw.output.secrets) != ("off", "off"):
        from bastion.llm.firewall.secrets import require

        require()
    data.update({k: v for k, v in serve.items() if v is not None})
    settings = validate(ServeSettings, data, source)
    for path in (settings.ssl_certfile, settings.ssl_keyfile):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"TLS file not found: {path}")
    return settings, fw


def _classifier_in(section: dict[str, Any]) -> str | None:
    inp = section.get("input")
    inj = inp.get("injection") if isinstance(inp, dict) else None
    value = inj.get("classifier") if isinstance(inj, dict) else None
    return str(value) if value is not None else None


def _with_classifier(section: dict[str, Any], classifier: Any) -> dict[str, Any]:
    """``section`` with ``input.injection.classifier`` set (the ``--injection-classifier``)."""
    inp = section.get("input") or {}
    inj = (inp.get("injection") or {}) if isinstance(inp, dict) else None
    if not isinstance(inp, dict) or not isinstance(inj, dict):
        return section  # not a mapping: validation says so
    return {**section, "input": {**inp, "injection": {**inj, "classifier": classifier}}}


def _with_classifier_path(fw: FirewallSettings, path: Path) -> FirewallSettings:
    inj = fw.input.injection.model_copy(update={"classifier": path})
    return fw.model_copy(update={"input": fw.input.model_copy(update={"injection": inj})})


def wants_firewall(config: str | Path | None, upstream: str | None) -> bool:
    """True when ``bastion serve`` should run the firewall: ``--upstream`` or a
    ``firewall:`` section in serve.yaml."""
    if upstream is not None:
        return True
    if config is None:
        return False
    raw = read_yaml(config)
    return isinstance(raw, dict) and raw.get("firewall") is not None


def load_profile(fw: FirewallSettings) -> AppProfile | None:
    """The application profile named by ``profile`` (one-line error when unusable)."""
    if fw.profile is None:
        return None
    if not Path(fw.profile).is_file():
        raise ConfigError(f"--profile {fw.profile}: no such file (an application profile YAML)")
    return load_app_profile(fw.profile)
