"""Markup and exfiltration links in an output, found with the patterns of
:func:`bastion.llm.oracles.insecure_markup` and stripped.

- a markdown image whose host is not allowed (the browser fetches it as soon as it renders,
  sending whatever the URL carries) becomes ``[image removed]``;
- a markdown link to a host not allowed whose URL carries a query or a fragment (data on
  its way out) keeps its text, loses its URL;
- ``<script>…</script>``, ``<iframe …>``, tags with inline event handlers and
  ``javascript:`` URLs become ``[markup removed]``.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from bastion.llm import oracles
from bastion.llm.firewall.records import Span

MD_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)[^)]*\)")
MD_LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(\s*<?([^)\s>]+)[^)]*\)")
SCRIPT_BLOCK = re.compile(r"<\s*script\b.*?(<\s*/\s*script\s*>|$)", re.I | re.S)
IFRAME_TAG = re.compile(r"<\s*iframe\b[^>]*>(.*?<\s*/\s*iframe\s*>)?", re.I | re.S)
HANDLER_TAG = re.compile(r"<[a-z][^>]*\son[a-z]+\s*=[^>]*>?", re.I)
JS_URL = re.compile(r"javascript\s*:[^\s)\"'>]*", re.I)


def _allowed(url: str, hosts: set[str]) -> bool:
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    return host is None or host.lower() in hosts


def find_unsafe(text: str, allowed_hosts: list[str]) -> list[tuple[Span, str]]:
    """Each unsafe piece's span and what replaces it."""
    hosts = {h.lower() for h in allowed_hosts}
    out: list[tuple[Span, str]] = []
    for m in MD_IMAGE.finditer(text):
        if not _allowed(m.group(1), hosts):
            out.append((Span(m.start(), m.end(), "image"), "[image removed]"))
    for m in MD_LINK.finditer(text):
        url = m.group(2)
        parts = urlsplit(url) if "://" in url else None
        if parts is not None and (parts.query or parts.fragment) and not _allowed(url, hosts):
            out.append((Span(m.start(), m.end(), "link"), m.group(1)))
    if oracles.insecure_markup(text, allowed_hosts) not in (None, "markdown-image-exfiltration"):
        for pattern in (SCRIPT_BLOCK, IFRAME_TAG, HANDLER_TAG, JS_URL):
            out.extend(
                (Span(m.start(), m.end(), "markup"), "[markup removed]")
                for m in pattern.finditer(text)
            )
    return out


def strip(text: str, found: list[tuple[Span, str]]) -> str:
    """``text`` with each found piece replaced (overlaps: the first one wins)."""
    pieces, pos = [], 0
    for span, replacement in sorted(found, key=lambda f: (f[0].start, -f[0].end)):
        if span.start < pos:
            continue
        pieces.append(text[pos : span.start])
        pieces.append(replacement)
        pos = span.end
    pieces.append(text[pos:])
    return "".join(pieces)
