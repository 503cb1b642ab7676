"""Typed results of ``bastion scan``: one :class:`ScanFinding` per problem, one
:class:`FileResult` per file given (its members included), one :class:`ScanReport` per run.

Severities are ordered ``low < medium < high < critical``: ``critical`` is a construct that
executes code when the file is loaded by its usual loader (a global outside the allowlist
reached by REDUCE/INST/OBJ/NEWOBJ/BUILD, a Keras Lambda layer, a GGUF template that escapes
the sandboxed subset); ``high`` a global outside the allowlist that is only referenced, or
content that cannot be analysed (unknown pickle opcode, archive too deep); ``medium`` a
format anomaly that loaders may interpret differently (safetensors offsets, ONNX external
data outside the model folder); ``low`` information (custom ONNX operator domain).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Severity(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Severity.low: 0, Severity.medium: 1, Severity.high: 2, Severity.critical: 3}


class ScanFinding(BaseModel):
    """One problem in one file (or one member of an archive).

    ``location`` names the member inside containers, outermost first, joined by ``!``
    (``model.zip!archive/data.pkl``); ``offset`` is the byte offset of the opcode or record
    inside that member when there is one.
    """

    model_config = ConfigDict(frozen=True)

    rule: str = Field(description="stable rule id, e.g. 'pickle.global', 'safetensors.header'")
    severity: Severity
    location: str = Field(description="file, then archive members joined by '!'")
    format: str = Field(description="the format analysed: pickle, torch-zip, safetensors, ...")
    message: str = Field(description="what was found, one line")
    why: str = Field("", description="why it matters: what a loader would do")
    offset: int | None = Field(None, description="byte offset inside the member")
    symbol: str | None = Field(None, description="the global, operator or layer concerned")


class FileResult(BaseModel):
    """The verdict on one path given on the command line."""

    path: str
    formats: list[str] = Field(default_factory=list, description="formats recognised inside")
    members: int = Field(0, description="members analysed (1 for a plain file)")
    bytes: int = 0
    findings: list[ScanFinding] = Field(default_factory=list)
    error: str | None = Field(None, description="set when the file could not be analysed")

    @property
    def worst(self) -> Severity | None:
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=lambda s: s.rank)


class ScanReport(BaseModel):
    """All files of one ``bastion scan`` run."""

    tool: Literal["bastion-scan"] = "bastion-scan"
    profiles: list[str] = Field(default_factory=list, description="allowlist profiles enabled")
    files: list[FileResult] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def findings(self) -> list[ScanFinding]:
        return [f for r in self.files for f in r.findings]

    def at_least(self, severity: Severity) -> list[ScanFinding]:
        return [f for f in self.findings if f.severity.rank >= severity.rank]
