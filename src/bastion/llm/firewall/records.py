"""Typed results of the firewall's scanners: a finding per rule that fired, a decision per
request side (input, output)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Action = Literal["allow", "flag", "redact", "strip", "hold", "block"]
ACTION_ORDER: dict[str, int] = {
    "allow": 0,
    "flag": 1,
    "redact": 2,
    "strip": 2,
    "hold": 3,
    "block": 4,
}


@dataclass(frozen=True)
class Span:
    """A piece of text a rule matched: ``[start, end)`` and what replaces it when redacted."""

    start: int
    end: int
    kind: str

    @property
    def replacement(self) -> str:
        return f"[REDACTED:{self.kind.upper()}]"


@dataclass(frozen=True)
class Finding:
    """One rule that fired: ``rule`` (e.g. ``injection.instruction-override``), the action
    configured for it, a one-line ``reason`` and a score (1.0 for exact rules)."""

    rule: str
    action: Action
    reason: str
    score: float = 1.0

    def line(self) -> str:
        return f"{self.rule}: {self.reason}"


@dataclass(frozen=True)
class Decision:
    """What the firewall decided for one side of a request; ``text`` is the (possibly
    redacted) text to pass on, ``findings`` every rule that fired."""

    action: Action
    findings: list[Finding] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        return [f.line() for f in self.findings]

    def of(self, action: Action) -> list[Finding]:
        return [f for f in self.findings if f.action == action]


def worst(findings: list[Finding]) -> Action:
    """The most severe action among ``findings`` (``allow`` when none)."""
    return max((f.action for f in findings), key=ACTION_ORDER.__getitem__, default="allow")


def redact(text: str, spans: list[Span]) -> str:
    """``text`` with every span replaced (overlapping spans merged, the first kind kept)."""
    if not spans:
        return text
    out, pos = [], 0
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if span.end <= pos:
            continue
        start = max(span.start, pos)
        out.append(text[pos:start])
        if start == span.start:
            out.append(span.replacement)
        pos = span.end
    out.append(text[pos:])
    return "".join(out)
