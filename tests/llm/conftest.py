from __future__ import annotations

from pathlib import Path

import pytest

APP_YAML = """\
name: shop-assistant
system_prompt: |
  You are the assistant of an online shop. Answer questions about orders politely.
tools:
  - name: lookup_order
    description: Look up an order by id.
    parameters:
      type: object
      properties:
        order_id: {type: string}
  - name: delete_account
    description: Delete the customer's account.
    forbidden: true
retrieval:
  documents:
    - id: faq
      text: Orders ship within two days. Returns are free for 30 days.
limits:
  max_output_tokens: 500
seed: 7
attempts: 1
"""


@pytest.fixture
def app_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "app.yaml"
    path.write_text(APP_YAML)
    return path
