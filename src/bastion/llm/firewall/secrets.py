"""Secrets in text, found by detect-secrets' plugins in process (no network, no model).

The regex plugins (AWS, GitHub, GitLab, Slack, Stripe, OpenAI, private keys, JWTs, …) give
the spans of their matches; the keyword plugin (``password = "…"``) gives the secret value,
located in the text. The high-entropy and IP plugins are left out: on chat text they fire
on ordinary words.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from bastion.errors import ConfigError
from bastion.llm.firewall.records import Span

SKIPPED = {"Base64 High Entropy String", "Hex High Entropy String", "Public IP (ipv4)"}


def require() -> None:
    """Load the plugins now, or ConfigError naming the extra to install."""
    try:
        _plugins()
    except ImportError:
        raise ConfigError(
            "the LLM firewall's secrets scanner needs detect-secrets: pip install "
            "'bastion-ml[llm]' (or set firewall.input.secrets and output.secrets to off)"
        ) from None


@lru_cache(maxsize=1)
def _plugins() -> tuple[list[tuple[str, re.Pattern[str]]], list[Any]]:
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.plugins.base import RegexBasedDetector
    from detect_secrets.settings import default_settings

    patterns: list[tuple[str, re.Pattern[str]]] = []
    others: list[Any] = []
    with default_settings():
        for secret_type, cls in get_mapping_from_secret_type_to_class().items():
            if secret_type in SKIPPED:
                continue
            plugin = cls()
            if isinstance(plugin, RegexBasedDetector):
                patterns.extend((secret_type, p) for p in plugin.denylist)
            else:
                others.append(plugin)
    return patterns, others


def find_secrets(text: str) -> list[Span]:
    """Every secret's span in ``text`` (kind ``secret``)."""
    patterns, others = _plugins()
    spans = [Span(m.start(), m.end(), "secret") for _, p in patterns for m in p.finditer(text)]
    for line_no, line in enumerate(text.splitlines(keepends=True) or [text], 1):
        if not any(k in line.lower() for k in ("pass", "secret", "key", "token", "pwd")):
            continue
        offset = sum(len(x) for x in text.splitlines(keepends=True)[: line_no - 1])
        for plugin in others:
            for found in plugin.analyze_line(filename="chat", line=line, line_number=line_no):
                value = found.secret_value or ""
                at = line.find(value) if value else -1
                if at >= 0:
                    spans.append(Span(offset + at, offset + at + len(value), "secret"))
    return [s for s in spans if s.end > s.start]


def secret_kinds(text: str) -> list[str]:
    """The secret types found (for reasons), each once."""
    patterns, _ = _plugins()
    return list(dict.fromkeys(t for t, p in patterns if p.search(text)))
