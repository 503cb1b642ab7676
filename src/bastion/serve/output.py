"""The gateway's output policy: what a prediction answer may reveal.

Full probability vectors make score-based evasion (Square) and model extraction cheap; a
deployment can return less (``output.mode`` in serve.yaml, ``bastion serve --output``):

- ``scores`` (default): every class probability, optionally rounded to ``round`` decimals;
- ``top-k``: only the ``k`` most likely classes with their probabilities (rounded likewise);
- ``labels``: the predicted labels only.

The policy applies to every answer a client receives: ``POST /v1/predict`` and the approved
answer of a held request (reviewers still see the full record). The audit log keeps the
predictions whatever the policy.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

OutputMode = Literal["scores", "top-k", "labels"]


class OutputPolicy(BaseModel):
    """``mode`` scores | top-k | labels; ``k`` for top-k; ``round`` decimals for scores."""

    model_config = ConfigDict(extra="forbid")

    mode: OutputMode = "scores"
    k: int = Field(1, ge=1, description="classes returned by top-k")
    round: int | None = Field(None, ge=0, le=12, description="decimals kept in scores")

    def describe(self) -> str:
        if self.mode == "labels":
            return "labels only"
        what = "all class scores" if self.mode == "scores" else f"top-{self.k} scores"
        return what + (f", rounded to {self.round} decimals" if self.round is not None else "")


class LabelScore(BaseModel):
    label: int
    score: float


class PolicedOutput(BaseModel):
    """What the policy lets out of one batch's probabilities."""

    probabilities: list[list[float]] | None = None
    top_k: list[list[LabelScore]] | None = None


def police(probabilities: torch.Tensor, policy: OutputPolicy) -> PolicedOutput:
    """Apply ``policy`` to a batch's probabilities (N, K)."""
    if policy.mode == "labels":
        return PolicedOutput()
    p = probabilities.float()
    if policy.round is not None:
        p = torch.round(p * 10**policy.round) / 10**policy.round
    if policy.mode == "scores":
        return PolicedOutput(probabilities=p.tolist())
    k = min(policy.k, p.shape[1])
    values, labels = p.topk(k, dim=1)
    top = [
        [LabelScore(label=int(c), score=float(v)) for c, v in zip(cs, vs, strict=True)]
        for cs, vs in zip(labels.tolist(), values.tolist(), strict=True)
    ]
    return PolicedOutput(top_k=top)
