"""The firewall's input and output scanners, composed from the single-concern modules and
configured by :class:`~bastion.llm.firewall.config.FirewallSettings` and the application
profile (canaries, sensitive records, forbidden tools, allowed link hosts).

Input (the messages of the roles in ``input.roles``): the injection score decides
allow / hold / block; secrets and PII are flagged, redacted (before the upstream sees
them), held or blocked as configured. Output (each choice's text and tool calls): a leak
or a forbidden tool call blocks; secrets and PII are redacted; unsafe markup and
exfiltration links are stripped — or any of them flagged only, as configured.

With ``input.injection.classifier`` the injection score is the higher of the heuristics'
and the classifier's (:mod:`bastion.llm.firewall.classifier`, one batched pass over the
scanned texts); :meth:`Firewall.scan_input_async` then scans in a worker thread.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bastion.llm.firewall import injection, links, pii, secrets
from bastion.llm.firewall.config import FirewallSettings
from bastion.llm.firewall.leakage import LeakDetector
from bastion.llm.firewall.records import Action, Decision, Finding, Span, redact, worst
from bastion.llm.profile import AppProfile

if TYPE_CHECKING:
    from bastion.llm.firewall.classifier import InjectionClassifier


def message_texts(message: dict[str, Any]) -> list[str]:
    """The text of a chat message: its string content, or its text parts."""
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
    return []


def _map_texts(message: dict[str, Any], fn: Any) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": fn(content)}
    if isinstance(content, list):
        parts = [
            {**p, "text": fn(p["text"])}
            if isinstance(p, dict) and isinstance(p.get("text"), str)
            else p
            for p in content
        ]
        return {**message, "content": parts}
    return message


@dataclass(frozen=True)
class InputResult:
    decision: Decision
    messages: list[dict[str, Any]]  # what goes upstream (redacted where configured)
    injection_score: float = 0.0


@dataclass(frozen=True)
class Replacement:
    span: Span
    text: str
    rule: str


@dataclass
class OutputResult:
    text: str
    findings: list[Finding] = field(default_factory=list)


class Firewall:
    """Scanners for one gateway (settings and profile fixed at start-up)."""

    def __init__(
        self,
        settings: FirewallSettings,
        profile: AppProfile | None = None,
        classifier: InjectionClassifier | None = None,
    ) -> None:
        self.settings = settings
        self.profile = profile
        inj = settings.input.injection
        if classifier is None and inj.enabled and inj.classifier is not None:
            from bastion.llm.firewall.classifier import InjectionClassifier

            classifier = InjectionClassifier(inj.classifier, label=inj.classifier_label)
        self.classifier = classifier
        self.canaries: list[str] = []
        self.forbidden_tools: set[str] = set()
        self.allowed_hosts = list(settings.output.allowed_link_hosts)
        if profile is not None:
            self.canaries = [profile.canary_token, *profile.record_values]
            self.forbidden_tools = set(profile.forbidden_tools)
            self.allowed_hosts += profile.allowed_link_hosts

    # -- input ----------------------------------------------------------------------------

    async def scan_input_async(self, messages: list[dict[str, Any]]) -> InputResult:
        """:meth:`scan_input`, in a worker thread when a classifier runs."""
        if self.classifier is None:
            return self.scan_input(messages)
        return await asyncio.to_thread(self.scan_input, messages)

    def scan_input(self, messages: list[dict[str, Any]]) -> InputResult:
        cfg = self.settings.input
        findings: list[Finding] = []
        scanned = [m for m in messages if m.get("role") in cfg.roles]
        text = "\n".join(t for m in scanned for t in message_texts(m))
        score = 0.0
        if cfg.injection.enabled:
            found = max(
                (injection.score_text(t) for m in scanned for t in message_texts(m)),
                key=lambda s: s.score,
                default=injection.InjectionScore(0.0),
            )
            score = found.score
            families = found.families
            if self.classifier is not None:
                p = self.classifier.probability([t for m in scanned for t in message_texts(m)])
                if p > score:
                    score, families = p, [*families, "classifier"]
            action: Action | None = None
            if score >= cfg.injection.block_at:
                action = "block"
            elif score >= cfg.injection.hold_at:
                action = "hold"
            if action is not None:
                findings.append(
                    Finding(
                        "input.injection",
                        action,
                        f"prompt injection ({', '.join(families)}; score {score:.2f})",
                        score,
                    )
                )
        redacting: list[str] = []
        for rule, setting, finder in (
            ("input.secrets", cfg.secrets, secrets.find_secrets),
            ("input.pii", cfg.pii, pii.find_pii),
        ):
            if setting == "off":
                continue
            kinds = sorted({s.kind for s in finder(text)})
            if kinds:
                findings.append(Finding(rule, setting, f"{', '.join(kinds)} in the prompt"))
                if setting == "redact":
                    redacting.append(rule)
        out = messages
        if redacting:

            def clean(t: str) -> str:
                found: list[Span] = []
                if "input.secrets" in redacting:
                    found += secrets.find_secrets(t)
                if "input.pii" in redacting:
                    found += pii.find_pii(t)
                return redact(t, found)

            out = [_map_texts(m, clean) if m.get("role") in cfg.roles else m for m in messages]
        return InputResult(Decision(worst(findings), findings), out, score)

    # -- output ---------------------------------------------------------------------------

    def leak_detector(self, messages: list[dict[str, Any]]) -> LeakDetector:
        """Leak checks for one request: the profile's canaries and the request's own
        system prompts."""
        cfg = self.settings.output
        systems = [t for m in messages if m.get("role") == "system" for t in message_texts(m)]
        return LeakDetector(
            canaries=self.canaries if cfg.leakage != "off" else [],
            system_prompts=systems if cfg.leakage != "off" else [],
            overlap_chars=cfg.system_prompt_overlap_chars,
        )

    def blocker(self, text: str, leak: LeakDetector) -> Finding | None:
        """The first rule whose action is ``block`` that ``text`` fires, or None."""
        cfg = self.settings.output
        if cfg.leakage == "block" and (reason := leak.check(text)):
            return Finding("output.leakage", "block", reason)
        for rule, setting, finder in (
            ("output.secrets", cfg.secrets, secrets.find_secrets),
            ("output.pii", cfg.pii, pii.find_pii),
        ):
            if setting == "block" and (found := finder(text)):
                return Finding(rule, "block", f"{found[0].kind} in the output")
        if cfg.links == "block" and (unsafe := links.find_unsafe(text, self.allowed_hosts)):
            return Finding("output.links", "block", f"unsafe {unsafe[0][0].kind} in the output")
        return None

    def replacements(self, text: str) -> list[Replacement]:
        """What the redacting and stripping rules replace in ``text``."""
        cfg = self.settings.output
        out: list[Replacement] = []
        if cfg.secrets == "redact":
            out += [
                Replacement(s, s.replacement, "output.secrets") for s in secrets.find_secrets(text)
            ]
        if cfg.pii == "redact":
            out += [Replacement(s, s.replacement, "output.pii") for s in pii.find_pii(text)]
        if cfg.links == "strip":
            out += [
                Replacement(s, r, "output.links")
                for s, r in links.find_unsafe(text, self.allowed_hosts)
            ]
        return out

    def flags(self, text: str, leak: LeakDetector) -> list[Finding]:
        """Findings of the rules configured to ``flag`` only."""
        cfg = self.settings.output
        out: list[Finding] = []
        if cfg.leakage == "flag" and (reason := leak.check(text)):
            out.append(Finding("output.leakage", "flag", reason))
        for rule, setting, finder in (
            ("output.secrets", cfg.secrets, secrets.find_secrets),
            ("output.pii", cfg.pii, pii.find_pii),
        ):
            if setting == "flag" and (found := finder(text)):
                out.append(Finding(rule, "flag", f"{found[0].kind} in the output"))
        if cfg.links == "flag" and (unsafe := links.find_unsafe(text, self.allowed_hosts)):
            out.append(Finding("output.links", "flag", f"unsafe {unsafe[0][0].kind}"))
        return out

    def scan_output(self, text: str, leak: LeakDetector) -> OutputResult:
        """One whole output text: blocked, or redacted/stripped and flagged."""
        if (found := self.blocker(text, leak)) is not None:
            return OutputResult("", [found])
        reps = self.replacements(text)
        findings = self.flags(text, leak)
        for rule in dict.fromkeys(r.rule for r in reps):
            kinds = sorted({r.span.kind for r in reps if r.rule == rule})
            action: Action = "strip" if rule == "output.links" else "redact"
            findings.append(Finding(rule, action, f"{', '.join(kinds)} removed from the output"))
        return OutputResult(apply(text, reps), findings)

    def tool_call(self, name: str) -> Finding | None:
        """A call to a tool the profile forbids (blocked or flagged as configured)."""
        setting = self.settings.output.tools
        if setting == "off" or name not in self.forbidden_tools:
            return None
        return Finding("output.tools", setting, f"call to forbidden tool {name!r}")


def apply(text: str, reps: list[Replacement]) -> str:
    """``text`` with the replacements made (overlaps: the first one wins)."""
    return links.strip(text, [(r.span, r.text) for r in reps])
