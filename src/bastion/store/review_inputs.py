"""The inputs of held requests, kept so that a reviewer sees what is being reviewed.

One row per ticket: the batch as little-endian float32 (base64) and its shape. Written when
a request is held, beside the ticket (:mod:`bastion.store.reviews`); a rejection keeps it
(the reviewer's decision stays explainable), and nothing else reads it.
"""

from __future__ import annotations

import base64
import json

import numpy as np
from sqlalchemy import Engine, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from bastion.store.db import Base, session_factory


class ReviewInput(Base):
    __tablename__ = "review_inputs"

    ticket_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    shape_json: Mapped[str] = mapped_column(String(256))
    data_b64: Mapped[str] = mapped_column(Text)


def save_inputs(engine: Engine, ticket_id: str, x: np.ndarray) -> None:
    """Keep the batch ``x`` (any shape, stored as float32) of ticket ``ticket_id``."""
    arr = np.ascontiguousarray(x, dtype="<f4")
    row = ReviewInput(
        ticket_id=ticket_id,
        shape_json=json.dumps([int(s) for s in arr.shape]),
        data_b64=base64.b64encode(arr.tobytes()).decode("ascii"),
    )
    with session_factory(engine)() as s, s.begin():
        s.merge(row)


def get_inputs(engine: Engine, ticket_id: str) -> np.ndarray | None:
    """The batch of ticket ``ticket_id`` (float32), or None when none was kept."""
    with session_factory(engine)() as s:
        row = s.get(ReviewInput, ticket_id)
        if row is None:
            return None
        shape = tuple(json.loads(row.shape_json))
        data = np.frombuffer(base64.b64decode(row.data_b64), dtype="<f4")
        return data.reshape(shape).copy()
