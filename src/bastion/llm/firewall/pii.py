"""Personal-data recognizers over text: e-mail, phone, payment card (Luhn-checked), IBAN
(ISO 13616 mod-97 checked) and US SSN (with the SSA's invalid ranges excluded). Patterns
and checksums only: nothing downloads a language model."""

from __future__ import annotations

import re

from bastion.llm.firewall.records import Span

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
SSN = re.compile(r"(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)")
PHONE = re.compile(
    r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,4}[ .-]\d{3,4}[ .-]?\d{3,4}"
    r"(?![\w]|[ .-]\d)"
)


def luhn_ok(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    raw = text.replace(" ", "")
    if not 15 <= len(raw) <= 34:
        return False
    moved = raw[4:] + raw[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def find_pii(text: str) -> list[Span]:
    """Every recognised item's span (kinds ``email``, ``card``, ``iban``, ``ssn``, ``phone``)."""
    spans = [Span(m.start(), m.end(), "email") for m in EMAIL.finditer(text)]
    for m in CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            spans.append(Span(m.start(), m.end(), "card"))
    spans += [Span(m.start(), m.end(), "iban") for m in IBAN.finditer(text) if iban_ok(m.group(0))]
    spans += [Span(m.start(), m.end(), "ssn") for m in SSN.finditer(text)]
    taken = [(s.start, s.end) for s in spans]
    for m in PHONE.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        inside = any(a <= m.start() < b or a < m.end() <= b for a, b in taken)
        if 7 <= len(digits) <= 15 and not inside:
            spans.append(Span(m.start(), m.end(), "phone"))
    return spans
