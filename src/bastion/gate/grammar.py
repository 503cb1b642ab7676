"""The policy rule grammar: a small hand-written tokenizer and recursive-descent parser.

No ``eval``: a rule is one comparison of a metric with a number::

    rule      := metric OP number
    metric    := NAME [ "." NAME ] [ "(" [ arg { "," arg } ] ")" ]
    arg       := value | NAME "=" value
    value     := number | NAME | STRING
    number    := ["-"] DIGITS [ "." DIGITS ] [ ("e"|"E") ["-"|"+"] DIGITS ] [ "/" DIGITS ... ]
    OP        := ">=" | "<=" | ">" | "<" | "==" | "!="

``NAME`` is letters, digits, ``_`` and ``-`` (so ``apgd-ce`` and ``label-flip`` need no
quotes), starting with a letter or ``_``; a fraction such as ``8/255`` is a number.
Examples: ``robust_accuracy(attack=ensemble, eps=8/255) >= 0.70``,
``membership.tpr_at_fpr(0.001) <= 0.01``, ``count(risks, priority=high, status=open) == 0``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from bastion.errors import ConfigError

OPS = (">=", "<=", "==", "!=", ">", "<")


class PolicyError(ConfigError):
    """A policy rule cannot be parsed or names an unknown metric."""


class RuleSyntaxError(PolicyError):
    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.column = column


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_\-]*)
  | (?P<string>"[^"]*"|'[^']*')
  | (?P<op>>=|<=|==|!=|>|<)
  | (?P<punct>[().,=/])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    column: int  # 1-based


Value = float | str


@dataclass(frozen=True)
class MetricCall:
    """``namespace.name(args, key=value)`` as written in a rule."""

    namespace: str | None
    name: str
    args: tuple[Value, ...] = ()
    kwargs: tuple[tuple[str, Value], ...] = ()
    called: bool = False

    @property
    def qualified(self) -> str:
        return f"{self.namespace}.{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class Comparison:
    metric: MetricCall
    op: str
    threshold: float


def tokenize(text: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            ch = text[pos]
            raise RuleSyntaxError(f"unexpected character {ch!r}", pos + 1)
        kind = m.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, m.group(), pos + 1))
        pos = m.end()
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        t = self.tokens[self.i]
        self.i += 1
        return t

    def expect(self, kind: str, text: str | None, what: str) -> Token:
        t = self.tok
        if t.kind != kind or (text is not None and t.text != text):
            found = "the end of the rule" if t.kind == "end" else repr(t.text)
            raise RuleSyntaxError(f"expected {what}, found {found}", t.column)
        return self.take()

    def parse(self) -> Comparison:
        if self.tok.kind == "end":
            raise RuleSyntaxError("the rule is empty: write e.g. `score <= 40`", 1)
        metric = self.metric()
        if self.tok.kind != "op":
            found = "the end of the rule" if self.tok.kind == "end" else repr(self.tok.text)
            if self.tok.text == "=":
                found += " (use == to compare)"
            raise RuleSyntaxError(
                f"expected a comparison ({', '.join(OPS)}) after {metric.qualified}, found {found}",
                self.tok.column,
            )
        op = self.take().text
        threshold = self.number("a number to compare with")
        if self.tok.kind != "end":
            raise RuleSyntaxError(
                f"unexpected {self.tok.text!r} after the threshold: a rule is one comparison",
                self.tok.column,
            )
        return Comparison(metric, op, threshold)

    def metric(self) -> MetricCall:
        first = self.expect("name", None, "a metric name (e.g. robust_accuracy, score)")
        namespace, name = None, first.text
        if self.tok.text == ".":
            self.take()
            namespace, name = first.text, self.expect("name", None, "a metric name after '.'").text
        args: list[Value] = []
        kwargs: list[tuple[str, Value]] = []
        called = False
        if self.tok.text == "(":
            called = True
            self.take()
            while self.tok.text != ")":
                if self.tok.kind == "name" and self.tokens[self.i + 1].text == "=":
                    key = self.take()
                    self.take()
                    if any(k == key.text for k, _ in kwargs):
                        raise RuleSyntaxError(f"{key.text}= is given twice", key.column)
                    kwargs.append((key.text, self.value()))
                else:
                    if kwargs:
                        raise RuleSyntaxError(
                            "positional arguments must come before key=value filters",
                            self.tok.column,
                        )
                    args.append(self.value())
                if self.tok.text == ",":
                    self.take()
                elif self.tok.text != ")":
                    found = "the end of the rule" if self.tok.kind == "end" else repr(self.tok.text)
                    raise RuleSyntaxError(
                        f"expected ',' or ')' in the arguments of {name}, found {found}",
                        self.tok.column,
                    )
            self.take()
        return MetricCall(namespace, name, tuple(args), tuple(kwargs), called)

    def value(self) -> Value:
        t = self.tok
        if t.kind == "number":
            return self.number("a value")
        if t.kind == "name":
            return self.take().text
        if t.kind == "string":
            return self.take().text[1:-1]
        found = "the end of the rule" if t.kind == "end" else repr(t.text)
        raise RuleSyntaxError(f"expected a value (number or name), found {found}", t.column)

    def number(self, what: str) -> float:
        t = self.tok
        if t.kind != "number":
            found = "the end of the rule" if t.kind == "end" else repr(t.text)
            raise RuleSyntaxError(f"expected {what}, found {found}", t.column)
        self.take()
        value = float(t.text)
        while self.tok.text == "/":
            slash = self.take()
            d = self.tok
            if d.kind != "number":
                raise RuleSyntaxError("expected a number after '/'", slash.column)
            self.take()
            if float(d.text) == 0:
                raise RuleSyntaxError("division by zero", d.column)
            value /= float(d.text)
        if not math.isfinite(value):
            raise RuleSyntaxError(f"{t.text} is too large to be a threshold or value", t.column)
        return value


def parse_rule(text: str) -> Comparison:
    """Parse one rule; raises :class:`RuleSyntaxError` with the 1-based column."""
    if not isinstance(text, str):
        raise RuleSyntaxError(f"a rule must be a string, got {type(text).__name__}", 1)
    return _Parser(text).parse()
