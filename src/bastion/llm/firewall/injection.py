"""Prompt-injection heuristics: general patterns of the attack families, scored.

Each detector looks for the shape of a family, not for a known template:

- ``instruction-override``: a verb of setting aside (ignore, disregard, forget, override,
  bypass; also in Spanish, French, German, Italian, Portuguese) near a word for the rules in
  force (instructions, rules, guidelines, prompt …), or a claim that they "no longer apply",
  or a message posing as the system or the developer;
- ``role-play``: a persona without rules (DAN, "jailbroken", "no restrictions", "always
  obeys") or a privileged mode (developer, debug, maintenance, god mode) taken on by
  "pretend", "you are now", "act as", "let's play";
- ``encoding``: base64 or hex blobs that decode to text, scanned again after decoding; a
  request to decode something and do what it says;
- ``payload-splitting``: a request to join pieces and follow the result; the quoted pieces
  are joined and scanned again;
- ``many-shot``: a single message holding many fabricated dialogue turns;
- ``prompt-extraction``: a request to repeat, print or reveal the system prompt, the
  instructions or "the text above", verbatim, encoded, reversed or spaced out;
- ``indirect``: text addressed to "the AI reading this" (planted in documents, tool results).

The score of a text is ``1 - Π(1 - wᵢ)`` over the weights of the cues found (each cue
counted once); a decoded or joined payload scores what its content scores, at least.
Evaluated on a held-out split (``benchmarks/bench_llm_guard.py``, docs/benchmarks/llm.md).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

_F = re.I | re.S


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, _F)


SET_ASIDE = r"(ignore|disregard|forget|override|overrule|bypass|skip|drop|abandon|set aside)"
RULES = (
    r"(instructions?|rules|directions|directives|guidelines|guardrails|constraints|"
    r"restrictions|prompts?|programming|policies|polic(y|ies)|commands)"
)
SCOPE = (
    r"(all|any|every|the|your|previous|prior|earlier|above|preceding|initial|original|system|old)"
)

# (family, cue name, weight, pattern)
CUES: list[tuple[str, str, float, re.Pattern[str]]] = [
    (
        "instruction-override",
        "set-aside-rules",
        0.85,
        _rx(rf"\b{SET_ASIDE}\b(\W+\w+){{0,3}}?\W+{SCOPE}\b(\W+\w+){{0,3}}?\W+{RULES}\b"),
    ),
    (
        "instruction-override",
        "no-longer-apply",
        0.7,
        _rx(rf"\b{RULES}\b.{{0,30}}\bno longer (apply|valid|in (force|effect))"),
    ),
    (
        "instruction-override",
        "fake-authority",
        0.6,
        _rx(
            r"\b(system|admin(istrator)?|developer|root)\s+(override|message|notice|command|update)\b"
        ),
    ),
    (
        "instruction-override",
        "new-rules",
        0.45,
        _rx(
            r"\b(from now on|new instructions?|updated instructions?)\b.{0,60}\b(you (will|must|are)|reply|respond|answer|obey)"
        ),
    ),
    (
        "instruction-override",
        "set-aside-rules-i18n",
        0.85,
        _rx(
            r"\b(ignora|ignore[zs]?|olvida|oublie[zs]?|ignoriere|vergiss|dimentica|esque[cç]a)\b"
            r".{0,30}\b(instrucciones|instructions|anweisungen|regeln|istruzioni|instru[cç][oõ]es|r[eè]gles|reglas)\b"
        ),
    ),
    (
        "instruction-override",
        "set-aside-previous-i18n",
        0.85,
        _rx(
            r"\b(ignora|ignore[zs]?|olvida|oublie[zs]?|ignoriere|vergiss|dimentica|disregard|forget)\b"
            r".{0,40}\b(rules|directions|instructions|r[eè]gles|consignes|reglas|regeln)\b"
            r"\W{0,3}(pr[eé]c[eé]dentes|anteriores|vorherigen|precedenti|anteriori)"
        ),
    ),
    (
        "role-play",
        "unrestricted-persona",
        0.75,
        _rx(
            r"\b(DAN|jailbr(o|ea)ken|unfiltered|uncensored|unrestricted|amoral)\b|\b(no|without( any)?)\s+(rules|restrictions|filters|limits|guidelines|censorship)\b"
        ),
    ),
    (
        "role-play",
        "always-obeys",
        0.5,
        _rx(
            r"\b(always|must)\s+(obey|comply|complies|obeys|answer(s)? everything)\b|\bnever refuses?\b"
        ),
    ),
    (
        "role-play",
        "privileged-mode",
        0.45,
        _rx(r"\b(developer|debug|maintenance|god|admin|sudo|root|test(ing)?)\s+mode\b"),
    ),
    (
        "role-play",
        "persona-switch",
        0.3,
        _rx(
            r"\b(pretend (you are|to be|you're)|you are now|act as|let'?s play a game|role-?play as|stay in character)\b"
        ),
    ),
    (
        "role-play",
        "as-the-developer",
        0.35,
        _rx(r"\bas (the|your) (developer|creator|administrator|admin|operator)\b"),
    ),
    (
        "encoding",
        "decode-and-obey",
        0.6,
        _rx(
            r"\b(decode|decipher|decrypt|unscramble|convert)\b.{0,60}\b(do|follow|execute|obey|carry out|perform)\b.{0,20}\b(it|what|this|that|instructions?)\b"
        ),
    ),
    (
        "encoding",
        "encoded-task",
        0.45,
        _rx(
            r"\b(base ?64|hex(adecimal)?|rot ?13)\b.{0,30}\b(task|instructions?|command|orders?)\b"
        ),
    ),
    (
        "payload-splitting",
        "join-and-obey",
        0.65,
        _rx(
            r"\b(join|concatenate|combine|merge|put together|glue)\b.{0,60}\b(do|follow|execute|obey|carry out|perform)\b.{0,20}\b(it|what|this|that|result|instructions?)\b"
        ),
    ),
    (
        "payload-splitting",
        "variables",
        0.25,
        _rx(r"\blet\s+\w+\s*=\s*['\"].{0,200}['\"]\s*(,|and)\s*\w+\s*=\s*['\"]"),
    ),
    (
        "prompt-extraction",
        "reveal-prompt",
        0.7,
        _rx(
            r"\b(repeat|print|output|show|reveal|display|dump|leak|recite|spell out|write( out| down)?|tell me|give me|share|paste|list)\b"
            r"(\W+\w+){0,4}?\W+(your|the|my|its|these)\s+(\w+\s+){0,2}?"
            r"(system prompt|initial prompt|hidden prompt|prompt|instructions|guidelines|directives|configuration|rules you)\b"
        ),
    ),
    (
        "prompt-extraction",
        "reveal-your-rules",
        0.6,
        _rx(
            r"\b(repeat|print|output|show|reveal|display|dump|leak|recite|write|tell me|give me|share|paste|list)\b"
            r"(\W+\w+){0,3}?\W+your\s+(\w+\s+)?(rules|directions|instructions|prompt|guidelines)\b"
        ),
    ),
    (
        "prompt-extraction",
        "text-above",
        0.7,
        _rx(
            r"\b(repeat|print|output|show|copy|reproduce)\b.{0,30}\b(text|everything|words|content)\s+(above|before this|so far)\b"
        ),
    ),
    (
        "prompt-extraction",
        "verbatim",
        0.35,
        _rx(
            r"\b(verbatim|word for word|in full|from the (very )?(first|beginning)|including (everything|any internal))\b"
        ),
    ),
    (
        "prompt-extraction",
        "transformed-instructions",
        0.6,
        _rx(
            r"\b(instructions|system prompt|prompt|rules|directions)\b.{0,30}\b(base ?64|backwards|reversed|in reverse|character by character|a space between)\b|\b(backwards|in base ?64|reversed)\b.{0,30}\byour (instructions|prompt)\b"
        ),
    ),
    (
        "indirect",
        "addressed-to-ai",
        0.6,
        _rx(
            r"\b(note|message|instruction|attention)\s+(to|for)\s+(the\s+)?(ai|assistant|model|llm|chatbot|bot)\b"
        ),
    ),
    (
        "indirect",
        "before-anything",
        0.3,
        _rx(r"\b(before (anything|doing anything) else|important:|required:)\b"),
    ),
    (
        "indirect",
        "hidden-task",
        0.3,
        _rx(r"\b(the user (asked|wants) you to|you (must|are required to) now)\b"),
    ),
]
TURN = re.compile(r"^\s*(user|human|assistant|ai|bot|q|a)\s*:", re.I | re.M)
B64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{16,}={0,2}")
HEX = re.compile(r"\b(?:[0-9a-fA-F]{2}[\s:]?){12,}\b")
QUOTED = re.compile(r"'([^'\n]{1,400})'|\"([^\"\n]{1,400})\"")
MANY_SHOT_TURNS = 6


@dataclass(frozen=True)
class InjectionScore:
    """The score of one text and the cues behind it (``family.cue``)."""

    score: float
    cues: list[str] = field(default_factory=list)

    @property
    def families(self) -> list[str]:
        return list(dict.fromkeys(c.split(".", 1)[0] for c in self.cues))


def _printable(text: str) -> bool:
    return bool(text) and sum(c.isprintable() or c.isspace() for c in text) / len(text) > 0.95


def _decodings(text: str) -> list[str]:
    """Text hidden in base64 and hex blobs."""
    out = []
    for blob in B64.findall(text):
        padded = blob + "=" * (-len(blob) % 4)
        try:
            decoded = base64.b64decode(padded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        if _printable(decoded) and " " in decoded:
            out.append(decoded)
    for m in HEX.finditer(text):
        digits = re.sub(r"[\s:]", "", m.group(0))
        try:
            decoded = bytes.fromhex(digits[: len(digits) // 2 * 2]).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            continue
        if _printable(decoded) and " " in decoded:
            out.append(decoded)
    return out


def _joined(text: str) -> str:
    parts = [a or b for a, b in QUOTED.findall(text)]
    return "".join(parts) if len(parts) >= 2 else ""


def _combine(weights: list[float]) -> float:
    p = 1.0
    for w in weights:
        p *= 1.0 - w
    return 1.0 - p


def score_text(text: str, *, depth: int = 0) -> InjectionScore:
    """The injection score of ``text`` (0: no cue; decoded/joined payloads rescored)."""
    cues: list[str] = []
    weights: list[float] = []
    for family, name, weight, pattern in CUES:
        if pattern.search(text):
            cues.append(f"{family}.{name}")
            weights.append(weight)
    turns = len(TURN.findall(text))
    if turns >= MANY_SHOT_TURNS:
        cues.append("many-shot.fabricated-turns")
        weights.append(min(0.95, 0.5 + 0.05 * turns))
    inner = 0.0
    if depth < 2:
        hidden = [("encoding", d) for d in _decodings(text)]
        joined = _joined(text)
        if joined:
            hidden.append(("payload-splitting", joined))
        for family, payload in hidden:
            sub = score_text(payload, depth=depth + 1)
            if sub.score > 0:
                cues.append(f"{family}.hidden-payload")
                cues.extend(sub.cues)
                inner = max(inner, min(0.99, sub.score + 0.15))
            elif family == "encoding":
                cues.append("encoding.decodable-blob")
                weights.append(0.1)
    return InjectionScore(max(_combine(weights), inner), list(dict.fromkeys(cues)))
