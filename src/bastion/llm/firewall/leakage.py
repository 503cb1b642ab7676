"""Leakage in an output: a canary (reusing :func:`bastion.llm.oracles.canary_leak`: plain,
base64, reversed, spaced), a sensitive record value, or a verbatim run of a system prompt.

:class:`LeakDetector` is built once per request from the profile's canaries and the
request's system messages; ``check`` looks at one text (an output, or a stream's window).
A window may start inside a base64 blob, so the canary check also tries the three other
alignments of its start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bastion.llm.oracles import B64, canary_leak

SPACE = re.compile(r"\s+")


def _norm(text: str) -> str:
    return SPACE.sub(" ", text).strip().lower()


@dataclass
class LeakDetector:
    """``canaries``: strings that must never be output; ``system_prompts``: texts of which no
    run of ``overlap_chars`` characters (whitespace collapsed, case folded) may be output."""

    canaries: list[str] = field(default_factory=list)
    system_prompts: list[str] = field(default_factory=list)
    overlap_chars: int = 40

    def __post_init__(self) -> None:
        k = self.overlap_chars
        self._grams: set[str] = set()
        if k:
            for prompt in self.system_prompts:
                flat = _norm(prompt)
                self._grams.update(flat[i : i + k] for i in range(0, max(0, len(flat) - k + 1)))

    def check(self, text: str) -> str | None:
        """The first leak in ``text`` as a reason, or None."""
        shifts = range(4) if B64.search(text) else range(1)  # alignment only matters to base64
        for canary in self.canaries:
            for shift in shifts:
                form = canary_leak(text[shift:], canary)
                if form:
                    return f"canary leaked ({form})"
        if self._grams:
            flat, k = _norm(text), self.overlap_chars
            for i in range(0, len(flat) - k + 1):
                if flat[i : i + k] in self._grams:
                    return f"system prompt leaked ({k}+ characters verbatim)"
        return None
