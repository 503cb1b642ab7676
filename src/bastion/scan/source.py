"""What every analyser of ``bastion scan`` shares: the limits of one scan, the member being
analysed (a file on disk or bytes read out of a container) and the running scan that
collects findings and enforces the byte budget.

Reading out of a container goes through :meth:`Scan.read_capped`, in chunks: a member larger
than :attr:`ScanLimits.max_member_bytes`, a file whose members together inflate past
:attr:`ScanLimits.max_total_bytes`, or a member that inflates more than
:attr:`ScanLimits.max_ratio` times its compressed size (past :attr:`ScanLimits.bomb_floor`)
stops with an ``archive.bomb`` finding instead of filling memory (zip bombs: D. Fifield,
"A better zip bomb", WOOT 2019).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from bastion.scan.findings import ScanFinding, Severity

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
CHUNK = 1 * MiB


@dataclass(frozen=True)
class ScanLimits:
    """Bounds that keep a hostile file from hanging the scan or exhausting memory."""

    max_depth: int = 4  # containers inside containers (zip in zip in tar …)
    max_members: int = 10_000  # members of one container
    max_member_bytes: int = 2 * GiB  # one member, decompressed
    max_total_bytes: int = 8 * GiB  # every member of one file, decompressed
    max_ratio: float = 200.0  # decompressed / compressed above this is a bomb …
    bomb_floor: int = 16 * MiB  # … once a member has inflated past this many bytes
    max_header_bytes: int = 100 * MiB  # safetensors / GGUF / .npy headers, Jinja templates


class Overflow(Exception):
    """A member inflated past a limit (raised inside capped writers, caught by the caller)."""


@dataclass
class Member:
    """One thing to analyse: the file itself (``path``) or bytes read out of a container.

    A file is read through :meth:`from_file`: whole when it is small (one read serves the
    sniff and the analyser), otherwise its size and first bytes are kept so that neither
    is read twice.
    """

    location: str  # the file, then container members joined by '!'
    name: str  # its own name (suffix hints only: formats are sniffed from content)
    data: bytes | None = None
    path: Path | None = None
    file_size: int | None = field(default=None, repr=False)  # of ``path``, once known
    file_head: bytes = field(default=b"", repr=False)  # first bytes of ``path``, once read

    @classmethod
    def from_file(cls, path: Path, size: int, whole: int) -> Member:
        """The file at ``path`` (``size`` bytes by its stat); its bytes are read at once
        when it has at most ``whole`` of them, else its first ``whole`` bytes are kept."""
        fd = os.open(path, os.O_RDONLY)  # plain syscalls: most files are small
        try:
            parts: list[bytes] = []
            got = 0
            while got <= whole:
                part = os.read(fd, whole + 1 - got)
                if not part:
                    break
                parts.append(part)
                got += len(part)
        finally:
            os.close(fd)
        head = b"".join(parts)
        if len(head) <= whole:
            return cls(location=str(path), name=path.name, data=head)
        return cls(location=str(path), name=path.name, path=path, file_size=size, file_head=head)

    @property
    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        if self.file_size is None:
            self.file_size = self.path.stat().st_size if self.path is not None else 0
        return self.file_size

    def open(self) -> BinaryIO:
        if self.data is not None:
            return io.BytesIO(self.data)
        if self.path is None:
            return io.BytesIO(b"")
        return self.path.open("rb")

    def head(self, n: int) -> bytes:
        if self.data is not None:
            return self.data[:n]
        if n <= len(self.file_head):
            return self.file_head[:n]
        with self.open() as fh:
            return fh.read(n)


@dataclass
class Scan:
    """One file's scan in progress: its findings, formats seen and byte budget."""

    limits: ScanLimits
    allow: Any  # bastion.scan.allowlist.Allowlist
    dispatch: Callable[[Scan, Member, int], None]
    findings: list[ScanFinding] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    members: int = 0
    inflated: int = 0  # bytes read out of containers so far

    def note(self, fmt: str) -> None:
        if fmt not in self.formats:
            self.formats.append(fmt)

    def add(
        self,
        rule: str,
        severity: Severity | str,
        location: str,
        fmt: str,
        message: str,
        *,
        why: str = "",
        offset: int | None = None,
        symbol: str | None = None,
    ) -> None:
        self.findings.append(
            ScanFinding(
                rule=rule,
                severity=Severity(severity),
                location=location,
                format=fmt,
                message=" ".join(message.split()),
                why=why,
                offset=offset,
                symbol=symbol,
            )
        )

    def remaining(self) -> int:
        """Bytes one more member may inflate to."""
        return max(
            0, min(self.limits.max_member_bytes, self.limits.max_total_bytes - self.inflated)
        )

    def bomb(self, location: str, fmt: str, message: str) -> None:
        self.add(
            "archive.bomb",
            Severity.high,
            location,
            fmt,
            message,
            why="a decompression bomb exhausts memory or disk of whatever extracts it; the "
            "rest of the member was not analysed",
        )

    def read_capped(
        self, stream: BinaryIO, *, location: str, fmt: str, compressed: int | None = None
    ) -> bytes | None:
        """Read ``stream`` in chunks under the byte budget; ``None`` (and an
        ``archive.bomb`` finding) when it inflates past a limit."""
        cap = self.remaining()
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = stream.read(CHUNK)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            problem = self.inflation_problem(total, compressed, cap)
            if problem:
                self.inflated += total
                self.bomb(location, fmt, problem)
                return None
        self.inflated += total
        return b"".join(chunks)

    def inflation_problem(self, produced: int, compressed: int | None, cap: int) -> str | None:
        """Why ``produced`` bytes out of ``compressed`` are too many, or None."""
        lim = self.limits
        if produced > cap:
            return f"inflates past {cap} bytes (max_member_bytes / max_total_bytes)"
        if (
            compressed is not None
            and produced > lim.bomb_floor
            and produced > lim.max_ratio * max(compressed, 1)
        ):
            return (
                f"inflates more than {lim.max_ratio:g}x ({produced} bytes out of "
                f"{compressed} so far)"
            )
        return None
