"""The incremental scan of a streamed answer.

The upstream's text deltas are accumulated; text is released to the client only once
``holdback`` more characters have arrived after it, so a canary, a record or a verbatim run
of the system prompt is seen whole before any of it is sent. Each delta is checked over a
sliding window (the last ``window`` released characters plus the held-back ones): a
blocking rule stops the stream; redactions and stripping apply to the text being released,
and the release point never cuts through a match or an unclosed markdown image, link or
HTML tag (unless the held-back text outgrows the window). Every upstream chunk still
becomes one well-formed SSE event (see :mod:`bastion.llm.firewall.routes`).
"""

from __future__ import annotations

from bastion.llm.firewall.leakage import LeakDetector
from bastion.llm.firewall.records import Action, Finding
from bastion.llm.firewall.scanners import Firewall, apply

OPENERS = (("![", ")"), ("](", ")"), ("<", ">"))


class StreamGuard:
    def __init__(
        self, firewall: Firewall, leak: LeakDetector, *, holdback: int, window: int
    ) -> None:
        self.firewall = firewall
        self.leak = leak
        self.holdback = holdback
        self.window = window
        self.pending = ""
        self.tail = ""
        self.released = 0
        self.findings: dict[str, Finding] = {}

    def _open_at(self, text: str) -> int | None:
        """Where an unclosed markdown image/link or HTML tag starts in ``text``."""
        starts = []
        for opener, closer in OPENERS:
            at = text.rfind(opener)
            if at >= 0 and closer not in text[at:]:
                starts.append(at)
        return min(starts) if starts else None

    def _release(self, cut: int, *, force: bool = False) -> str:
        reps = self.firewall.replacements(self.pending)
        for r in sorted(reps, key=lambda r: r.span.start):
            if r.span.start < cut < r.span.end:
                cut = r.span.start
        if (
            not force
            and len(self.pending) <= self.window
            and (opened := self._open_at(self.pending)) is not None
        ):
            cut = min(cut, opened)
        if cut <= 0:
            return ""
        done = [r for r in reps if r.span.end <= cut]
        for r in done:
            action: Action = "strip" if r.rule == "output.links" else "redact"
            self.findings.setdefault(
                r.rule, Finding(r.rule, action, f"{r.span.kind} removed from the stream")
            )
        out = apply(self.pending[:cut], done)
        self.pending = self.pending[cut:]
        self.tail = (self.tail + out)[-self.window :]
        self.released += len(out)
        return out

    def feed(self, delta: str) -> tuple[str, Finding | None]:
        """The text to send now for one upstream delta, or the finding that stops the stream."""
        self.pending += delta
        stop = self.firewall.blocker(self.tail + self.pending, self.leak)
        if stop is not None:
            return "", stop
        cut = len(self.pending) - self.holdback
        return (self._release(cut) if cut > 0 else ""), None

    def finish(self) -> tuple[str, Finding | None]:
        """At the end of the upstream stream: the last check, then everything held back."""
        stop = self.firewall.blocker(self.tail + self.pending, self.leak)
        if stop is not None:
            return "", stop
        out = self._release(len(self.pending))
        if self.pending:  # an unclosed opener: nothing more will close it
            out += self._release(len(self.pending), force=True)
        return out, None
