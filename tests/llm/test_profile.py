from __future__ import annotations

import pytest

from bastion.errors import ConfigError
from bastion.llm.profile import load_app_profile


def test_load(app_yaml) -> None:
    p = load_app_profile(app_yaml)
    assert p.forbidden_tools == ["delete_account"]
    assert p.canary_token.startswith("BSTN-") and p.canary_token in p.planted_system_prompt()
    assert len(p.records) == 3 and all(r in p.planted_system_prompt() for r in p.records)
    assert len(p.record_values) == 6  # an e-mail and a card number each
    assert len(p.sha256) == 64
    assert p.tools[0].openai()["function"]["name"] == "lookup_order"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("tools: []\n", "system_prompt: Field required"),
        ("system_prompt: x\ntools: [{name: 'a b'}]\n", "tools.0.name"),
        ("system_prompt: x\ntools: [{name: a}, {name: a}]\n", "given twice: a"),
        ("system_prompt: x\nretrieval: {template: 'no placeholders'}\n", "{documents}"),
        ("system_prompt: x\nnosuch: 1\n", "nosuch: unknown key"),
        ("system_prompt: x\ntools: [{name: a, parameters: {type: string}}]\n", "type object"),
        ("system_prompt: [unclosed\n", "malformed YAML"),
        ("- a list\n", "must be a mapping"),
    ],
)
def test_bad_profiles(tmp_path, text: str, want: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_app_profile(path)
    assert want in str(exc.value)
    assert "\n" not in str(exc.value)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_app_profile(tmp_path / "nope.yaml")
